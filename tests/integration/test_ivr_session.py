"""The verification IVR end to end over FastAGI and real Redis, with a scripted Asterisk.

The fake Asterisk (fake_asterisk.py) sends the AGI headers of a verification call and
answers every command line the way Asterisk 22 does; the tests check what the sign-in
service would see in Redis (the result key, the results channel, the events stream) and
the commands the IVR sent. These are the standard mode, machine detection, languages,
hang-ups and errors; the pin and match modes are in test_ivr_modes.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog
import structlog.testing
from redis.exceptions import ConnectionError as RedisConnectionError

from ivr.domain.outcome import Outcome, OutcomeRecord, parse_iso
from ivr.storage.guard import Guard
from ivr.storage.store import RESULTS_CHANNEL

from .conftest import COMMAND_TIMEOUT_S, Ivr, StartIvr
from .fake_asterisk import (
    CALL_TOKEN,
    HANG_UP,
    FakeAsterisk,
    ReadStatus,
    Reply,
    events_of,
    outcome_json,
    place_call,
    run_call,
)

SET_LANGUAGE = "SET VARIABLE CHANNEL(language) en"
GET_AMD = ("GET FULL VARIABLE ${CALLMFA_TOKEN}|${AMDSTATUS}|${AMDCAUSE}|${CALLMFA_EARLY_KEYS}|"
    "|${CALLMFA_COLLECT}")
PREAMBLE = [GET_AMD, SET_LANGUAGE]
GREETING = "callmfa/greeting"
RETRY_GREETING = f"callmfa/retry&{GREETING}"
READ = "EXEC Read CALLMFA_KEYS,{files},4,,1,0.5"
GET_KEYS = "GET FULL VARIABLE ${READSTATUS}:${CALLMFA_KEYS}:${CALLMFA_EARLY_KEYS}"

# What the caller does at one prompt: the keys pressed ('#' ends them), or nothing.
PRESS_POUND = "#"
PRESS_ZERO_POUND = "0#"
PRESS_WRONG = "5#"
SILENCE = ""


def playback(prompt: str) -> str:
    return f"EXEC Playback callmfa/{prompt}"


class TestApproved:
    async def test_pound_approves(self, ivr: Ivr) -> None:
        """'#' stores outcome approved for the marker's user, with the times set; the IVR
        sets the language, reads AMD's verdict, plays our greeting and our goodbye."""
        rid = "11111111-1111-4111-8111-111111111111"
        before = time.time()

        commands, stored = await run_call(ivr, rid, PRESS_POUND)

        assert commands == [
            *PREAMBLE, READ.format(files=GREETING), GET_KEYS, playback("approved"), "HANGUP",
        ]
        assert stored["id"] == rid
        assert stored["outcome"] == "approved"
        assert stored["user"] == "alice"
        assert stored["detail"] is None
        record = OutcomeRecord.from_json(json.dumps(stored))
        assert record.input_at is not None
        assert record.answered_at is not None
        assert record.finished_at is not None
        assert record.requested_at is not None
        assert record.requested_at < before - 4 < record.answered_at
        assert record.answered_at <= record.input_at <= record.finished_at <= time.time()

    async def test_outcome_is_stored_before_the_goodbye(self, ivr: Ivr) -> None:
        """The result key holds 'approved' by the time the goodbye Playback is sent."""
        rid = "22222222-2222-4222-8222-222222222222"
        at_playback: list[object] = []

        async def check(command: str) -> None:
            at_playback.append(await outcome_json(ivr.redis, rid))

        await run_call(ivr, rid, PRESS_POUND, on_playback=check)

        assert len(at_playback) == 1
        assert isinstance(at_playback[0], dict)
        assert at_playback[0]["outcome"] == "approved"

    async def test_outcome_is_published_and_finished_event_added(self, ivr: Ivr) -> None:
        """The outcome goes out on callmfa:results (same JSON as the key) and the events
        stream gets 'input' then 'finished' with the outcome."""
        rid = "33333333-3333-4333-8333-333333333333"
        pubsub = ivr.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(RESULTS_CHANNEL)
        try:
            _, stored = await run_call(ivr, rid, PRESS_POUND)
            message = None
            deadline = time.monotonic() + 3
            while message is None and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=0.5)
        finally:
            await pubsub.aclose()

        assert message is not None, "nothing published on callmfa:results"
        assert json.loads(message["data"]) == stored
        events = await events_of(ivr.redis, rid)
        assert [e["event"] for e in events] == ["input", "finished"]
        assert events[-1]["outcome"] == "approved"
        assert parse_iso(events[-1]["at"]) <= time.time()


class TestOtherKeys:
    async def test_zero_pound_reports_fraud(self, ivr: Ivr) -> None:
        """'0#' stores fraud_reported and plays the fraud goodbye."""
        rid = "44444444-4444-4444-8444-444444444444"

        commands, stored = await run_call(ivr, rid, PRESS_ZERO_POUND)

        assert stored["outcome"] == "fraud_reported"
        assert stored["input_at"] is not None
        assert commands[-2:] == [playback("fraud_reported"), "HANGUP"]

    async def test_silence_twice_is_no_input_timeout(self, ivr: Ivr) -> None:
        """Two silent prompts (max_attempts=2) store no_input/timeout, no input time."""
        rid = "55555555-5555-4555-8555-555555555555"

        commands, stored = await run_call(ivr, rid, SILENCE, SILENCE)

        assert (stored["outcome"], stored["detail"]) == ("no_input", "timeout")
        assert stored["input_at"] is None
        assert commands == [
            *PREAMBLE, READ.format(files=GREETING), GET_KEYS, READ.format(files=GREETING),
            GET_KEYS, playback("failed"), "HANGUP",
        ]

    async def test_wrong_key_twice_is_no_input_invalid(self, ivr: Ivr) -> None:
        """A wrong key twice stores no_input/invalid_input; the retry prompt comes first."""
        rid = "66666666-6666-4666-8666-666666666666"

        commands, stored = await run_call(ivr, rid, PRESS_WRONG, PRESS_WRONG)

        assert (stored["outcome"], stored["detail"]) == ("no_input", "invalid_input")
        assert commands[4] == READ.format(files=RETRY_GREETING)
        assert commands[-2:] == [playback("failed"), "HANGUP"]

    async def test_silence_then_pound_approves(self, ivr: Ivr) -> None:
        """A silent first prompt and '#' at the second approves."""
        rid = "77777777-7777-4777-8777-777777777777"

        _, stored = await run_call(ivr, rid, SILENCE, PRESS_POUND)

        assert stored["outcome"] == "approved"


class TestMachineDetection:
    async def test_machine_is_machine_answered_without_a_prompt(self, ivr: Ivr) -> None:
        """AMDSTATUS=MACHINE stores machine_answered before any prompt: nothing is played
        to the voicemail, no input time, and the IVR hangs up."""
        rid = "16161616-1616-4616-8616-161616161616"

        commands, stored = await run_call(ivr, rid, amd="MACHINE")

        assert (stored["outcome"], stored["detail"]) == ("machine_answered", None)
        assert stored["input_at"] is None
        assert commands == [*PREAMBLE, "HANGUP"]
        assert [e["event"] for e in await events_of(ivr.redis, rid)] == ["finished"]

    @pytest.mark.parametrize("amd", ["HUMAN", "NOTSURE", ""])
    async def test_person_unsure_or_amd_off_gets_the_greeting(self, ivr: Ivr, amd: str) -> None:
        """HUMAN, NOTSURE and no AMDSTATUS at all (CALLMFA_AMD=off) play the greeting, and
        '#' approves."""
        rid = "17171717-1717-4717-8717-171717171717"

        commands, stored = await run_call(ivr, rid, PRESS_POUND, amd=amd)

        assert stored["outcome"] == "approved"
        assert commands[2] == READ.format(files=GREETING)

    async def test_pound_before_the_greeting_approves(self, ivr: Ivr) -> None:
        """'#' pressed while AMD listened (kept by the dialplan's StoreDTMF): approved
        without the greeting, with its input time; only the goodbye is played."""
        rid = "17171717-1717-4717-8717-171717171718"

        commands, stored = await run_call(
            ivr, rid, variables={"CALLMFA_EARLY_KEYS": "#"}
        )

        assert (stored["outcome"], stored["input_at"] is not None) == ("approved", True)
        assert commands == [*PREAMBLE, playback("approved"), "HANGUP"]

    async def test_zero_before_the_greeting_starts_the_answer(self, ivr: Ivr) -> None:
        """'0' before the greeting and '#' during it: fraud_reported, not approved."""
        rid = "17171717-1717-4717-8717-171717171719"

        _, stored = await run_call(
            ivr, rid, PRESS_POUND, variables={"CALLMFA_EARLY_KEYS": "0"}
        )

        assert stored["outcome"] == "fraud_reported"

    async def test_machine_wins_over_a_pound_before_the_greeting(self, ivr: Ivr) -> None:
        """A voicemail greeting with a '#' tone in it: machine_answered, never approved, and
        no input recorded."""
        rid = "17171717-1717-4717-8717-17171717171a"

        _, stored = await run_call(
            ivr, rid, amd="MACHINE", variables={"CALLMFA_EARLY_KEYS": "#"}
        )

        assert (stored["outcome"], stored["input_at"]) == ("machine_answered", None)
        assert "input" not in [e["event"] for e in await events_of(ivr.redis, rid)]

    async def test_silent_person_who_keyed_is_asked_again(self, ivr: Ivr) -> None:
        """MACHINE with AMDCAUSE INITIALSILENCE and a '#' kept while AMD listened (a person
        on mute): the greeting is played and a fresh '#' approves; without one, no_input."""
        silent = {"CALLMFA_EARLY_KEYS": "#", "AMDCAUSE": "INITIALSILENCE-2500-2500"}
        rid = "17171717-1717-4717-8717-17171717171d"
        commands, stored = await run_call(ivr, rid, PRESS_POUND, amd="MACHINE",
                                          variables=dict(silent))
        assert stored["outcome"] == "approved"
        assert READ.format(files=GREETING) in commands

        rid = "17171717-1717-4717-8717-17171717171e"
        _, stored = await run_call(ivr, rid, "", "", amd="MACHINE", variables=dict(silent))
        assert stored["outcome"] == "no_input"

    async def test_wrong_answer_before_the_greeting_is_an_input_at_once(
        self, ivr: Ivr
    ) -> None:
        """'5#' before the greeting: a wrong first answer, its 'input' event written before
        the "wrong key" prompt; '#' then approves."""
        rid = "17171717-1717-4717-8717-17171717171b"

        commands, stored = await run_call(
            ivr, rid, PRESS_POUND, variables={"CALLMFA_EARLY_KEYS": "5#"}
        )

        assert stored["outcome"] == "approved"
        assert commands[2] == READ.format(files="callmfa/retry&callmfa/greeting")
        events = [e["event"] for e in await events_of(ivr.redis, rid)]
        assert events.count("input") == 2
        assert events[-1] == "finished"

    async def test_hang_up_announced_with_the_early_keys_drops_them(self, ivr: Ivr) -> None:
        """Asterisk says HANGUP before the probe's reply: the '#' before it does not
        approve; the call is hung_up."""
        rid = "17171717-1717-4717-8717-17171717171c"

        def gone(command: str) -> Reply | bool:
            if command.startswith("GET FULL VARIABLE ${CALLMFA_TOKEN}"):
                return f"HANGUP\n200 result=1 ({CALL_TOKEN}|HUMAN||#|)\n".encode()
            return False

        _, stored = await run_call(
            ivr, rid, on_command=gone, variables={"CALLMFA_EARLY_KEYS": "#"}
        )

        assert stored["outcome"] == "hung_up"


class TestKeysBetweenCommands:
    """res_agi drops the keys that come between two AGI commands; StoreDTMF kept them, and
    the IVR reads what it kept with each collection's result: no key is lost."""

    @pytest.mark.parametrize(("keys", "outcome"), [
        ("5##", "approved"), ("5#0#", "fraud_reported"), ("5#5##", "no_input"),
    ])
    async def test_keys_after_the_collection_ended_count(
        self, ivr: Ivr, keys: str, outcome: str
    ) -> None:
        """A wrong answer, then the next answers right after it (before the next Read
        started): they count, in order, with no second prompt (two attempts here)."""
        rid = f"1e1e1e1e-1e1e-4e1e-8e1e-1e1e1e1e1e{len(keys)}{outcome[0]}"

        commands, stored = await run_call(ivr, rid, keys)

        assert stored["outcome"] == outcome
        assert sum(c.startswith("EXEC Read") for c in commands) == 1

    async def test_a_key_before_the_first_collection_counts(self, ivr: Ivr) -> None:
        """'#' pressed after the probe read the early keys and before the greeting's Read
        started (lost by res_agi): approved, though the Read itself heard nothing."""
        rid = "1e1e1e1e-1e1e-4e1e-8e1e-1e1e1e1e1e1f"

        def gap(command: str) -> Reply | bool:
            if command.startswith("EXEC Read"):
                asterisk.variables["CALLMFA_EARLY_KEYS"] = "#"
            return False

        await place_call(ivr.store, rid)
        asterisk = FakeAsterisk([""], on_command=gap)
        await asterisk.call(ivr.port, rid)
        await ivr.idle()

        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "approved"

    async def test_without_store_dtmf_the_collection_decides(self, ivr: Ivr) -> None:
        """No app_dtmfstore (nothing kept): what Read() caught decides, as before; the key
        after the '#' is lost and the retry prompt asks again."""
        rid = "1e1e1e1e-1e1e-4e1e-8e1e-1e1e1e1e1e20"

        commands, stored = await run_call(ivr, rid, "5##", "#", store_dtmf=False)

        assert stored["outcome"] == "approved"
        assert sum(c.startswith("EXEC Read") for c in commands) == 2


class TestLanguage:
    @pytest.mark.parametrize(("lang", "channel"), [
        ("fr", "fr"), ("de-AT", "de"), ("es_ES", "es"), ("en-GB", "en"), ("pt-BR", "en"),
    ])
    async def test_request_language_sets_the_channel_language(
        self, ivr: Ivr, lang: str, channel: str
    ) -> None:
        """The request's lang (reduced to a catalogue language; unknown ones to en) becomes
        the channel's language before the first prompt, so that Asterisk plays
        sounds/<lang>/callmfa/*; the prompt names stay the same."""
        rid = "18181818-1818-4818-8818-181818181818"

        commands, stored = await run_call(ivr, rid, PRESS_POUND, marker={"lang": lang})

        assert stored["outcome"] == "approved"
        assert commands == [
            GET_AMD, f"SET VARIABLE CHANNEL(language) {channel}", READ.format(files=GREETING),
            GET_KEYS, playback("approved"), "HANGUP",
        ]

    async def test_admin_recording_replaces_ours(self, start_ivr: StartIvr) -> None:
        """With CALLMFA_PROMPT_OVERRIDE_DIR, the IVR asks Asterisk (STAT) which recordings
        exist for the call's language; an existing <dir>/fr/greeting.wav is played instead
        of ours, and prompts without a French recording (even with a German one) stay
        ours."""
        ivr = await start_ivr(prompt_override_dir="/srv/prompts")
        rid = "19191919-1919-4919-8919-191919191919"

        commands, stored = await run_call(
            ivr, rid, PRESS_POUND, marker={"lang": "fr"},
            files=frozenset({"/srv/prompts/fr/greeting.wav", "/srv/prompts/de/approved.wav"}),
        )

        assert stored["outcome"] == "approved"
        probe = commands[0]
        head = GET_AMD.removesuffix("|${CALLMFA_COLLECT}")
        assert probe.startswith(f"{head}${{STAT(e,/srv/prompts/fr/")
        assert probe.endswith("|${CALLMFA_COLLECT}")
        for prompt in ("greeting", "approved", "failed"):
            assert f"${{STAT(e,/srv/prompts/fr/{prompt}.wav)}}" in probe
        assert commands[2:] == [
            READ.format(files="/srv/prompts/fr/greeting"), GET_KEYS, playback("approved"),
            "HANGUP",
        ]

    async def test_no_override_dir_asks_no_stat(self, ivr: Ivr) -> None:
        """Without an override directory the AMD read carries no STAT probe."""
        rid = "1a1a1a1a-1a1a-4a1a-8a1a-1a1a1a1a1a1a"

        commands, _ = await run_call(ivr, rid, PRESS_POUND, marker={"lang": "de"})

        assert commands[0] == GET_AMD


class TestHangUp:
    @pytest.mark.parametrize("reply", [
        b"200 result=-1\nHANGUP\n", b"HANGUP\n200 result=-1\n", b"200 result=-1\n",
    ])
    async def test_hang_up_during_prompt(self, ivr: Ivr, reply: bytes) -> None:
        """'result=-1' to Read() (with Asterisk's HANGUP line after it, before it, or none)
        stores hung_up; no command follows before the IVR closes the session."""
        rid = "88888888-8888-4888-8888-888888888888"

        def gone(command: str) -> Reply | bool:
            return reply if command.startswith("EXEC Read") else False

        commands, stored = await run_call(ivr, rid, on_command=gone)

        assert stored["outcome"] == "hung_up"
        assert stored["input_at"] is None
        assert commands == [*PREAMBLE, READ.format(files=GREETING)]

    async def test_hang_up_at_the_second_prompt(self, ivr: Ivr) -> None:
        """Silence, then a hang-up during the repeated prompt, stores hung_up."""
        rid = "89898989-8989-4989-8989-898989898989"

        commands, stored = await run_call(ivr, rid, SILENCE, HANG_UP)

        assert stored["outcome"] == "hung_up"
        assert commands == [
            *PREAMBLE, READ.format(files=GREETING), GET_KEYS, READ.format(files=GREETING),
        ]

    async def test_hang_up_before_the_first_prompt(self, ivr: Ivr) -> None:
        """A HANGUP line ahead of the reply to SET VARIABLE (the caller hung up as AMD
        ended) stores hung_up, and the IVR sends nothing more."""
        rid = "1b1b1b1b-1b1b-4b1b-8b1b-1b1b1b1b1b1b"

        def gone(command: str) -> Reply | bool:
            return b"HANGUP\n200 result=1\n" if command.startswith("SET VARIABLE") else False

        commands, stored = await run_call(ivr, rid, on_command=gone)

        assert stored["outcome"] == "hung_up"
        assert commands == [GET_AMD, SET_LANGUAGE]

    async def test_hang_up_after_the_probe_drops_the_early_keys(self, ivr: Ivr) -> None:
        """The probe read a '#' kept before the greeting, then Asterisk says HANGUP (ahead
        of SET VARIABLE's reply): the '#' does not approve a call already hung up."""
        rid = "1b1b1b1b-1b1b-4b1b-8b1b-1b1b1b1b1b1c"

        def gone(command: str) -> Reply | bool:
            return b"HANGUP\n200 result=1\n" if command.startswith("SET VARIABLE") else False

        _, stored = await run_call(
            ivr, rid, on_command=gone, variables={"CALLMFA_EARLY_KEYS": "#"}
        )

        assert stored["outcome"] == "hung_up"

    async def test_hang_up_during_amd_runs_the_ivr_on_the_dead_channel(self, ivr: Ivr) -> None:
        """Hung up during AMD: the dialplan's h extension runs the IVR on the dead channel
        (AMDSTATUS=HANGUP, Read() answers -1); it stores hung_up."""
        rid = "1c1c1c1c-1c1c-4c1c-8c1c-1c1c1c1c1c1c"

        commands, stored = await run_call(ivr, rid, amd="HANGUP", dead=True)

        assert (stored["outcome"], stored["input_at"]) == ("hung_up", None)
        assert commands == [*PREAMBLE, READ.format(files=GREETING)]

    async def test_socket_closed_without_reply(self, ivr: Ivr) -> None:
        """The socket closing with no HANGUP first is Asterisk lost, not a hang-up.

        (A caller's hang-up always reaches the IVR as HANGUP or result=-1 first.)
        """
        rid = "99999999-9999-4999-8999-999999999999"

        def close_on_read(command: str) -> Reply | bool:
            return None if command.startswith("EXEC Read") else False

        _, stored = await run_call(ivr, rid, on_command=close_on_read)

        assert (stored["outcome"], stored["detail"]) == ("error", "asterisk_lost")

    async def test_dead_channel_reply_is_a_hang_up(self, ivr: Ivr) -> None:
        """'511 Command Not Permitted on a dead channel' counts as a hang-up."""
        rid = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"

        def dead(command: str) -> Reply | bool:
            if command.startswith("EXEC Read"):
                return b"511 Command Not Permitted on a dead channel or intercept routine\n"
            return False

        commands, stored = await run_call(ivr, rid, on_command=dead)

        assert stored["outcome"] == "hung_up"
        assert commands == [*PREAMBLE, READ.format(files=GREETING)]

    async def test_hang_up_during_goodbye_keeps_the_outcome(self, ivr: Ivr) -> None:
        """Hanging up during the goodbye leaves 'approved' and sends no HANGUP."""
        rid = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

        def gone(command: str) -> Reply | bool:
            return b"200 result=-1\nHANGUP\n" if command.startswith("EXEC Playback") else False

        commands, stored = await run_call(ivr, rid, PRESS_POUND, on_command=gone)

        assert stored["outcome"] == "approved"
        assert commands[-1] == playback("approved")

    async def test_read_status_hangup_is_a_hang_up(self, ivr: Ivr) -> None:
        """READSTATUS=HANGUP (Read() ended by the hang-up), even with result 0, stores
        hung_up and the IVR sends nothing more."""
        rid = "abababab-abab-4bab-8bab-abababababab"

        commands, stored = await run_call(ivr, rid, ReadStatus("HANGUP"))

        assert stored["outcome"] == "hung_up"
        assert commands == [*PREAMBLE, READ.format(files=GREETING), GET_KEYS]

    async def test_pound_then_immediate_hang_up_is_approved(self, ivr: Ivr) -> None:
        """'#' and a hang-up right after (Asterisk's HANGUP line arrives before the
        variable's reply): approved stands, and no goodbye is sent to a dead channel."""
        rid = "cdcdcdcd-cdcd-4dcd-8dcd-cdcdcdcdcdcd"

        def pound_then_gone(command: str) -> Reply | bool:
            return b"HANGUP\n200 result=1 (OK:)\n" if command == GET_KEYS else False

        commands, stored = await run_call(ivr, rid, PRESS_POUND, on_command=pound_then_gone)

        assert stored["outcome"] == "approved"
        assert commands == [*PREAMBLE, READ.format(files=GREETING), GET_KEYS]

    async def test_connection_reset_is_asterisk_lost(self, ivr: Ivr) -> None:
        """A connection reset (RST) while a command runs: error/asterisk_lost, as for a
        socket that closes without a hang-up."""
        rid = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
        await place_call(ivr.store, rid)
        asterisk = FakeAsterisk(
            on_command=lambda c: None if c.startswith("EXEC Read") else False, reset=True
        )

        await asterisk.call(ivr.port, rid)
        await ivr.idle()

        stored = await outcome_json(ivr.redis, rid) or {}
        assert (stored.get("outcome"), stored.get("detail")) == ("error", "asterisk_lost")


class TestErrors:
    async def test_asterisk_error_reply_is_error_agi_failed(self, ivr: Ivr) -> None:
        """A 510 reply to Read() stores error/agi_failed and the IVR hangs up."""
        rid = "dddddddd-dddd-4ddd-8ddd-dddddddddddd"

        def refuse(command: str) -> Reply | bool:
            if command.startswith("EXEC Read"):
                return b"510 Invalid or unknown command\n"
            return False

        commands, stored = await run_call(ivr, rid, on_command=refuse)

        assert (stored["outcome"], stored["detail"]) == ("error", "agi_failed")
        assert commands == [*PREAMBLE, READ.format(files=GREETING), "HANGUP"]

    async def test_error_reply_before_the_first_prompt(self, ivr: Ivr) -> None:
        """A 510 reply to the language's SET VARIABLE stores error/agi_failed; no prompt is
        played and the IVR hangs up."""
        rid = "1d1d1d1d-1d1d-4d1d-8d1d-1d1d1d1d1d1d"

        def refuse(command: str) -> Reply | bool:
            return b"510 Invalid or unknown command\n" if command == SET_LANGUAGE else False

        commands, stored = await run_call(ivr, rid, on_command=refuse)

        assert (stored["outcome"], stored["detail"]) == ("error", "agi_failed")
        assert commands == [GET_AMD, SET_LANGUAGE, "HANGUP"]

    async def test_usage_reply_is_error_agi_failed(self, ivr: Ivr) -> None:
        """A multi-line 520 usage reply is read to its end and stores error/agi_failed."""
        rid = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee"

        def usage(command: str) -> Reply | bool:
            if command == GET_KEYS:
                return b"520-Invalid command syntax.  Proper usage follows:\nUsage: ...\n" \
                    b"520 End of proper usage.\n"
            return False

        commands, stored = await run_call(ivr, rid, PRESS_POUND, on_command=usage)

        assert (stored["outcome"], stored["detail"]) == ("error", "agi_failed")
        assert commands[-1] == "HANGUP"

    async def test_read_error_status_is_error_agi_failed(self, ivr: Ivr) -> None:
        """READSTATUS=ERROR (here: the greeting's sound file is missing) stores
        error/agi_failed and the IVR hangs up."""
        rid = "ffffffff-ffff-4fff-8fff-ffffffffffff"

        commands, stored = await run_call(ivr, rid, missing=frozenset({GREETING}))

        assert (stored["outcome"], stored["detail"]) == ("error", "agi_failed")
        assert commands == [*PREAMBLE, READ.format(files=GREETING), GET_KEYS, "HANGUP"]

    async def test_no_reply_within_command_timeout_is_an_error(self, ivr: Ivr) -> None:
        """Asterisk not answering a command within agi_command_timeout_s ends the call as
        error (stored by the IVR) and the IVR hangs up."""
        rid = "12121212-1212-4212-8212-121212121212"
        await place_call(ivr.store, rid)
        silent_read: list[str] = []

        def never(command: str) -> Reply | bool:
            if command.startswith("EXEC Read") and not silent_read:
                silent_read.append(command)
                return b""  # nothing: let the IVR's command timeout expire
            return False

        commands = await FakeAsterisk(on_command=never).call(
            ivr.port, rid, timeout_s=COMMAND_TIMEOUT_S + 3
        )
        await ivr.idle()

        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "error"
        assert commands[-1] == "HANGUP"


    async def test_a_hangup_unanswered_after_a_timeout_ends_the_session_quietly(
        self, ivr: Ivr
    ) -> None:
        """After a command's timeout the IVR's HANGUP went unanswered too: it waited a
        second command timeout and its AgiError reached the server's boundary
        (fastagi_session_failed, a traceback), the outcome long stored (found in review)."""
        rid = "12121212-1212-4212-8212-121212121213"
        await place_call(ivr.store, rid)

        def never(command: str) -> Reply | bool:
            return b"" if command.startswith(("EXEC Read", "HANGUP")) else False

        with structlog.testing.capture_logs() as logs:
            commands = await FakeAsterisk(on_command=never).call(
                ivr.port, rid, timeout_s=2 * COMMAND_TIMEOUT_S + 3)
            await ivr.idle()
        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "error"
        assert commands[-1] == "HANGUP"
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["ivr_agi_failed"]

class TestUnknownAndDuplicates:
    async def test_id_from_uniqueid_without_argument(self, ivr: Ivr) -> None:
        """Without agi_arg_1 the IVR takes the id from agi_uniqueid (the ChannelId the
        originator set)."""
        rid = "14141414-1414-4414-8414-141414141414"
        await place_call(ivr.store, rid)

        await FakeAsterisk([PRESS_POUND]).call(ivr.port, rid, with_arg=False)
        await ivr.idle()

        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "approved"

    async def test_second_outcome_is_not_stored(self, ivr: Ivr) -> None:
        """Once an id has an outcome, neither store_outcome nor a second IVR session for the
        same id replaces it, and nothing more is published."""
        rid = "15151515-1515-4515-8515-151515151515"
        _, first = await run_call(ivr, rid, PRESS_POUND)

        again = OutcomeRecord(id=rid, user="alice", outcome=Outcome.HUNG_UP,
                              finished_at=time.time())
        assert await ivr.store.store_outcome(again) is False
        await FakeAsterisk([PRESS_ZERO_POUND]).call(ivr.port, rid)
        await ivr.idle()

        assert await outcome_json(ivr.redis, rid) == first
        finished = [e for e in await events_of(ivr.redis, rid) if e["event"] == "finished"]
        assert len(finished) == 1
        assert ivr.refused == ["already_claimed"]


class TestRedisStall:
    async def test_a_fraud_report_in_a_redis_blip_still_blocks(
        self, ivr: Ivr, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The block's write meets a lost connection: retried, as the outcome's is (the
        session failed, with no block and no outcome; found in review)."""
        rid = "57575757-5757-4575-8575-575757575757"
        apply, tries = Guard.apply, []

        async def blip(guard: Guard, *args: Any) -> bool:
            tries.append(1)
            if len(tries) == 1:
                raise RedisConnectionError("Connection reset by peer")
            return await apply(guard, *args)

        monkeypatch.setattr(Guard, "apply", blip)
        _, stored = await run_call(ivr, rid, PRESS_ZERO_POUND)

        assert stored["outcome"] == "fraud_reported"
        assert len(tries) == 2
        assert await ivr.redis.zscore("callmfa:blocked", "alice") is not None

    async def test_silence_after_a_redis_stall_is_an_error_not_no_input(
        self, ivr: Ivr, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The IVR's first reads waited over a second (a Redis failover): keys pressed
        meanwhile were dropped by Asterisk, so silence ends error/redis_unavailable."""
        rid = "56565656-5656-4565-8565-565656565656"
        read = ivr.store.call_info

        async def slow(call_id: str) -> dict[str, str]:
            await asyncio.sleep(1.2)
            return await read(call_id)

        monkeypatch.setattr(ivr.store, "call_info", slow)
        _, stored = await run_call(ivr, rid, SILENCE, SILENCE)

        assert (stored["outcome"], stored["detail"]) == ("error", "redis_unavailable")
