"""A fresh install on a stock Debian Asterisk, by the docs (issue 19).

On a copy of the Debian ``asterisk-config`` package's /etc/asterisk (not the sandbox's
files), in a network namespace of its own: callmfa is installed as docs/quickstart.md
(section 4) says, the shell blocks of docs/asterisk.md's "Step by step, on a stock Debian
Asterisk" run as written, and a sipp phone, the trunk, approves a verification. Then
`callmfa check` catches the prompts going missing, and its fix, run as printed, mends it.

What the test changes in the docs' commands is only where things are on this machine: the
copy's directories for /etc/asterisk, /etc/callmfa, /opt/callmfa and the sounds, the phone
for the ITSP's address, and `asterisk` runs in the Asterisk root. And one setting: the
phone answers no OPTIONS, so the trunk's qualify is off (the check then warns "unknown").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ivr.settings import default_config_file
from ivr.testing import PhoneBehaviour, SippPhone

from ..conftest import REPO, Sandbox, _setns, wait_until

# sandbox.sh's Debian sid root (its default), which `make deps` builds
ROOT = Path(os.environ.get("CALLMFA_ASTERISK_ROOT",
                           "/var/tmp/callmfa/asterisk-root"))  # noqa: S108
KEY = "stock-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324
NETNS = "cms-" + KEY[len("stock-"):]
PHONE = "127.0.0.1:5070"
NUMBER = "+12015550123"
STEPS_HEADING = "## Step by step, on a stock Debian Asterisk"


def doc_steps() -> list[str]:
    """The ```sh blocks of docs/asterisk.md's step-by-step section, in order."""
    text = (REPO / "docs" / "asterisk.md").read_text()
    section = text[text.index(STEPS_HEADING):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)


def venv_step() -> str:
    """docs/quickstart.md's command that installs callmfa into a venv."""
    text = (REPO / "docs" / "quickstart.md").read_text()
    m = re.search(r"`(python3 -m venv /opt/callmfa && [^`]+)`", text)
    assert m is not None, "docs/quickstart.md lost its install command"
    return m.group(1)


@dataclass(frozen=True)
class Install:
    """Where this test's stock Asterisk and callmfa are."""

    tmp: Path

    @property
    def etc(self) -> Path:  # /etc/asterisk, seen from the host
        return ROOT / "etc" / f"asterisk-{KEY}"

    @property
    def sounds(self) -> Path:  # /usr/share/asterisk/sounds, seen from the host
        return ROOT / "var" / "lib" / f"asterisk-{KEY}" / "data" / "sounds"

    @property
    def conf(self) -> str:  # asterisk.conf, inside the root
        return f"/etc/asterisk-{KEY}/asterisk.conf"

    def rewrite(self, commands: str) -> str:
        """A doc's commands, for this machine's paths and phone."""
        for old, new in (
            ("/usr/share/asterisk/sounds", str(self.sounds)),
            ("/etc/callmfa", str(self.tmp / "callmfa")),
            ("/opt/callmfa", str(self.tmp / "venv")),
            ("192.0.2.10:5060", PHONE),
            ("192.0.2.10", PHONE.partition(":")[0]),
            ("qualify_frequency = 60", "qualify_frequency = 0"),
            ("+12015550123", NUMBER),
        ):
            commands = commands.replace(old, new)
        return re.sub(r"/etc/asterisk\b(?!-)", str(self.etc), commands)

    def env(self) -> dict[str, str]:
        """The environment of the docs' commands: callmfa on PATH, the service's file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMFA_")}
        env["PATH"] = f"{self.tmp / 'venv' / 'bin'}:{env['PATH']}"
        # (On the Asterisk host both are the defaults: /etc/callmfa/callmfa.conf once it
        # exists, and /etc/asterisk.)
        default_config_file(env, self.tmp / "callmfa" / "callmfa.conf")
        env["CALLMFA_ASTERISK_CONFIG_DIR"] = str(self.etc)
        return env

    def run(self, commands: str, timeout_s: float = 120,
            netns_fd: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run a doc's shell block (``set -e``); ``asterisk`` is the root's, on this copy.
        With ``netns_fd``, in that network namespace (pip needs the host's)."""
        script = (f"set -euo pipefail\nasterisk() {{ chroot {ROOT} /usr/sbin/asterisk "
                  f"-C {self.conf} \"$@\"; }}\n" + self.rewrite(commands))
        return subprocess.run(["bash", "-c", script], env=self.env(), capture_output=True,
                              text=True, timeout=timeout_s, cwd=REPO,
                              preexec_fn=None if netns_fd is None else lambda: _setns(netns_fd))

    def asterisk(self, command: str) -> str:
        out = subprocess.run(["chroot", str(ROOT), "/usr/sbin/asterisk", "-C", self.conf,
                              "-rx", command], capture_output=True, text=True, timeout=30)
        return out.stdout


def _stock_copy(install: Install) -> None:
    """A copy of the package's /etc/asterisk, its directories private to this test."""
    changed = subprocess.run(["chroot", str(ROOT), "dpkg", "--verify", "asterisk-config"],
                             capture_output=True, text=True, timeout=60).stdout
    assert changed == "", f"the root's stock configuration was changed:\n{changed}"
    shutil.rmtree(install.etc, ignore_errors=True)
    # (cp -a: the files keep their owner, the root's asterisk user, and their mode.)
    subprocess.run(["cp", "-a", str(ROOT / "etc" / "asterisk"), str(install.etc)], check=True,
                   timeout=60)
    conf = install.etc / "asterisk.conf"
    text = conf.read_text().replace("[directories](!)", "[directories]")
    private = {"astetcdir": f"/etc/asterisk-{KEY}", "astvarlibdir": f"/var/lib/asterisk-{KEY}",
               "astdbdir": f"/var/lib/asterisk-{KEY}", "astkeydir": f"/var/lib/asterisk-{KEY}",
               "astdatadir": f"/var/lib/asterisk-{KEY}/data",
               "astspooldir": f"/var/spool/asterisk-{KEY}", "astrundir": f"/run/asterisk-{KEY}",
               "astlogdir": f"/var/log/asterisk-{KEY}", "astcachedir": f"/var/cache/asterisk-{KEY}"}
    for name, value in private.items():
        text = re.sub(rf"^{name} => .*$", f"{name} => {value}", text, flags=re.M)
    conf.write_text(text)
    dirs = [v for k, v in private.items() if k not in ("astetcdir", "astdatadir")]
    # ($ROOT/run is a symlink to the host's /run: make them inside the root.)
    subprocess.run(["chroot", str(ROOT), "sh", "-c",
                    f"rm -rf {' '.join(dirs)} && mkdir -p {' '.join(dirs)} && "
                    f"chown -R asterisk:asterisk {' '.join(dirs)}"], check=True, timeout=30)
    # The data directory: the package's, but no sounds at all (callmfa needs only its own).
    data = install.sounds.parent
    data.mkdir(parents=True)
    for entry in (ROOT / "usr" / "share" / "asterisk").iterdir():
        if entry.name != "sounds":
            (data / entry.name).symlink_to(f"/usr/share/asterisk/{entry.name}")
    install.sounds.mkdir()


def _teardown_dirs() -> None:
    subprocess.run(["chroot", str(ROOT), "sh", "-c",
                    f"rm -rf /etc/asterisk-{KEY} /var/lib/asterisk-{KEY} "
                    f"/var/spool/asterisk-{KEY} /run/asterisk-{KEY} /var/log/asterisk-{KEY} "
                    f"/var/cache/asterisk-{KEY}"], check=False, timeout=60)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox) -> Iterator[Install]:
    """callmfa installed by quickstart.md (a wheel into a venv, with the network), and a
    stock Asterisk with a Redis, both in a namespace of their own, which this thread joins
    (then back to the sandbox's; the sandbox itself is not used)."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespace, chroot)")
    install = Install(tmp_path_factory.mktemp("stock"))
    dist = install.tmp / "dist"
    # pip needs the package index: the namespace the tests started in, not the sandbox's,
    # which this thread joined.
    host = sandbox.host_netns_fd
    subprocess.run([str(REPO / ".venv" / "bin" / "pip"), "wheel", "-q", "--no-deps", "-w",
                    str(dist), str(REPO)], check=True, timeout=300, capture_output=True,
                   preexec_fn=lambda: _setns(host))
    wheel = next(dist.glob("callmfa-*.whl"))
    # (the host's python3 in a checkout; the docs' `python3` and `callmfa-*.whl`)
    step = venv_step().replace("python3 ", f"{sys.executable} ", 1).replace(
        "callmfa-*.whl", str(wheel))
    out = install.run(step, timeout_s=600, netns_fd=host)
    assert out.returncode == 0, out.stderr[-3000:]

    _stock_copy(install)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{NETNS}", os.O_RDONLY)
    procs: list[subprocess.Popen[bytes]] = []
    log = (install.tmp / "logs")
    log.mkdir()
    try:
        _setns(target)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
             "--appendonly", "no", "--dir", str(install.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(log / "asterisk.log", "wb") as out_file:
            procs.append(subprocess.Popen(
                ["chroot", str(ROOT), "/usr/sbin/asterisk", "-f", "-n", "-C", install.conf,
                 "-U", "asterisk", "-G", "asterisk"],
                stdout=out_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        asterisk = procs[-1]
        wait_until(lambda: asterisk.poll() is not None
                   or "fully booted" in install.asterisk("core waitfullybooted"),
                   60, "the stock Asterisk")
        assert asterisk.poll() is None, (log / "asterisk.log").read_text()[-3000:]
        yield install
    finally:
        for proc in reversed(procs):
            if proc.args[0] == "chroot":  # Asterisk
                install.asterisk("core stop now")
            _stop(proc)
        _setns(home)
        os.close(home)
        os.close(target)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        _teardown_dirs()


def _serve(install: Install) -> subprocess.Popen[bytes]:
    """`callmfa serve` from the installed venv, with the service's file."""
    log = install.tmp / "logs" / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(install.tmp / "venv" / "bin" / "callmfa"), "serve"],
                                env=install.env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    wait_until(lambda: proc.poll() is not None or '"service_ready"' in log.read_text(), 30,
               "callmfa serve")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def _line(out: str, status: str, name: str) -> str:
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == [status, name]:
            fix = lines[i + 1] if i + 1 < len(lines) and "fix:" in lines[i + 1] else ""
            return f"{line}\n{fix}"
    raise AssertionError(f"no {status} {name} line in:\n{out}")


class TestStockInstall:
    def test_the_docs_steps_get_a_verification_approved(self, stock: Install) -> None:
        """docs/asterisk.md's blocks, as written, on the stock files: `callmfa check` passes
        and `check --call` is approved by the phone; then the prompts go missing, check
        fails with `callmfa install-dialplan --prompts`, and that fix mends it."""
        *setup, checks = doc_steps()
        assert len(setup) == 4, setup
        for i, block in enumerate(setup):
            out = stock.run(block)
            assert out.returncode == 0, f"block {i + 1}:\n{block}\n{out.stdout}{out.stderr}"
            if i == 0:
                # The host has no asterisk group (it is the root's): do what install-dialplan
                # does where there is one (it said so on stderr).
                assert "there is no group 'asterisk' on this host" in out.stderr
                subprocess.run(["chroot", str(ROOT), "sh", "-c",
                                f"cd /etc/asterisk-{KEY} && chown root:asterisk "
                                "manager_callmfa.conf callmfa.env && chmod 0640 "
                                "manager_callmfa.conf callmfa.env"], check=True, timeout=30)
        assert "my-itsp" in stock.asterisk("pjsip show endpoints")
        serve = _serve(stock)
        phone = SippPhone(PhoneBehaviour(keys="#", speech="Hello."),
                          workdir=stock.tmp / "phone", address=PHONE)
        try:
            phone.start()
            out = stock.run(checks, timeout_s=180)
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"ok    call           {NUMBER}: approved" in out.stdout, out.stdout
            for name in ("ami-login", "dialplan", "fastagi", "prompts", "modules", "ami-secret"):
                _line(out.stdout, "ok", name)
            assert "unknown (qualify is off)" in _line(out.stdout, "warn", "endpoint")
            assert phone.wait(20) == 0, phone.errors()

            # The prompts go missing: check fails, and its fix, run as printed, mends it.
            for lang in stock.sounds.iterdir():
                shutil.rmtree(lang / "callmfa")
            out = stock.run("callmfa check")
            assert out.returncode == 1, out.stdout
            found = _line(out.stdout, "FAIL", "prompts")
            assert "Asterisk cannot play en: callmfa/" in found
            fix = re.search(r"(callmfa install-dialplan --prompts \S+)", found)
            assert fix is not None, found
            assert fix.group(1) == "callmfa install-dialplan --prompts " \
                                   "/usr/share/asterisk/sounds"
            assert stock.run(fix.group(1)).returncode == 0
            out = stock.run("callmfa check")
            assert out.returncode == 0, out.stdout
            _line(out.stdout, "ok", "prompts")
        finally:
            phone.stop()
            _stop(serve)
