"""PIN and match modes, machine detection and languages, through the real chain."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.codes import check_pin, hash_code
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.storage.pins import pin_key
from ivr.testing import synthesize

from ..conftest import REPO, Sandbox
from .conftest import AsteriskLog, PhoneFactory, audit_entries, audit_of, redis_dump, restart_serve

PHONE = "+12015550100"
PIN = "5938271046"  # ten digits: nothing else in a log or in Redis looks like it
VOICEMAIL = ("Hi, you have reached the voicemail of Alice Example. I am not available right "
             "now. Please leave your name, your number and a short message after the tone, "
             "and I will call you back as soon as I can.")


def _callmfa(sandbox: Sandbox, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALLMFA_REDIS_URL": sandbox.redis_url,
           "CALLMFA_PIN_PEPPER_FILE": sandbox.env["CALLMFA_PIN_PEPPER_FILE"],
           "CALLMFA_SIGNING_KEY": sandbox.env["CALLMFA_SIGNING_KEY"]}
    return subprocess.run([str(REPO / ".venv" / "bin" / "callmfa"), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=30)


async def set_pin(sandbox: Sandbox, user: str, pin: str) -> None:
    """`callmfa pin set USER` with the PIN on stdin, as an admin's script would."""
    out = await asyncio.to_thread(_callmfa, sandbox, "pin", "set", user, stdin=pin + "\n")
    assert out.returncode == 0, out.stderr
    assert pin not in out.stdout + out.stderr


def pepper(sandbox: Sandbox) -> bytes:
    """The sandbox's CALLMFA_PIN_PEPPER (sandbox.sh draws it)."""
    return Path(sandbox.env["CALLMFA_PIN_PEPPER_FILE"]).read_text().strip().encode()


async def store_old_pin_hash(sandbox: Sandbox, user: str, pin: str) -> None:
    """What `callmfa pin set` stored before the pepper: scrypt over the PIN alone."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        await redis.hset(pin_key(user), mapping={"hash": hash_code(pin), "denials": 0,
                                                 "locked_until": 0})
    finally:
        await redis.aclose()


async def pin_hash(sandbox: Sandbox, user: str) -> str:
    redis = Redis.from_url(sandbox.redis_url)
    try:
        value = await redis.hget(pin_key(user), "hash")
    finally:
        await redis.aclose()
    assert value is not None
    return bytes(value).decode()


async def verify(client: VerificationClient, user: str, **kw: object) -> OutcomeRecord:
    record = await client.verify(user=user, phone=PHONE, timeout_s=60, **kw)
    assert record is not None, "no outcome within 60 s"
    return record


class TestPin:
    async def test_right_pin_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """The PIN set with `callmfa pin set`, keyed then '#': approved."""
        await set_pin(sandbox, "pin-right", PIN)
        phone(keys=PIN + "#")
        record = await verify(client, "pin-right", mode="pin")
        assert (record.outcome, record.detail) == (Outcome.APPROVED, None)

    async def test_wrong_pin_twice_is_denied(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A wrong PIN on every attempt (2 in the e2e settings): denied, wrong_code."""
        await set_pin(sandbox, "pin-wrong", PIN)
        phone(keys="1111#2222#")
        record = await verify(client, "pin-wrong", mode="pin")
        assert (record.outcome, record.detail) == (Outcome.DENIED, "wrong_code")

    async def test_right_pin_keyed_during_the_wrong_code_prompt_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A wrong PIN, then the right one keyed 150 ms later, while "That code is not
        correct..." plays: the prompt is the retry's own collection (one file for GET DATA),
        so the keys count and the call is approved."""
        await set_pin(sandbox, "pin-again", PIN)
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="1111#" + PIN + "#")
        record = await verify(client, "pin-again", mode="pin")
        assert (record.outcome, record.detail) == (Outcome.APPROVED, None)
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        assert any("callmfa/pin_wrong_code" in line for line in await asyncio.to_thread(log.played))

    async def test_denied_calls_lock_the_user_out(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """After 2 denied calls (the e2e lockout setting) even the right PIN gets locked_out;
        `callmfa pin unlock` lets the user in again."""
        await set_pin(sandbox, "pin-lock", PIN)
        for keys, outcome in [("1111#2222#", Outcome.DENIED), ("1111#2222#", Outcome.DENIED),
                              (PIN + "#", Outcome.LOCKED_OUT)]:
            p = phone(keys=keys)
            assert (await verify(client, "pin-lock", mode="pin")).outcome is outcome
            p.wait(30)  # one phone at a time on the phone's address
        out = await asyncio.to_thread(_callmfa, sandbox, "pin", "unlock", "pin-lock")
        assert out.returncode == 0, out.stderr
        phone(keys=PIN + "#")
        assert (await verify(client, "pin-lock", mode="pin")).outcome is Outcome.APPROVED
        # Every PIN change is in the audit: the admin's set and unlock, the IVR's lockout.
        mine = [e for e in await audit_entries(sandbox) if e["user"] == "pin-lock"]
        assert [(e["event"], e["actor"].split(":")[0]) for e in mine][-3:] == [
            ("pin_set", "cli"), ("pin_locked_out", "ivr"), ("pin_unlocked", "cli")]
        assert PIN not in repr(mine)

    async def test_pin_appears_nowhere(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """After PIN calls, the PIN is in no log line (callmfa's, Asterisk's) and nowhere in
        Redis: only its salted hash is stored."""
        await set_pin(sandbox, "pin-secret", PIN)
        p = phone(keys=PIN + "#")
        pin_call = await verify(client, "pin-secret", mode="pin")
        assert pin_call.outcome is Outcome.APPROVED
        p.wait(30)
        phone(keys="42#")
        assert (await verify(client, "match-secret", mode="match",
                             match_number="42")).outcome is Outcome.APPROVED
        for log in (sandbox.directory / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            assert PIN not in text, log
        # Nor its length: serve's lines for the call count no keys (issue 12).
        lines = [json.loads(line) for line in
                 (sandbox.directory / "logs" / "callmfa.log").read_text().splitlines()
                 if pin_call.id in line and line.startswith("{")]
        collected = [e for e in lines if e["event"] == "dtmf_collected"]
        assert collected
        assert not any("keys" in e for e in collected)
        assert all(type(e["early_keys"]) is bool for e in lines if e["event"] == "ivr_started")
        blob = await redis_dump(sandbox)
        assert PIN.encode() not in blob
        assert b"scrypt-p1$" in blob  # the PIN's hash, peppered
        assert b"scrypt$" in blob  # the match code's, as the sign-in service made it

    async def test_pin_set_before_the_pepper_approves_and_is_upgraded(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A PIN hash stored before CALLMFA_PIN_PEPPER (plain scrypt) still approves; that
        success replaces it with the peppered hash, which approves the next call."""
        await store_old_pin_hash(sandbox, "pin-old", PIN)
        p = phone(calls=2, keys=PIN + "#")
        assert (await verify(client, "pin-old", mode="pin")).outcome is Outcome.APPROVED
        upgraded = await pin_hash(sandbox, "pin-old")
        assert upgraded.startswith("scrypt-p1$")
        assert check_pin(PIN, upgraded, pepper(sandbox)).ok
        assert (await verify(client, "pin-old", mode="pin")).outcome is Outcome.APPROVED
        assert await pin_hash(sandbox, "pin-old") == upgraded
        assert p.wait(30) == 0, p.errors()


class TestMatch:
    async def test_right_number_approves(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """The number shown on the sign-in page, keyed then '#': approved."""
        phone(keys="37#")
        record = await verify(client, "match-right", mode="match", match_number="37")
        assert record.outcome is Outcome.APPROVED

    async def test_wrong_number_is_denied_at_once(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A wrong number (approve-by-habit, or a phisher's page): denied, no second guess."""
        phone(keys="73#")
        record = await verify(client, "match-wrong", mode="match", match_number="37")
        assert (record.outcome, record.detail) == (Outcome.DENIED, "wrong_code")


class TestVerifyCommand:
    """`callmfa verify --mode`: the command line asks for every mode (it had no --mode)."""

    async def test_mode_match_with_the_number(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        p = phone(keys="37#")
        out = await asyncio.to_thread(
            _callmfa, sandbox, "verify", "--user", "cli-match", "--phone", PHONE,
            "--mode", "match", "--match", "37", "--timeout", "40", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert OutcomeRecord.from_json(out.stdout).outcome is Outcome.APPROVED
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()

    async def test_mode_match_wrong_number_is_denied(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        phone(keys="73#")
        out = await asyncio.to_thread(
            _callmfa, sandbox, "verify", "--user", "cli-match", "--phone", PHONE,
            "--mode", "match", "--match", "37", "--timeout", "40")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "outcome: denied (wrong_code)" in out.stdout
        assert "(mode match)" in out.stdout

    async def test_mode_pin(self, sandbox: Sandbox, phone: PhoneFactory) -> None:
        await set_pin(sandbox, "cli-pin", PIN)
        phone(keys=PIN + "#")
        out = await asyncio.to_thread(
            _callmfa, sandbox, "verify", "--user", "cli-pin", "--phone", PHONE,
            "--mode", "pin", "--timeout", "40")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "outcome: approved" in out.stdout


class TestMachineDetection:
    async def test_voicemail_greeting_is_machine_answered(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A long recorded greeting, then '#' (a voicemail's beep menu): machine_answered,
        never approved."""
        p = phone(keys="#", speech=VOICEMAIL, key_delay_ms=200)
        record = await verify(client, "alice")
        assert (record.outcome, record.input_at) == (Outcome.MACHINE_ANSWERED, None)
        p.stop()

    async def test_short_hello_is_a_person(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A short "hello" and a pause: AMD says HUMAN and the IVR runs."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        phone(keys="#", speech="Hello.")
        record = await verify(client, "alice")
        assert record.outcome is Outcome.APPROVED
        assert "AMD: Channel" in "".join(await asyncio.to_thread(log.lines))


class TestKeysBeforeTheGreeting:
    @pytest.mark.parametrize("dtmf", ["info", "rfc4733"])
    async def test_pound_while_amd_listens_approves(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, dtmf: str
    ) -> None:
        """'#' just after "hello", while AMD still listens (AMD drops keys): the dialplan's
        StoreDTMF keeps it, and the call is approved without the greeting."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=100, dtmf=dtmf)
        record = await verify(client, "alice")
        assert (record.outcome, record.input_at is not None) == (Outcome.APPROVED, True)
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()  # the goodbye too
        text = "".join(await asyncio.to_thread(log.lines))
        assert "AMD: Channel" in text
        assert "HUMAN" in text
        assert "callmfa/greeting" not in text
        assert "callmfa/approved" in text

    async def test_zero_while_amd_listens_then_pound_reports_fraud(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'0' while AMD listens, '#' during the greeting: the '0' was not lost, so the call
        reports fraud rather than approving."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        phone(keys="0#", key_delay_ms=100, key_gap_ms=2500)
        record = await verify(client, "alice")
        assert record.outcome is Outcome.FRAUD_REPORTED
        assert any("callmfa/greeting" in line for line in await asyncio.to_thread(log.played))

    @pytest.mark.parametrize("gap_ms", [150, 300, 1000])
    @pytest.mark.parametrize(("keys", "outcome"), [
        ("5##", Outcome.APPROVED), ("5#0#", Outcome.FRAUD_REPORTED),
    ])
    async def test_every_answer_keyed_before_the_greeting_counts(
        self, client: VerificationClient, phone: PhoneFactory, keys: str, outcome: Outcome,
        gap_ms: int,
    ) -> None:
        """A wrong answer and then '#' (or '0#'), keyed while AMD listens or as the greeting
        starts, gap_ms apart: each answer counts, in order (the second is not thrown away
        with the first)."""
        p = phone(keys=keys, key_delay_ms=100, key_gap_ms=gap_ms)
        record = await verify(client, "alice")
        assert record.outcome is outcome
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()

    async def test_pound_then_hang_up_while_amd_listens_is_hung_up(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' and a hang-up, both while AMD listens: the dialplan's h extension drops the
        key, and the call is hung_up, not approved."""
        phone(keys="#", key_delay_ms=50, key_gap_ms=50, hangup_after_ms=0)
        record = await verify(client, "alice")
        assert (record.outcome, record.input_at) == (Outcome.HUNG_UP, None)


class TestBargeIn:
    async def test_star_restarts_the_greeting(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'*' during the greeting cuts it and plays it again (no "wrong key" prompt, no
        attempt used); '#' during the second one approves."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="*#", key_delay_ms=2000, key_gap_ms=2500)
        record = await verify(client, "alice")
        assert record.outcome is Outcome.APPROVED
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        played = await asyncio.to_thread(log.played)
        assert sum("callmfa/greeting" in line for line in played) == 2, played
        assert not any("callmfa/retry" in line for line in played), played

    @pytest.mark.parametrize(("keys", "outcome"), [
        ("5#0#", Outcome.FRAUD_REPORTED), ("5##", Outcome.APPROVED),
    ])
    async def test_answer_keyed_during_the_wrong_key_prompt_counts(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, keys: str,
        outcome: Outcome,
    ) -> None:
        """A wrong key during the greeting, then '0#' (or '#') while "Sorry, that is not a
        valid key" plays: the fraud report (or the approval) counts."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys=keys, key_delay_ms=2000, key_gap_ms=1000)
        record = await verify(client, "alice")
        assert record.outcome is outcome
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        assert any("callmfa/retry" in line for line in await asyncio.to_thread(log.played))

    async def test_keys_after_the_outcome_change_nothing(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """'#' then, during the goodbye, '0#': still approved, and no fraud report."""
        p = phone(keys="#0#", key_gap_ms=300)
        record = await verify(client, "alice")
        assert record.outcome is Outcome.APPROVED
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()
        again = await client.wait(record.id, timeout_s=1)
        assert again is not None
        assert again.outcome is Outcome.APPROVED
        assert await audit_of(sandbox, record.id) == []


class TestLanguages:
    async def test_french_request_plays_french_prompts(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """lang fr-CA: the channel's language is fr and Asterisk plays callmfa's French file."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        phone(keys="#", key_delay_ms=1500)
        record = await verify(client, "alice", lang="fr-CA")
        assert record.outcome is Outcome.APPROVED
        played = await asyncio.to_thread(log.played)
        assert any("callmfa/greeting" in line and "(language 'fr')" in line for line in played), \
            played

    @pytest.mark.parametrize("lang", ["de", "es"])
    async def test_german_and_spanish_prompts_are_played(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, lang: str
    ) -> None:
        """lang de and es: Asterisk plays callmfa's own German or Spanish greeting and
        approval, and no English one (these prompts were never played in an e2e test)."""
        log = await asyncio.to_thread(AsteriskLog, sandbox)
        p = phone(keys="#", key_delay_ms=1500)
        record = await verify(client, f"lang-{lang}", lang=lang)
        assert record.outcome is Outcome.APPROVED
        assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()  # the goodbye too
        played = await asyncio.to_thread(log.played)
        ours = [line for line in played if "'callmfa/" in line]
        for prompt in ("greeting", "approved"):
            assert any(f"'callmfa/{prompt}" in line and f"(language '{lang}')" in line
                       for line in ours), played
        assert ours, played
        assert all(f"(language '{lang}')" in line for line in ours), ours

    async def test_admin_recording_replaces_ours(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        tmp_path: Path
    ) -> None:
        """A greeting.wav in CALLMFA_PROMPT_OVERRIDE_DIR/<lang>/ on the Asterisk host is
        played instead of callmfa's; prompts the admin did not record stay callmfa's."""
        root = Path(sandbox.env["CALLMFA_ASTERISK_ROOT"])
        override = f"/var/lib/callmfa-prompts-{sandbox.netns}"  # on the Asterisk host
        host_dir = root / override.lstrip("/")
        (host_dir / "en").mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(synthesize, "Example Corp sign in. Press pound.",
                                tmp_path / "greeting.wav")
        # (synthesize leaves the 8 kHz 16-bit PCM take beside its u-law one)
        shutil.copy(tmp_path / "greeting.pcm.wav", host_dir / "en" / "greeting.wav")
        (host_dir / "en" / "greeting.wav").chmod(0o644)
        await asyncio.to_thread(restart_serve, sandbox, CALLMFA_PROMPT_OVERRIDE_DIR=override)
        try:
            log = await asyncio.to_thread(AsteriskLog, sandbox)
            p = phone(keys="#", key_delay_ms=1500)
            record = await verify(client, "alice")
            assert record.outcome is Outcome.APPROVED
            assert await asyncio.to_thread(p.wait, 20) == 0, p.errors()  # the goodbye too
            played = await asyncio.to_thread(log.played)
            assert any(f"'{override}/en/greeting" in line for line in played), played
            assert any("'callmfa/approved" in line for line in played), played
            assert not any("'callmfa/greeting" in line for line in played), played
        finally:
            await asyncio.to_thread(restart_serve, sandbox)
            shutil.rmtree(host_dir, ignore_errors=True)
