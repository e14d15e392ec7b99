"""The pin and match modes of the IVR over FastAGI and real Redis, with a scripted Asterisk.

PINs are set the way ``callmfa pin set`` does (the same PinStore and scrypt hash); a match
call's marker carries the request's ``match_hash``, as the originator writes it. Secret
keys are collected with GET DATA, which, unlike Read(), never writes them to Asterisk's log.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from structlog.testing import capture_logs

from ivr.domain.codes import PEPPERED, check_pin, hash_code
from ivr.storage.pins import PinStore, pin_key

from .conftest import Ivr, StartIvr
from .fake_asterisk import HANG_UP, events_of, run_call

PIN = "5938271046"  # ten digits: nothing else in Redis looks like it
WRONG_PIN = "1111"
MATCH = "42"
PREAMBLE = ["GET FULL VARIABLE ${CALLMFA_TOKEN}|${AMDSTATUS}|${AMDCAUSE}|${CALLMFA_EARLY_KEYS}|"
            "|${CALLMFA_COLLECT}",
            "SET VARIABLE CHANNEL(language) en"]
GET_PIN = "GET DATA callmfa/pin_greeting 500 20"
GET_MATCH = "GET DATA callmfa/match_greeting 500 20"
# After a wrong or invalid code, one file says so and asks again (GET DATA plays one file).
GET_PIN_AGAIN = "GET DATA callmfa/pin_wrong_code 500 20"
GET_PIN_RETRY = "GET DATA callmfa/pin_retry 500 20"
GET_MATCH_RETRY = "GET DATA callmfa/match_retry 500 20"
PIN_CALL = {"mode": "pin"}


def playback(prompt: str) -> str:
    return f"EXEC Playback callmfa/{prompt}"


async def set_pin(ivr: Ivr, user: str, pin: str) -> None:
    """What ``callmfa pin set USER`` stores."""
    pins = PinStore.for_settings(ivr.redis, ivr.settings)
    await pins.set_hash(user, hash_code(pin), actor="test")


async def pin_state(redis: Redis, user: str) -> dict[str, str]:
    raw: Any = await redis.hgetall(pin_key(user))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def everything_in(redis: Redis) -> str:
    """Every key and value in Redis, as one string to search."""
    out = []
    for key in await redis.keys("*"):
        raw_kind: Any = await redis.type(key)
        kind = raw_kind.decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = kind
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def match_call(code: str = MATCH) -> dict[str, str]:
    """A match call's marker fields: the request's match_hash of the number shown."""
    return {"mode": "match", "match_hash": hash_code(code)}


class TestPinMode:
    async def test_right_pin_approves(self, ivr: Ivr) -> None:
        """The PIN set as `callmfa pin set` does, keyed then '#', approves; it is collected
        with GET DATA (never Read(), which logs keys) and appears in no command and
        nowhere in Redis."""
        await set_pin(ivr, "alice", PIN)
        rid = "21212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, PIN + "#", marker=PIN_CALL)

        assert (stored["outcome"], stored["detail"]) == ("approved", None)
        assert stored["input_at"] is not None
        assert commands == [*PREAMBLE, GET_PIN, playback("approved"), "HANGUP"]
        assert not any(PIN in c for c in commands)
        assert PIN not in await everything_in(ivr.redis)
        assert [e["event"] for e in await events_of(ivr.redis, rid)] == ["input", "finished"]

    async def test_no_log_line_tells_the_pin_length(self, ivr: Ivr) -> None:
        """Issue 12: the length of a PIN is a secret too. Keyed in the call or before the
        greeting, a PIN call's log lines count no keys: dtmf_collected and ivr_started say
        only whether keys came."""
        await set_pin(ivr, "alice", PIN)
        with capture_logs() as logs:
            await run_call(ivr, "2a212121-2121-4121-8121-212121212121", PIN + "#",
                           marker=PIN_CALL)
            await run_call(ivr, "2b212121-2121-4121-8121-212121212121", marker=PIN_CALL,
                           variables={"CALLMFA_EARLY_KEYS": PIN + "#"})
        collected = [e for e in logs if e["event"] == "dtmf_collected"]
        started = [e for e in logs if e["event"] == "ivr_started"]
        assert len(collected) == 1
        assert len(started) == 2
        assert "keys" not in collected[0]
        assert [e["early_keys"] for e in started] == [False, True]
        assert not any(value == len(PIN) for e in logs for value in e.values()
                       if type(value) is int)
        assert not any(PIN in repr(e) for e in logs)

    async def test_old_hash_approves_then_is_peppered(self, start_ivr: StartIvr) -> None:
        """A PIN hash set before CALLMFA_PIN_PEPPER approves, and its success stores the
        peppered hash, which approves the next call; a wrong PIN upgrades nothing."""
        ivr = await start_ivr(pin_pepper="p" * 32)
        await set_pin(ivr, "alice", PIN)  # plain scrypt, as before the pepper
        old = (await pin_state(ivr.redis, "alice"))["hash"]
        await run_call(ivr, "2c212121-2121-4121-8121-212121212121", WRONG_PIN + "#",
                       WRONG_PIN + "#", marker=PIN_CALL)
        assert (await pin_state(ivr.redis, "alice"))["hash"] == old

        _, stored = await run_call(ivr, "2d212121-2121-4121-8121-212121212121", PIN + "#",
                                   marker=PIN_CALL)

        assert stored["outcome"] == "approved"
        state = await pin_state(ivr.redis, "alice")
        assert state["hash"].startswith(PEPPERED + "$")
        assert state["denials"] == "0"
        assert check_pin(PIN, state["hash"], b"p" * 32).ok
        _, again = await run_call(ivr, "2e212121-2121-4121-8121-212121212121", PIN + "#",
                                  marker=PIN_CALL)
        assert again["outcome"] == "approved"
        assert (await pin_state(ivr.redis, "alice"))["hash"] == state["hash"]

    async def test_wrong_pin_twice_is_denied_and_counted(self, ivr: Ivr) -> None:
        """A wrong PIN on both attempts: 'wrong code' then the PIN prompt again, then
        denied/wrong_code; the denial counts toward the lockout."""
        await set_pin(ivr, "alice", PIN)
        rid = "22212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(
            ivr, rid, WRONG_PIN + "#", WRONG_PIN + "#", marker=PIN_CALL
        )

        assert (stored["outcome"], stored["detail"]) == ("denied", "wrong_code")
        assert commands == [
            *PREAMBLE, GET_PIN, GET_PIN_AGAIN, playback("denied"), "HANGUP",
        ]
        assert (await pin_state(ivr.redis, "alice"))["denials"] == "1"

    async def test_wrong_then_right_pin_approves_and_clears_denials(self, ivr: Ivr) -> None:
        """After a denied call, a call with a wrong then the right PIN approves, and the
        user's denial count is back to 0."""
        await set_pin(ivr, "alice", PIN)
        await run_call(ivr, "23212121-2121-4121-8121-212121212121",
                       WRONG_PIN + "#", WRONG_PIN + "#", marker=PIN_CALL)
        assert (await pin_state(ivr.redis, "alice"))["denials"] == "1"

        _, stored = await run_call(ivr, "24212121-2121-4121-8121-212121212121",
                                   WRONG_PIN + "#", PIN + "#", marker=PIN_CALL)

        assert stored["outcome"] == "approved"
        assert (await pin_state(ivr.redis, "alice"))["denials"] == "0"

    async def test_denied_calls_lock_the_user_out_until_unlocked(
        self, start_ivr: StartIvr
    ) -> None:
        """After pin_lockout_after (2) denied calls even the right PIN gets locked_out,
        with the lockout prompt and no PIN prompt; `callmfa pin unlock` lets them in."""
        ivr = await start_ivr(pin_lockout_after=2)
        await set_pin(ivr, "alice", PIN)
        for n in (1, 2):
            _, stored = await run_call(ivr, f"2521212{n}-2121-4121-8121-212121212121",
                                       WRONG_PIN + "#", WRONG_PIN + "#", marker=PIN_CALL)
            assert stored["outcome"] == "denied"

        commands, stored = await run_call(
            ivr, "26212121-2121-4121-8121-212121212121", marker=PIN_CALL
        )

        assert (stored["outcome"], stored["detail"]) == ("locked_out", None)
        assert commands == [*PREAMBLE, playback("locked_out"), "HANGUP"]
        assert await PinStore.for_settings(ivr.redis, ivr.settings).reset("alice")
        _, stored = await run_call(
            ivr, "27212121-2121-4121-8121-212121212121", PIN + "#", marker=PIN_CALL
        )
        assert stored["outcome"] == "approved"

    async def test_no_pin_set_is_error_no_pin(self, ivr: Ivr) -> None:
        """A pin call for a user with no PIN is never approved: error/no_pin, the sorry
        prompt, no PIN prompt."""
        rid = "28212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, marker=PIN_CALL)

        assert (stored["outcome"], stored["detail"]) == ("error", "no_pin")
        assert commands == [*PREAMBLE, playback("failed"), "HANGUP"]

    async def test_zero_pound_reports_fraud(self, ivr: Ivr) -> None:
        """'0#' at the PIN prompt reports fraud, as in the standard mode; no denial."""
        await set_pin(ivr, "alice", PIN)
        rid = "29212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, "0#", marker=PIN_CALL)

        assert stored["outcome"] == "fraud_reported"
        assert commands[-2:] == [playback("fraud_reported"), "HANGUP"]
        assert (await pin_state(ivr.redis, "alice"))["denials"] == "0"

    async def test_short_pin_then_silence_is_no_input(self, ivr: Ivr) -> None:
        """Keys too short to be a PIN get the 'not valid' prompt, not a check; then
        silence: no_input/invalid_input, and no denial (nothing was checked)."""
        await set_pin(ivr, "alice", PIN)
        rid = "2a212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, "12#", "", marker=PIN_CALL)

        assert (stored["outcome"], stored["detail"]) == ("no_input", "invalid_input")
        assert commands == [*PREAMBLE, GET_PIN, GET_PIN_RETRY, playback("failed"),
                            "HANGUP"]
        assert (await pin_state(ivr.redis, "alice"))["denials"] == "0"

    async def test_hang_up_at_the_pin_prompt(self, ivr: Ivr) -> None:
        """A hang-up during GET DATA (result -1) stores hung_up. One NOOP tells it from a
        missing file (same -1): Asterisk announces a hang-up with HANGUP; nothing more."""
        await set_pin(ivr, "alice", PIN)
        rid = "2b212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, HANG_UP, marker=PIN_CALL)

        assert (stored["outcome"], stored["input_at"]) == ("hung_up", None)
        assert commands == [*PREAMBLE, GET_PIN, "NOOP"]

    async def test_hang_up_during_amd_in_pin_mode(self, ivr: Ivr) -> None:
        """The IVR run on the dead channel (h extension) gets 511 to GET DATA: hung_up."""
        await set_pin(ivr, "alice", PIN)
        rid = "2c212121-2121-4121-8121-212121212121"

        commands, stored = await run_call(ivr, rid, amd="HANGUP", dead=True, marker=PIN_CALL)

        assert stored["outcome"] == "hung_up"
        assert commands == [*PREAMBLE, GET_PIN]

    async def test_wrong_pin_then_hang_up_counts_toward_the_lockout(
        self, start_ivr: StartIvr
    ) -> None:
        """A caller who keys a wrong PIN and hangs up before the last attempt still uses up
        a guess: after pin_lockout_after (2) such calls the user is locked out."""
        ivr = await start_ivr(pin_lockout_after=2)
        await set_pin(ivr, "alice", PIN)
        for n in (1, 2):
            _, stored = await run_call(ivr, f"2d21212{n}-2121-4121-8121-212121212121",
                                       WRONG_PIN + "#", HANG_UP, marker=PIN_CALL)
            assert stored["outcome"] == "hung_up"

        _, stored = await run_call(
            ivr, "2e212121-2121-4121-8121-212121212121", PIN + "#", marker=PIN_CALL
        )

        assert stored["outcome"] == "locked_out"


class TestMatchMode:
    async def test_right_number_approves(self, ivr: Ivr) -> None:
        """The number shown on the sign-in page, keyed then '#', approves (checked against
        the marker's match_hash), collected with GET DATA."""
        rid = "31313131-3131-4131-8131-313131313131"

        commands, stored = await run_call(ivr, rid, MATCH + "#", marker=match_call())

        assert (stored["outcome"], stored["detail"]) == ("approved", None)
        assert commands == [*PREAMBLE, GET_MATCH, playback("approved"), "HANGUP"]

    async def test_wrong_number_is_denied_at_once(self, ivr: Ivr) -> None:
        """A wrong number is denied/wrong_code at once: a guess gets no second try."""
        rid = "32313131-3131-4131-8131-313131313131"

        commands, stored = await run_call(ivr, rid, "17#", marker=match_call())

        assert (stored["outcome"], stored["detail"]) == ("denied", "wrong_code")
        assert commands == [*PREAMBLE, GET_MATCH, playback("denied"), "HANGUP"]

    async def test_malformed_number_gets_a_second_prompt(self, ivr: Ivr) -> None:
        """Keys that cannot be the number (three digits) are not a guess: the 'not valid'
        prompt and the match prompt again, then the right number approves."""
        rid = "33313131-3131-4131-8131-313131313131"

        commands, stored = await run_call(ivr, rid, "421#", MATCH + "#", marker=match_call())

        assert stored["outcome"] == "approved"
        assert commands == [*PREAMBLE, GET_MATCH, GET_MATCH_RETRY,
                            playback("approved"), "HANGUP"]

    async def test_marker_without_match_hash_is_error_no_code(self, ivr: Ivr) -> None:
        """A match call whose marker lost its match_hash is never approved: error/no_code,
        no prompt for keys."""
        rid = "34313131-3131-4131-8131-313131313131"

        commands, stored = await run_call(ivr, rid, marker={"mode": "match"})

        assert (stored["outcome"], stored["detail"]) == ("error", "no_code")
        assert commands == [*PREAMBLE, playback("failed"), "HANGUP"]

    async def test_french_match_call(self, ivr: Ivr) -> None:
        """A French match call sets the channel's language to fr before the prompt."""
        rid = "35313131-3131-4131-8131-313131313131"

        commands, stored = await run_call(
            ivr, rid, MATCH + "#", marker={**match_call(), "lang": "fr-CA"}
        )

        assert stored["outcome"] == "approved"
        assert commands[:3] == [PREAMBLE[0], "SET VARIABLE CHANNEL(language) fr", GET_MATCH]

    async def test_missing_prompt_is_an_error_not_a_hang_up(self, ivr: Ivr) -> None:
        """A missing match prompt (prompts not installed; the caller is still on the line)
        is an error, as a missing prompt is in the standard mode, not a hang-up."""
        rid = "36313131-3131-4131-8131-313131313131"

        _, stored = await run_call(
            ivr, rid, marker=match_call(), missing=frozenset({"callmfa/match_greeting"})
        )

        assert stored["outcome"] == "error"
