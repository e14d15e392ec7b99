"""`callmfa health` and SIGHUP on the real sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome

from ..conftest import REPO, Sandbox, wait_until
from .conftest import PhoneFactory, restart_serve, serve_pid

CALLMFA = str(REPO / ".venv" / "bin" / "callmfa")


class TestHealth:
    def test_health_command_reports_every_part(self, sandbox: Sandbox) -> None:
        """`callmfa health` prints serve's /healthz JSON and exits 0 while all is up."""
        out = subprocess.run([CALLMFA, "health"], env={**os.environ, **sandbox.env},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(out.stdout)
        assert status["ok"] is True
        assert status["redis"] is True
        assert status["asterisk"] == {
            "127.0.0.1:5038": {"logged_in": True, "in_flight": 0, "reconnects": 0}}
        assert status["fastagi"]["listening"] is True

    def test_health_command_fails_when_nothing_answers(self, sandbox: Sandbox) -> None:
        """With no service on the health port: exit 1 and a clear message."""
        env = {**os.environ, **sandbox.env, "CALLMFA_HEALTH_PORT": "4599"}
        out = subprocess.run([CALLMFA, "health"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 1
        assert "no callmfa serve answers on 127.0.0.1:4599" in out.stderr


class TestReload:
    async def test_sighup_applies_run_time_settings_and_flags_the_rest(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        tmp_path: Path
    ) -> None:
        """SIGHUP re-reads CALLMFA_CONFIG_FILE: the caller ID changes on the next call; a
        change of a setting that needs a restart is reported and not applied."""
        config = tmp_path / "callmfa.conf"
        config.write_text('CALLMFA_CALLER_ID="Before" <+15550001>\n')
        restart_serve(sandbox, CALLMFA_CONFIG_FILE=str(config))
        try:
            config.write_text('# reloaded\nCALLMFA_CALLER_ID="Reloaded" <+15550002>\n'
                              "CALLMFA_AGI_MAX_SESSIONS=7\n")
            os.kill(serve_pid(sandbox), signal.SIGHUP)
            log = sandbox.directory / "logs" / "callmfa.log"
            wait_until(lambda: '"settings_reloaded"' in log.read_text(), 10, "the reload")
            reloaded = [json.loads(line) for line in log.read_text().splitlines()
                        if '"settings_reloaded"' in line or '"reload_needs_restart"' in line]
            assert reloaded[0]["event"] == "reload_needs_restart"
            assert reloaded[0]["settings"] == ["agi_max_sessions"]
            assert reloaded[-1]["changed"] == ["caller_id"]

            p = phone(keys="#")
            record = await client.verify(user="reload", phone="+12015550100", timeout_s=40)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            assert p.wait(20) == 0, p.errors()
            invite = (p.workdir / "messages.log").read_text()
            assert '"Reloaded" <sip:+15550002@' in invite
        finally:
            restart_serve(sandbox)

    async def test_sighup_changes_the_log_level_of_a_running_serve(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        tmp_path: Path
    ) -> None:
        """CALLMFA_LOG_LEVEL=debug by SIGHUP: the next call's debug line (originate_sent)
        is written, though its logger was cached at info."""
        config = tmp_path / "callmfa.conf"
        config.write_text("CALLMFA_LOG_LEVEL=info\n")
        restart_serve(sandbox, CALLMFA_CONFIG_FILE=str(config), CALLMFA_LOG_LEVEL="")
        log = sandbox.directory / "logs" / "callmfa.log"
        try:
            p = phone(keys="#", calls=2)
            start = len(log.read_text())
            first = await client.verify(user="level-1", phone="+12015550100", timeout_s=40)
            assert first is not None
            assert first.outcome is Outcome.APPROVED
            assert '"originate_sent"' not in log.read_text()[start:]
            config.write_text("CALLMFA_LOG_LEVEL=debug\n")
            os.kill(serve_pid(sandbox), signal.SIGHUP)
            wait_until(lambda: '"log_level"' in log.read_text()[start:], 10, "the reload")
            second = await client.verify(user="level-2", phone="+12015550100", timeout_s=40)
            assert second is not None
            assert second.outcome is Outcome.APPROVED
            assert '"originate_sent"' in log.read_text()[start:]
            assert p.wait(20) == 0, p.errors()
        finally:
            restart_serve(sandbox)
