"""Mode otp in the IVR over FastAGI and real Redis, with a scripted Asterisk: the code is
read from the request's stream entry, one STREAM FILE per file, and in no command whole."""

from __future__ import annotations

import json

from structlog.testing import capture_logs

from ivr.storage.keys import REQUESTS

from .conftest import Ivr
from .fake_asterisk import events_of, run_call
from .test_ivr_modes import PREAMBLE, everything_in, playback

CODE = "4829173"
READ_GREETING = "EXEC Read CALLMFA_KEYS,callmfa/otp_greeting,4,,1,0.5"


def streamed(*prompts: str) -> list[str]:
    return [f"STREAM FILE callmfa/{p} * 0" for p in prompts]


async def otp_entry(ivr: Ivr, rid: str, code: str = CODE) -> dict[str, str]:
    """The request on the stream, as a sign-in service adds it; the marker naming it."""
    request = {"id": rid, "user": "alice", "phone": "+12015550100", "mode": "otp",
               "otp": code}
    entry: bytes = await ivr.redis.xadd(REQUESTS, {"request": json.dumps(request)})
    return {"mode": "otp", "entry_id": entry.decode()}


class TestOtpMode:
    async def test_pound_reads_the_code_twice_then_delivered(self, ivr: Ivr) -> None:
        rid = "31313131-3131-4131-8131-313131313131"
        marker = await otp_entry(ivr, rid)
        with capture_logs() as logs:
            commands, stored = await run_call(ivr, rid, "#", marker=marker)
        assert (stored["outcome"], stored["detail"]) == ("delivered", None)
        digits = [f"digit_{d}" for d in CODE]
        reading = streamed("otp_code_is", *digits, "otp_again", *digits)
        assert commands[:len(PREAMBLE)] == PREAMBLE
        body = commands[len(PREAMBLE):]
        assert body[0].startswith(READ_GREETING.rsplit(",", 1)[0])
        assert [c for c in body if c.startswith("STREAM FILE")] == [
            *reading, *streamed("otp_menu")]
        assert body[-3:] == ["WAIT FOR DIGIT 500", playback("otp_goodbye"), "HANGUP"]
        assert not any(CODE in c for c in commands)
        assert not any(CODE in repr(e) for e in logs)
        assert [e["event"] for e in await events_of(ivr.redis, rid)] == ["input", "finished"]

    async def test_no_entry_no_code_is_an_error(self, ivr: Ivr) -> None:
        """The entry is gone (trimmed): error/no_code, nothing read."""
        rid = "32323232-3232-4232-8232-323232323232"
        commands, stored = await run_call(ivr, rid, marker={"mode": "otp",
                                                            "entry_id": "1-0"})
        assert (stored["outcome"], stored["detail"]) == ("error", "no_code")
        assert not any(c.startswith("STREAM FILE") for c in commands)

    async def test_another_requests_entry_is_not_read(self, ivr: Ivr) -> None:
        """A marker pointing at another request's entry reads nothing from it."""
        rid = "33333333-3333-4333-8333-333333333333"
        marker = await otp_entry(ivr, "34343434-3434-4434-8434-343434343434")
        commands, stored = await run_call(ivr, rid, "#", marker=marker)
        assert (stored["outcome"], stored["detail"]) == ("error", "no_code")
        assert not any("digit_" in c for c in commands)
        assert CODE not in "".join(commands)
        assert CODE in await everything_in(ivr.redis)  # the other request's own entry
