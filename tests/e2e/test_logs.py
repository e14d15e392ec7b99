"""serve's log at info on a real call: one line per stage, compact JSON (issue 16)."""

from __future__ import annotations

import asyncio
import json

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome

from ..conftest import Sandbox
from .conftest import PhoneFactory

# A standard verification's stages at info: placed (or call_failed), the IVR, the input,
# the outcome, the canonical summary. CALLMFA_LOG_LEVEL=debug adds originate_sent.
STAGES = ["call_answered", "ivr_started", "dtmf_collected", "outcome_published",
          "verification_finished"]


async def _lines_of(sandbox: Sandbox, rid: str) -> list[bytes]:
    """serve's lines for ``rid``, once its verification_finished line is written."""
    log = sandbox.directory / "logs" / "callmfa.log"
    for _ in range(250):
        lines = [x for x in log.read_bytes().splitlines() if rid.encode() in x]
        if any(b'"verification_finished"' in x for x in lines):
            return lines
        await asyncio.sleep(0.02)
    raise AssertionError(f"no verification_finished line for {rid}")


class TestServeLog:
    async def test_one_line_per_stage_at_info(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#': five lines at info, the call's channel and Asterisk on call_answered; the
        sandbox logs at debug, where originate_sent is."""
        phone(keys="#")
        record = await client.verify(user="alice", phone="+12015550100", timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        lines = await _lines_of(sandbox, record.id)
        events = [json.loads(x) for x in lines]
        info = [e["event"] for e in events if e["level"] != "debug"]
        assert sorted(info) == sorted(STAGES)
        assert [e["level"] for e in events if e["event"] == "originate_sent"] == ["debug"]
        [answered] = [e for e in events if e["event"] == "call_answered"]
        assert answered["channel"] == "PJSIP/+12015550100@callmfa-phone"
        assert answered["asterisk"]
        # orjson's compact form, straight to bytes
        assert all(b'"event":"' in x for x in lines)

    def test_serve_runs_on_uvloop_by_default(self, sandbox: Sandbox) -> None:
        """CALLMFA_EVENT_LOOP is unset in the sandbox: auto, and uvloop is installed."""
        log = sandbox.directory / "logs" / "callmfa.log"
        ready = [json.loads(x) for x in log.read_bytes().splitlines()
                 if b'"service_ready"' in x]
        assert ready[-1]["event_loop"] == "uvloop"
