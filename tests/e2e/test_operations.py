"""Operations on the real chain: `callmfa check`, the metrics endpoint, `callmfa report`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families

from ivr import __version__
from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome

from ..conftest import E2E_SETTINGS, REPO, Sandbox
from .conftest import PhoneFactory

CALLMFA = str(REPO / ".venv" / "bin" / "callmfa")
PHONE = "+12015550100"


def sandbox_env(sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    """What `sandbox.sh exec` gives a command: the sandbox's settings, then ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMFA_")}
    env.update(sandbox.env)
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def run_cli(sandbox: Sandbox, *args: str, exe: str = CALLMFA, unset: tuple[str, ...] = (),
            **overrides: str) -> subprocess.CompletedProcess[str]:
    env = sandbox_env(sandbox, **overrides)
    for name in unset:
        env.pop(name, None)
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)


def scrape(port: int = int(E2E_SETTINGS["CALLMFA_METRICS_PORT"])) -> dict[str, float]:
    """Every sample of the sandbox's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


class TestCheck:
    def test_all_ok_against_the_sandbox(self, sandbox: Sandbox) -> None:
        """Redis, ACL, AMI login and rights, dialplan, FastAGI, prompts, early keys and the
        Entra EAM the sandbox's serve publishes: all ok, exit 0."""
        out = run_cli(sandbox, "check")
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        for name in ("numbers", "redis", "ami-login", "ami-rights", "dialplan", "fastagi",
                     "prompts", "early-keys", "eam"):
            assert any(line.split()[:2] == ["ok", name] for line in lines), out.stdout
        # The one warning: the test phone's contact is not qualified (sipp does not answer
        # OPTIONS), so its reachability is unknown.
        warned = [line for line in lines[1:-1] if line.split()[0] in ("FAIL", "warn")]
        assert [line.split()[:2] for line in warned] == [["warn", "endpoint"]], out.stdout
        assert "modules" in out.stdout
        assert lines[-1] == "all checks passed"

    def test_number_says_what_callmfa_would_dial(self, sandbox: Sandbox) -> None:
        """`check --number`: the sandbox's own settings; exit 0 for a US number, 1 for the
        Jamaican overlay with its reason."""
        out = run_cli(sandbox, "check", "--number", "+12015550100")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "dial    yes" in out.stdout
        out = run_cli(sandbox, "check", "--number", "+16585551234")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "region  JM" in out.stdout
        assert "reason region_not_allowed" in out.stdout

    def test_wrong_ami_secret_fails_with_a_fix(self, sandbox: Sandbox) -> None:
        """A wrong secret: the login check fails, says why and what to do; exit 1."""
        out = run_cli(sandbox, "check", unset=("CALLMFA_AMI_SECRET_FILE",),
                      CALLMFA_AMI_SECRET="not-the-secret")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "FAIL  ami-login      AMI login refused for user 'callmfa': Authentication " \
               "failed" in out.stdout
        assert "fix: give callmfa the secret of the [callmfa] account in manager.conf" \
               in out.stdout
        assert out.stdout.splitlines()[-1] == "1 check(s) failed"

    def test_missing_context_and_unreachable_fastagi_are_told_apart(
        self, sandbox: Sandbox
    ) -> None:
        """No such context: dialplan fails. A wrong AGI port: dialplan ok, FastAGI fails."""
        out = run_cli(sandbox, "check", CALLMFA_CONTEXT="no-such-context")
        assert out.returncode == 1
        assert "FAIL  dialplan       Asterisk has no extension s in context [no-such-context]" \
               in out.stdout
        out = run_cli(sandbox, "check", CALLMFA_AGI_URL="agi://127.0.0.1:4999/verify")
        assert out.returncode == 1
        assert "ok    dialplan" in out.stdout
        assert "FAIL  fastagi        Asterisk ran [callmfa-verify] but did not reach " \
               "agi://127.0.0.1:4999/check" in out.stdout

    async def test_without_app_dtmfstore_calls_work_and_check_warns(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """An Asterisk without app_dtmfstore: the dialplan's TryExec lets calls go on ('#'
        during the greeting approves) and `callmfa check` warns with the fix."""
        sandbox.asterisk("module unload app_dtmfstore.so")
        try:
            out = run_cli(sandbox, "check")
            assert out.returncode == 0, out.stdout + out.stderr
            assert "warn  early-keys     app_dtmfstore is not loaded" in out.stdout
            assert "fix: load app_dtmfstore.so" in out.stdout
            p = phone(keys="#", key_delay_ms=1500)
            record = await client.verify(user="alice", phone=PHONE, timeout_s=60)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            assert p.wait(20) == 0, p.errors()
        finally:
            sandbox.asterisk("module load app_dtmfstore.so")
        assert "ok    early-keys" in run_cli(sandbox, "check").stdout

    def test_a_dialplan_older_than_callmfa_collect_is_a_warning(self, sandbox: Sandbox) -> None:
        """[callmfa-prepare] without its Set(CALLMFA_COLLECT=1) (priority 6), as a dialplan
        installed before [callmfa-collect]: `callmfa check` warns with the fix."""
        sandbox.asterisk("dialplan add extension s,6,NoOp(old) into callmfa-prepare replace")
        try:
            out = run_cli(sandbox, "check")
            assert "warn  early-keys     the dialplan is older than [callmfa-collect]" \
                in out.stdout, out.stdout
        finally:
            sandbox.asterisk("dialplan reload")
        assert "ok    early-keys" in run_cli(sandbox, "check").stdout

    def test_call_places_a_real_verification(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """--call NUMBER: a real call to the phone, which presses '#': ok. Twice in a row
        (each run has its own user), and no JSON log line in the output at the default
        log level (ami_logged_in was printed in the middle of it)."""
        for _ in range(2):
            p = phone(keys="#")
            out = run_cli(sandbox, "check", "--call", PHONE, CALLMFA_LOG_LEVEL="info")
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"ok    call           {PHONE}: approved" in out.stdout
            assert "the whole chain works" in out.stdout
            assert p.wait(20) == 0, p.errors()
            lines = (out.stdout + out.stderr).splitlines()
            assert not [line for line in lines if line.lstrip().startswith("{")], lines


class TestMetrics:
    async def test_mixed_outcomes_are_counted(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """approved, fraud_reported, busy, no_answer: each counted once, with the latencies."""
        before = scrape()
        script = [({"keys": "#"}, Outcome.APPROVED), ({"keys": "0#"}, Outcome.FRAUD_REPORTED),
                  ({"reject_with": 486}, Outcome.BUSY),
                  ({"ring_forever": True}, Outcome.NO_ANSWER)]
        for behaviour, expected in script:
            p = phone(**behaviour)
            record = await client.verify(user="metrics", phone=PHONE, timeout_s=40)
            assert record is not None
            assert record.outcome is expected
            assert p.wait(20) == 0, p.errors()
        # The originator's task ends a moment after the outcome: its acknowledgement is
        # batched (up to ACK_BATCH_S), and callmfa_calls_in_flight counts it until then.
        for _ in range(40):  # 2 s
            after = scrape()
            if not after["callmfa_calls_in_flight{}"]:
                break
            await asyncio.sleep(0.05)

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        for outcome in Outcome:
            counted = 1 if outcome in {o for _, o in script} else 0
            assert delta(f"callmfa_outcomes_total{{outcome={outcome.value}}}") == counted
        assert delta("callmfa_calls_placed_total{}") == 4
        assert delta("callmfa_verification_seconds_count{}") == 4
        assert delta("callmfa_request_to_call_seconds_count{}") == 4
        assert delta("callmfa_input_to_outcome_seconds_count{}") == 2  # the two with a key
        assert delta("callmfa_progress_events_total{event=answered}") == 2
        assert after["callmfa_calls_in_flight{}"] == 0
        assert after["callmfa_queue_lag{}"] == 0
        assert delta("callmfa_ami_reconnects_total{}") == 0
        assert after[f"callmfa_info{{version={__version__}}}"] == 1

    def test_health_endpoint(self, sandbox: Sandbox) -> None:
        """/healthz answers 200 and a JSON status while Redis and AMI are up."""
        port = E2E_SETTINGS["CALLMFA_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            status = json.loads(r.read())
            assert r.status == 200
        assert status["ok"] is True
        assert status["redis"] is True
        assert all(a["logged_in"] for a in status["asterisk"].values())


class TestReport:
    async def test_counts_per_user_and_outcome(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Two calls of a new user show in the CSV report under that user, by outcome."""
        user = f"report-{uuid.uuid4().hex[:8]}"
        for behaviour in ({"keys": "#"}, {"reject_with": 486}):
            p = phone(**behaviour)
            assert await client.verify(user=user, phone=PHONE, timeout_s=40) is not None
            assert p.wait(20) == 0, p.errors()
        out = run_cli(sandbox, "report", "--csv")
        assert out.returncode == 0, out.stderr
        rows = [line.split(",") for line in out.stdout.splitlines()]
        assert rows[0] == ["day", "user", "outcome", "count"]
        mine = sorted((r[2], r[3]) for r in rows if r[1] == user)
        assert mine == [("approved", "1"), ("busy", "1")]
        text = run_cli(sandbox, "report").stdout
        assert "per user" in text
        assert user in text


