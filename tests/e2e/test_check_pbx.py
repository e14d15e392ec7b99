"""`callmfa check` against the real Asterisk: a missing module, a missing endpoint and a
world-readable AMI secret are each caught, with the right fix (issue 19). Missing prompts:
tests/e2e/test_stock_install.py (the sandbox's sounds are shared by every checkout)."""

from __future__ import annotations

import os
from pathlib import Path

from ..conftest import Sandbox
from .test_operations import run_cli


def _config_dir(sandbox: Sandbox) -> Path:
    """The sandbox's Asterisk configuration directory, seen from this host."""
    root = sandbox.env["CALLMFA_ASTERISK_ROOT"]
    return Path(root + os.path.dirname(sandbox.env["CALLMFA_ASTERISK_CONF"]))


def _line(out: str, status: str, name: str) -> str:
    """The report's line for check ``name`` with ``status``, and its fix line if any."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:2] == [status, name]:
            fix = lines[i + 1] if i + 1 < len(lines) and "fix:" in lines[i + 1] else ""
            return f"{line}\n{fix}"
    raise AssertionError(f"no {status} {name} line in:\n{out}")


class TestCheckCatches:
    def test_a_missing_module(self, sandbox: Sandbox) -> None:
        """app_amd unloaded: FAIL, naming it and its load line; loaded again: ok."""
        sandbox.asterisk("module unload app_amd.so")
        try:
            out = run_cli(sandbox, "check")
        finally:
            sandbox.asterisk("module load app_amd.so")
        assert out.returncode == 1, out.stdout + out.stderr
        found = _line(out.stdout, "FAIL", "modules")
        assert "app_amd is not loaded: it provides AMD()" in found
        assert "fix: load it now: asterisk -rx 'module load app_amd.so'" in found
        assert "'load = app_amd.so' (autoload = no)" in found
        again = run_cli(sandbox, "check")
        assert "all 12 modules the dialplan uses are loaded" in _line(again.stdout, "ok",
                                                                        "modules")

    def test_a_missing_endpoint(self, sandbox: Sandbox) -> None:
        """A dial template through an endpoint Asterisk does not have: FAIL, naming the
        pjsip.conf section to add; the sandbox's own endpoint is there (its contact's
        reachability unknown: the test phone is not qualified)."""
        out = run_cli(sandbox, "check", CALLMFA_DIAL_TEMPLATE="PJSIP/{number}@no-such-trunk")
        assert out.returncode == 1, out.stdout + out.stderr
        found = _line(out.stdout, "FAIL", "endpoint")
        assert "Asterisk has no PJSIP endpoint 'no-such-trunk'" in found
        assert "fix: add to pjsip.conf a [no-such-trunk] section with type = endpoint" in found
        ours = _line(run_cli(sandbox, "check").stdout, "warn", "endpoint")
        assert "PJSIP endpoint 'callmfa-phone', contact sip:127.0.0.1:5070: unknown " \
               "(qualify is off)" in ours
        assert "qualify_frequency = 60' to the [callmfa-phone] section" in ours

    def test_a_world_readable_ami_secret(self, sandbox: Sandbox) -> None:
        """manager_callmfa.conf chmod 0644: FAIL with the chmod; 0640 again: ok."""
        conf = _config_dir(sandbox) / "manager_callmfa.conf"
        directory = str(conf.parent)
        assert conf.stat().st_mode & 0o777 == 0o640
        os.chmod(conf, 0o644)
        try:
            out = run_cli(sandbox, "check", CALLMFA_ASTERISK_CONFIG_DIR=directory)
        finally:
            os.chmod(conf, 0o640)
        assert out.returncode == 1, out.stdout + out.stderr
        found = _line(out.stdout, "FAIL", "ami-secret")
        assert f"{conf} is mode 0644: everyone on this host can read the AMI secret" in found
        assert f"fix: chown root:asterisk {conf} && chmod 0640 {conf}" in found
        again = run_cli(sandbox, "check", CALLMFA_ASTERISK_CONFIG_DIR=directory)
        assert "mode 0640, no rights for others" in _line(again.stdout, "ok", "ami-secret")
        assert again.returncode == 0, again.stdout

    def test_an_account_without_the_eventfilter(self, sandbox: Sandbox) -> None:
        """manager_callmfa.conf's eventfilter lines removed: warn ami-events, naming kinds
        the probe's Local channels brought and the fix; put back: ok."""
        conf = _config_dir(sandbox) / "manager_callmfa.conf"
        text = conf.read_text()
        assert "eventfilter(" in text
        conf.write_text("".join(line for line in text.splitlines(keepends=True)
                                if not line.startswith("eventfilter")))
        try:
            sandbox.asterisk("manager reload")
            out = run_cli(sandbox, "check")
        finally:
            conf.write_text(text)
            sandbox.asterisk("manager reload")
        assert out.returncode == 0, out.stdout + out.stderr  # a warning, not a failure
        found = _line(out.stdout, "warn", "ami-events")
        assert "events of kinds callmfa does not use (" in found
        assert "Newchannel" in found
        assert "fix: add the eventfilter lines of dialplan/manager_callmfa.conf" in found
        again = run_cli(sandbox, "check")
        assert "is sent only the kinds of events callmfa reads" in _line(again.stdout, "ok",
                                                                        "ami-events")
