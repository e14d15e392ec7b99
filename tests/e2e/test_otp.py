"""Voice one-time codes (mode otp) through the real chain: '#' first, then the code twice."""

from __future__ import annotations

import asyncio
import re

from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.storage.keys import REQUESTS

from ..conftest import Sandbox
from .conftest import AsteriskLog, PhoneFactory

PHONE = "+12015550100"
CODE = "4829173"  # seven digits, no two alike in a row: the order is checkable
VOICEMAIL = ("Hi, you have reached the voicemail of Alice Example. I am not available right "
             "now. Please leave your name, your number and a short message after the tone, "
             "and I will call you back as soon as I can.")
_DIGIT = re.compile(r"'callmfa/digit_(\d)[.']")
_PROMPT = re.compile(r"'callmfa/(\w+)[.']")


def digits_played(played: list[str]) -> str:
    """The digits Asterisk's log says it played, in order, as one string."""
    return "".join(m.group(1) for line in played if (m := _DIGIT.search(line)))


async def otp_call(client: VerificationClient, user: str, code: str = CODE,
                   **kw: object) -> OutcomeRecord:
    record = await client.verify(user=user, phone=PHONE, mode="otp", otp=code, timeout_s=60,
                                 **kw)
    assert record is not None, "no outcome within 60 s"
    return record


async def redis_dump(sandbox: Sandbox) -> bytes:
    """Every key and value in the sandbox's Redis, as one blob."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        dump = []
        async for key in redis.scan_iter():
            kind = (await redis.type(key)).decode()
            if kind == "string":
                dump.append(await redis.get(key))
            elif kind == "hash":
                dump.append(repr(await redis.hgetall(key)).encode())
            elif kind == "stream":
                dump.append(repr(await redis.xrange(key)).encode())
            dump.append(key)
    finally:
        await redis.aclose()
    return b"\n".join(d for d in dump if d)


async def code_nowhere(sandbox: Sandbox, code: str) -> None:
    """The code is in no log line (serve's, Asterisk's, the phones'), event, outcome or
    Redis key, and no request is left in the stream."""
    for log in (sandbox.directory / "logs").glob("*.log"):
        assert code not in log.read_text(errors="replace"), log
    assert code.encode() not in await redis_dump(sandbox)
    redis = Redis.from_url(sandbox.redis_url)
    try:
        assert await redis.xlen(REQUESTS) == 0
    finally:
        await redis.aclose()


class TestOtp:
    async def test_pound_hears_the_code_twice_and_is_delivered(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' after the greeting: Asterisk plays the digits, in order, twice; delivered.
        Then the code is in no log line, event, outcome or Redis key."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=1500)
        record = await otp_call(client, "otp-user")
        assert (record.outcome, record.detail) == (Outcome.DELIVERED, None)
        assert await asyncio.to_thread(p.wait, 30) == 0, p.errors()  # the goodbye too
        played = await asyncio.to_thread(log.played)
        ours = [line for line in played if "'callmfa/" in line]
        names = [m.group(1) for line in ours if (m := _PROMPT.search(line))]
        assert names.index("otp_greeting") < names.index("otp_code_is") \
            < names.index("otp_again") < names.index("otp_menu"), names
        assert digits_played(played) == CODE * 2, played
        assert "otp_goodbye" in names
        await code_nowhere(sandbox, CODE)

    async def test_star_reads_it_again(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'*' after the two readings: the code is read twice more (in French for lang fr);
        delivered all the same."""
        code = "5831"
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        # '#' at 1.5 s; the two readings of 4 digits take about 9 s: '*' lands in the menu
        # (or, on a slow machine, in the second reading, which then starts again).
        p = phone(keys="#*", key_delay_ms=1500, key_gap_ms=11000)
        record = await otp_call(client, "otp-again", code, lang="fr")
        assert record.outcome is Outcome.DELIVERED
        assert await asyncio.to_thread(p.wait, 40) == 0, p.errors()
        played = await asyncio.to_thread(log.played)
        digits = digits_played(played)
        assert digits.endswith(code * 2), played
        assert digits.count(code) >= 3, played
        assert all("(language 'fr')" in line for line in played if "'callmfa/" in line)
        await code_nowhere(sandbox, code)

    async def test_no_pound_gets_no_digit(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A phone that never presses '#': no_input, and not one digit is played."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="")
        record = await otp_call(client, "otp-silent")
        assert (record.outcome, record.detail) == (Outcome.NO_INPUT, "timeout")
        await asyncio.to_thread(p.wait, 30)
        played = await asyncio.to_thread(log.played)
        assert any("'callmfa/otp_greeting." in line for line in played), played
        assert digits_played(played) == ""
        await code_nowhere(sandbox, CODE)

    async def test_machine_greeting_gets_no_digit(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A voicemail's long greeting, then '#' (its beep menu): machine_answered, and no
        digit (nor any prompt of ours) is played."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", speech=VOICEMAIL, key_delay_ms=200)
        record = await otp_call(client, "otp-machine")
        assert (record.outcome, record.input_at) == (Outcome.MACHINE_ANSWERED, None)
        p.stop()
        played = await asyncio.to_thread(log.played)
        assert digits_played(played) == ""
        assert not any("'callmfa/otp_" in line for line in played), played
        await code_nowhere(sandbox, CODE)
