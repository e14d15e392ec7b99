"""The images `make images` builds, checked from their own root filesystems.

Containers cannot start on these machines (crun cannot set RLIMIT_NOFILE), so each image's
root is mounted (`podman create` + `podman mount`: a writable layer over the image) and its
programs run there with chroot, inside the sandbox's namespace: the service image's
`callmfa serve` approves real calls, through the dialplan its own `callmfa install-dialplan`
put into the sandbox's Asterisk (production: an existing PBX), and through the Asterisk
image's own Asterisk and configuration (the all-in-one demo).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, Sandbox, _setns, alive, wait_until
from .conftest import PhoneFactory, serve_pid

DOCKER = REPO / "docker"
IMAGES = DOCKER / "images.sh"
SERVICE_IMAGE = "localhost/callmfa:latest"
ASTERISK_IMAGE = "localhost/callmfa-asterisk:latest"
IMAGE_USER = "10001:10001"  # the service image's USER
IMAGE_PATH = "/opt/callmfa/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # chroot is in /usr/sbin


def compose_environment(compose: str, service: str, given: dict[str, str]) -> dict[str, str]:
    """A compose file's environment for a service, as compose resolves it: ``${X:-default}``
    is ``given[X]`` or the default, ``${X:?message}`` is ``given[X]``."""
    text = (DOCKER / compose).read_text()
    block = text.split(f"\n  {service}:\n", 1)[1].split("\n\n")[0]
    block = block.split("    environment:\n", 1)[1]
    env = {}
    for name, raw in re.findall(r"^      (CALLMFA_\w+): (.*)$", block, re.M):
        value = raw.split(" #", 1)[0].strip()  # YAML: a comment after the value
        m = re.fullmatch(r"\$\{(\w+):([-?])(.*)\}", value)
        if m is None:
            env[name] = value
        elif m.group(2) == "-":
            env[name] = given.get(m.group(1), m.group(3))
        else:
            env[name] = given[m.group(1)]
    return env


def _host(sandbox: Sandbox, *args: str, timeout: float = 120) -> str:
    """Run a command in the namespace the tests started in (podman, the build's network)."""
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                         preexec_fn=lambda: _setns(sandbox.host_netns_fd))
    assert out.returncode == 0, f"{args[:3]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def built(sandbox: Sandbox) -> None:
    """Both images, as `make images` builds them (cached: seconds when nothing changed)."""
    _host(sandbox, "bash", str(IMAGES), timeout=1500)


@contextmanager
def _mounted(sandbox: Sandbox, image: str, name: str) -> Iterator[Path]:
    _host(sandbox, "podman", "rm", "-f", "--ignore", name)
    _host(sandbox, "podman", "create", "--name", name, image)
    try:
        yield Path(_host(sandbox, "podman", "mount", name).strip())
    finally:
        _host(sandbox, "podman", "rm", "-f", name)


@pytest.fixture(scope="module")
def service_root(sandbox: Sandbox, built: None) -> Iterator[Path]:
    """The service image's root filesystem, with compose's secrets in /run/secrets."""
    with _mounted(sandbox, SERVICE_IMAGE, f"callmfa-e2e-{sandbox.netns}") as root:
        _secrets(sandbox, root, owner=10001)
        yield root


@pytest.fixture(scope="module")
def asterisk_root(sandbox: Sandbox, built: None) -> Iterator[Path]:
    """The Asterisk image's root filesystem, with its AMI secret in /run/secrets."""
    with _mounted(sandbox, ASTERISK_IMAGE, f"callmfa-asterisk-e2e-{sandbox.netns}") as root:
        _secrets(sandbox, root, owner=0)
        yield root


def _secrets(sandbox: Sandbox, root: Path, owner: int) -> None:
    directory = root / "run" / "secrets"
    directory.mkdir(parents=True, exist_ok=True)
    pepper = Path(sandbox.env["CALLMFA_PIN_PEPPER_FILE"]).read_text().strip()
    for name, value in (("ami_secret", sandbox.ami_secret),
                        ("signing_key", sandbox.env["CALLMFA_SIGNING_KEY"]),
                        ("pin_pepper", pepper)):
        path = directory / name
        path.write_text(value + "\n")
        os.chown(path, owner, owner)
        path.chmod(0o400)


def _in_image(root: Path, *args: str, user: str = IMAGE_USER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", f"--userspec={user}", str(root), *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": IMAGE_PATH})


class ImageServe:
    """The service image's `callmfa serve`, run from its root in place of the sandbox's."""

    def __init__(self, sandbox: Sandbox, root: Path, log: Path, compose: str) -> None:
        self.log = log
        pid = serve_pid(sandbox)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), 30, "the sandbox's serve to stop")
        # The compose file's settings for callmfa (the suite's timeouts and throttles over
        # the defaults, as for the sandbox's serve); the sandbox's phone is the trunk.
        given = {"CALLMFA_DIAL_TEMPLATE": sandbox.env["CALLMFA_DIAL_TEMPLATE"]}
        env = {"PATH": IMAGE_PATH, **E2E_SETTINGS,
               **compose_environment(compose, "callmfa", given)}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["chroot", f"--userspec={IMAGE_USER}", str(root), "/opt/callmfa/bin/callmfa",
                 "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: '"service_ready"' in log.read_text() or self.proc.poll() is not None,
                   30, "the image's callmfa serve")
        assert self.proc.poll() is None, log.read_text()[-3000:]
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        assert re.search(r"^Uid:\t10001\t", status, re.M), "serve runs as the image's user"

    def stop(self) -> None:
        """Stop it (SIGTERM: chroot exec'd callmfa, so this is its pid)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _sandbox_up(sandbox: Sandbox) -> None:
    """Bring the sandbox back as it was: `up` restarts what is not running."""
    full = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": sandbox.netns,
            "CALLMFA_SANDBOX_DIR": str(sandbox.directory)}
    subprocess.run(["bash", str(SANDBOX), "up"], env=full, check=True, capture_output=True,
                   cwd=REPO, timeout=120)


class ImageAsterisk:
    """The Asterisk image's entrypoint, run from its root in place of the sandbox's Asterisk
    (the same ports: instance 1)."""

    def __init__(self, sandbox: Sandbox, root: Path, log: Path) -> None:
        self.root = root
        env = {"PATH": IMAGE_PATH, **compose_environment("compose.demo.yaml", "asterisk", {})}
        assert env["CALLMFA_PHONE"] == sandbox.env["CALLMFA_PHONE"]
        self.conf = f"/etc/asterisk-{env['CALLMFA_NETNS']}/asterisk.conf"
        pid = int((sandbox.directory / "pids" / "asterisk.pid").read_text().split()[0])
        sandbox.asterisk("core stop now")
        wait_until(lambda: not alive(pid), 30, "the sandbox's Asterisk to stop")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["chroot", str(root), "/usr/local/bin/callmfa-asterisk"], env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self.proc.poll() is not None or self.cli("core waitfullybooted"),
                   60, "the image's Asterisk")
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def cli(self, command: str) -> bool:
        """Run an Asterisk CLI command on it (the image's HEALTHCHECK for waitfullybooted)."""
        return subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self.conf, "-rx", command],
            capture_output=True, timeout=30, env={"PATH": IMAGE_PATH}).returncode == 0

    def stop(self) -> None:
        """Stop it as the sandbox does (`core stop now`), then make sure."""
        if self.proc.poll() is None:
            self.cli("core stop now")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _approved_by(serve: ImageServe, client: VerificationClient, phone: PhoneFactory,
                       number: str) -> None:
    p = phone(keys="#")
    rid = await client.submit(user="image-user", phone=number)
    record = await client.wait(rid, 40)
    assert record is not None, serve.log.read_text()[-3000:]
    assert (record.outcome, record.detail) == (Outcome.APPROVED, None)
    assert p.wait(20) == 0, p.errors()
    assert rid in serve.log.read_text()  # the image's serve took it: the sandbox's is stopped


class TestServiceImage:
    def test_version(self, service_root: Path) -> None:
        """The image's callmfa, as its unprivileged user, is this checkout's version."""
        out = _in_image(service_root, "callmfa", "--version")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"callmfa {version('callmfa')}"

    def test_the_fast_packages_are_installed(self, service_root: Path) -> None:
        """uvloop, hiredis and orjson, which serve uses by default (issue 16)."""
        out = _in_image(service_root, "/opt/callmfa/bin/python", "-c",
                        "import hiredis, orjson, uvloop, redis.utils; "
                        "print(redis.utils.HIREDIS_AVAILABLE)")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "True"

    def test_settings(self, service_root: Path) -> None:
        """`callmfa settings` lists every setting, the signing key among them."""
        out = _in_image(service_root, "callmfa", "settings")
        assert out.returncode == 0, out.stderr
        names = {line.split("\t")[0] for line in out.stdout.splitlines()}
        assert {"CALLMFA_REDIS_URL", "CALLMFA_SIGNING_KEY", "CALLMFA_AMI_SECRET"} <= names

    async def test_serve_approves_a_call_next_to_an_existing_pbx(
        self, sandbox: Sandbox, service_root: Path, client: VerificationClient,
        phone: PhoneFactory, tmp_path: Path,
    ) -> None:
        """Production (docker/compose.yaml): the PBX gets its dialplan from the image's
        `callmfa install-dialplan`; the image's `callmfa serve` approves a real call."""
        pbx = service_root / "pbx-etc"  # stands for the PBX's /etc/asterisk
        pbx.mkdir(exist_ok=True)
        os.chown(pbx, 10001, 10001)
        installed = _in_image(service_root, "callmfa", "install-dialplan", "--force", "/pbx-etc")
        assert installed.returncode == 0, installed.stderr
        target = (Path(sandbox.env["CALLMFA_ASTERISK_ROOT"]) / "etc" / f"asterisk-{sandbox.netns}"
                  / "extensions_callmfa.conf")
        original = target.read_bytes()
        target.write_bytes((pbx / "extensions_callmfa.conf").read_bytes())
        # Redis with docker/redis/callmfa.acl's service user, as compose.yaml's Redis has it;
        # callmfa's URL (with its password) in the callmfa_env secret.
        password = secrets.token_urlsafe(18)
        rule = next(line for line in (DOCKER / "redis" / "callmfa.acl").read_text().splitlines()
                    if line.startswith("user callmfa-service "))
        words = rule.replace(">CHANGE-ME-service", f">{password}").split()[1:]
        config = service_root / "run" / "secrets" / "callmfa_env"
        config.write_text(f"CALLMFA_REDIS_URL=redis://callmfa-service:{password}@127.0.0.1:6379/0\n")
        os.chown(config, 10001, 10001)
        redis = Redis.from_url(sandbox.redis_url)
        serve = None
        try:
            await redis.execute_command("ACL", "SETUSER", *words)
            sandbox.asterisk("dialplan reload")
            serve = ImageServe(sandbox, service_root, tmp_path / "serve.log", "compose.yaml")
            await _approved_by(serve, client, phone, "+12015550180")
            users = {c["user"] for c in await redis.client_list()}
            assert "callmfa-service" in users, users  # serve logged in as the ACL's user
        finally:
            target.write_bytes(original)
            sandbox.asterisk("dialplan reload")
            if serve is not None:
                serve.stop()
            await redis.execute_command("ACL", "DELUSER", "callmfa-service")
            await redis.aclose()
            _sandbox_up(sandbox)


class TestAsteriskImage:
    def test_asterisk_22_with_the_payload(self, asterisk_root: Path) -> None:
        """Asterisk 22, the classic script's pyst2 and the prompts in every language."""
        out = _in_image(asterisk_root, "/usr/sbin/asterisk", "-V", user="0:0")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("Asterisk 22."), out.stdout
        prompts = asterisk_root / "opt" / "callmfa" / "build" / "prompts"
        assert {d.name for d in prompts.iterdir()} >= {"en", "de", "es", "fr"}
        assert (asterisk_root / "opt" / "callmfa" / "site" / "asterisk" / "agi.py").is_file()

    def test_no_sandbox_state_or_secrets(self, sandbox: Sandbox, built: None) -> None:
        """The base is the sandboxes' shared Asterisk root, where each sandbox writes its AMI
        secret and signing key: none of that reaches the image."""
        root = Path(_host(sandbox, "podman", "image", "mount", ASTERISK_IMAGE).strip())
        try:
            leftovers = [str(p.relative_to(root)) for pattern in (
                "etc/asterisk-*", "var/lib/asterisk-*", "var/log/asterisk-*",
                "var/spool/asterisk-*", "run/asterisk-*") for p in root.glob(pattern)]
            assert leftovers == []
            key = sandbox.env["CALLMFA_SIGNING_KEY"].encode()
            assert not [p for p in (root / "etc").rglob("*")
                        if p.is_file() and not p.is_symlink() and key in p.read_bytes()]
        finally:
            _host(sandbox, "podman", "image", "umount", ASTERISK_IMAGE)

    async def test_both_images_approve_a_call(
        self, sandbox: Sandbox, service_root: Path, asterisk_root: Path,
        client: VerificationClient, phone: PhoneFactory, tmp_path: Path,
    ) -> None:
        """The all-in-one demo (docker/compose.demo.yaml): the Asterisk image's entrypoint
        configures and starts its Asterisk with its installed dialplan; the service image's
        serve approves a real call through it."""
        asterisk = serve = None
        try:
            asterisk = ImageAsterisk(sandbox, asterisk_root, tmp_path / "asterisk.log")
            assert asterisk.cli("dialplan show callmfa-verify")
            serve = ImageServe(sandbox, service_root, tmp_path / "serve.log",
                               "compose.demo.yaml")
            await _approved_by(serve, client, phone, "+12015550181")
        finally:
            if serve is not None:
                serve.stop()
            if asterisk is not None:
                asterisk.stop()
            _sandbox_up(sandbox)
