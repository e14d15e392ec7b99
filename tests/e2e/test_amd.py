"""Answering-machine detection and people who say nothing (issue: a silent user who presses
# was refused as a machine). Four phones, as a stock amd.conf would judge them, with AMD()'s
arguments from callmfa's settings (initial silence 2.5 s, greeting 1.5 s, total 5 s):

- silent audio (a muted phone), '#' at 1 s, '#' again once the greeting plays: approved;
- silent audio, '#' at 1 s, then nothing: never approved (no_input);
- an espeak voicemail greeting that ends with a '#' tone (RFC 4733): machine_answered;
- "Hello.", then '#': approved at once, the greeting never played.
"""

from __future__ import annotations

import asyncio

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord

from ..conftest import Sandbox
from .conftest import AsteriskLog, PhoneFactory

PHONE = "+12015550100"
VOICEMAIL = ("Hi, you have reached the voicemail of Alex Morgan. I cannot take your call "
             "right now. Please leave a message after the tone.")


async def verify(client: VerificationClient) -> OutcomeRecord:
    record = await client.verify(user="alice", phone=PHONE, timeout_s=60)
    assert record is not None
    return record


class TestSilentPeople:
    async def test_silent_pound_then_pound_during_the_greeting_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """AMD says MACHINE (INITIALSILENCE) after 2.5 s of silent audio, but a key was
        pressed: the greeting plays, and the '#' keyed during it approves."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="##", key_delay_ms=1000, key_gap_ms=3500, speech=None, silent_rtp=True)
        record = await verify(client)
        assert record.outcome is Outcome.APPROVED
        assert record.input_at is not None
        assert record.answered_at is not None
        assert record.input_at - record.answered_at > 3.0  # the second '#', not the first
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        text = "".join(await asyncio.to_thread(log.lines))
        assert "ANSWERING MACHINE: silenceDuration" in text  # AMDCAUSE INITIALSILENCE
        assert "callmfa/greeting" in text

    async def test_silent_pound_alone_never_approves(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """The '#' pressed while AMD listened does not count once AMD heard only silence:
        without a fresh '#', the call ends no_input."""
        p = phone(keys="#", key_delay_ms=1000, speech=None, silent_rtp=True)
        record = await verify(client)
        assert record.outcome is Outcome.NO_INPUT
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()


class TestMachinesAndPeople:
    async def test_voicemail_with_a_pound_tone_is_a_machine(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A long greeting ending with a '#' tone: machine_answered, never approved."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        phone(keys="#", key_delay_ms=0, speech=VOICEMAIL, dtmf="rfc4733")
        record = await verify(client)
        assert (record.outcome, record.input_at) == (Outcome.MACHINE_ANSWERED, None)
        text = "".join(await asyncio.to_thread(log.lines))
        assert "MACHINE" in text
        assert "callmfa/greeting" not in text

    async def test_hello_then_pound_approves_at_once(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A person says "Hello." and keys '#': approved without the greeting, as before."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=100, speech="Hello.")
        record = await verify(client)
        assert record.outcome is Outcome.APPROVED
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        assert "callmfa/greeting" not in "".join(await asyncio.to_thread(log.lines))
