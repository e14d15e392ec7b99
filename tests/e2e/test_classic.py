"""The classic AGI variant: Asterisk runs agi_scripts/callmfa-verify.agi (pyst2) itself.

For this module the sandbox's `callmfa serve` runs with CALLMFA_AGI_MODE=classic, so that
calls go to [callmfa-verify-classic]; it is put back after.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.codes import check_pin, hash_code
from ivr.domain.outcome import Outcome
from ivr.storage.pins import PinStore

from ..conftest import Sandbox
from .conftest import AsteriskLog, PhoneFactory, audit_of
from .test_modes import PIN, pepper, pin_hash, set_pin, store_old_pin_hash
from .test_operations import scrape
from .test_otp import code_nowhere, digits_played


@pytest.mark.usefixtures("classic")
class TestClassicAgi:
    async def test_pound_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' approves through the classic script, which writes the outcome with redis-py."""
        p = phone(keys="#", key_delay_ms=2500)
        record = await client.verify(user="alice", phone="+12015550100", timeout_s=60)
        assert record is not None
        assert (record.outcome, record.user) == (Outcome.APPROVED, "alice")
        assert record.input_at is not None
        assert p.wait(20) == 0, p.errors()
        log = (sandbox.directory / "logs" / "asterisk.log").read_text()
        assert f"callmfa: {record.id}: outcome approved" in log

    async def test_otp_reads_the_code_twice(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Mode otp through the classic script: '#', the digits played twice (one STREAM
        FILE each), delivered; the code then in no log line or Redis key."""
        code = "61947"
        log = AsteriskLog(sandbox)
        p = phone(keys="#", key_delay_ms=1500)
        record = await client.verify(user="classic-otp", phone="+12015550100", mode="otp",
                                     otp=code, timeout_s=60)
        assert record is not None
        assert record.outcome is Outcome.DELIVERED
        assert p.wait(30) == 0, p.errors()
        assert digits_played(log.played()) == code * 2
        await code_nowhere(sandbox, code)

    async def test_answered_outcomes_are_counted_in_metrics(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """callmfa_outcomes_total counts what the classic script stored: it missed every
        answered call's outcome, so the approval-rate panel and its alert read 0."""
        before = scrape()
        for keys, expected in (("#", Outcome.APPROVED), ("0#", Outcome.FRAUD_REPORTED)):
            p = phone(keys=keys, key_delay_ms=2500)
            record = await client.verify(user="metrics", phone="+12015550100", timeout_s=60)
            assert record is not None
            assert record.outcome is expected
            assert p.wait(20) == 0, p.errors()
        after = scrape()
        for outcome in Outcome:
            name = f"callmfa_outcomes_total{{outcome={outcome.value}}}"
            counted = 1 if outcome in (Outcome.APPROVED, Outcome.FRAUD_REPORTED) else 0
            assert after.get(name, 0) - before.get(name, 0) == counted, outcome

    async def test_zero_pound_reports_fraud_and_is_audited(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'0#' through the classic script: fraud_reported, and the security audit has it
        (the same hook as serve's IVR; the suite runs with CALLMFA_FRAUD_BLOCK_S=0)."""
        p = phone(keys="0#", key_delay_ms=2500)
        record = await client.verify(user="mallory", phone="+12015550100", timeout_s=60)
        assert record is not None
        assert record.outcome is Outcome.FRAUD_REPORTED
        assert p.wait(20) == 0, p.errors()
        mine = await audit_of(sandbox, record.id)
        assert [(e["event"], e["user"], e["number"]) for e in mine] == [
            ("fraud_reported", "mallory", "+12015550100")]

    async def test_pound_while_amd_listens_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' just after "hello", while AMD listens (it drops keys): the script reads what
        the dialplan's StoreDTMF kept and approves; the greeting is never played."""
        log = AsteriskLog(sandbox)
        p = phone(keys="#", key_delay_ms=100)
        record = await client.verify(user="alice", phone="+12015550100", timeout_s=60)
        assert record is not None
        assert (record.outcome, record.input_at is not None) == (Outcome.APPROVED, True)
        assert p.wait(20) == 0, p.errors()
        lines = "".join(log.lines())
        assert f"callmfa: {record.id}: outcome approved" in lines
        assert "callmfa/greeting" not in lines

    @pytest.mark.parametrize("gap_ms", [150, 300, 1000])
    @pytest.mark.parametrize(("keys", "outcome"), [
        ("5##", Outcome.APPROVED), ("5#0#", Outcome.FRAUD_REPORTED),
    ])
    async def test_every_answer_keyed_before_the_greeting_counts(
        self, client: VerificationClient, phone: PhoneFactory, keys: str, outcome: Outcome,
        gap_ms: int,
    ) -> None:
        """Through the classic script too: a wrong answer then '#' (or '0#'), gap_ms apart,
        while AMD listens or as the greeting starts, gives the second answer's outcome."""
        p = phone(keys=keys, key_delay_ms=100, key_gap_ms=gap_ms)
        record = await client.verify(user="mallory", phone="+12015550100", timeout_s=60)
        assert record is not None
        assert record.outcome is outcome
        assert p.wait(20) == 0, p.errors()

    async def test_pin_set_before_the_pepper_approves_and_is_upgraded(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """The classic script has the pepper (from its callmfa.env): an old plain-scrypt PIN
        hash approves and is upgraded to the peppered one, which approves the next call."""
        await store_old_pin_hash(sandbox, "classic-pin", PIN)
        p = phone(calls=2, keys=PIN + "#", key_delay_ms=2500)
        for _ in range(2):
            record = await client.verify(user="classic-pin", phone="+12015550100", mode="pin",
                                         timeout_s=60)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
        upgraded = await pin_hash(sandbox, "classic-pin")
        assert upgraded.startswith("scrypt-p1$")
        assert check_pin(PIN, upgraded, pepper(sandbox)).ok
        assert p.wait(20) == 0, p.errors()
        log = (sandbox.directory / "logs" / "asterisk.log").read_text()
        assert "the user's PIN hash is now peppered" in log

    async def test_pin_lockout_is_audited_as_serve_does(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Two denied PIN calls through the classic script (the e2e lockout setting is 2):
        the second locks the user out, audited as pin_locked_out by the shared script."""
        user = "classic-lock"
        redis = Redis.from_url(sandbox.redis_url)
        try:
            await PinStore(redis, lockout_after=2, lockout_s=900).set_hash(
                user, hash_code("5938271046"), actor="test")
        finally:
            await redis.aclose()
        ids = []
        for _ in range(2):
            p = phone(keys="1111#2222#")
            record = await client.verify(user=user, phone="+12015550100", mode="pin",
                                         timeout_s=60)
            assert record is not None
            assert record.outcome is Outcome.DENIED
            assert p.wait(20) == 0, p.errors()
            ids.append(record.id)
        [locked] = await audit_of(sandbox, ids[1])
        assert (locked["event"], locked["user"], locked["actor"]) == (
            "pin_locked_out", user, "ivr")
        assert await audit_of(sandbox, ids[0]) == []

    async def test_right_pin_keyed_during_the_wrong_code_prompt_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A wrong PIN, then the right one 150 ms later while the wrong-code prompt plays:
        approved through the classic script as through serve's IVR."""
        await set_pin(sandbox, "classic-again", PIN)
        p = phone(keys="1111#" + PIN + "#")
        record = await client.verify(user="classic-again", phone="+12015550100", mode="pin",
                                     timeout_s=60)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        assert p.wait(20) == 0, p.errors()

    async def test_hanging_up_at_the_pin_prompt_is_hung_up(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A wrong PIN, then a BYE while GET DATA plays the wrong-code prompt: hung_up. GET
        DATA's result=-1 is a missing prompt too; the script tells the hang-up by its
        SIGHUP, which Asterisk sends before it reads the next command."""
        await set_pin(sandbox, "classic-bye", PIN)
        p = phone(keys="1111#", key_delay_ms=2500, hangup_after_ms=800)
        record = await client.verify(user="classic-bye", phone="+12015550100", mode="pin",
                                     timeout_s=60)
        assert record is not None
        assert record.outcome is Outcome.HUNG_UP
        assert p.wait(20) == 0, p.errors()
        log = (sandbox.directory / "logs" / "asterisk.log").read_text()
        assert "Playing 'callmfa/pin_wrong_code" in log
        assert f"callmfa: {record.id}: AGI failed" not in log
