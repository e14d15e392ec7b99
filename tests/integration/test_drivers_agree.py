"""The FastAGI IVR and the classic AGI driver run the same flow: the same caller, scripted
once (fake_asterisk.py), gets the same outcome and hears the same prompts from both."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ..conftest import RedisServer
from .classic_asterisk import run_classic
from .conftest import Ivr
from .fake_asterisk import HANG_UP, Action, FakeAsterisk, outcome_json, place_call, run_call
from .test_ivr_modes import PIN, match_call, set_pin
from .test_ivr_otp import otp_entry


async def both(
    ivr: Ivr, redis_server: RedisServer, rid: str, keys: list[Action],
    marker: dict[str, str] | None = None, **options: Any,
) -> tuple[tuple[list[str], dict[str, Any]], tuple[list[str], dict[str, Any]]]:
    """(commands, outcome) of the FastAGI IVR, then of the classic driver, for one script."""
    fast = await run_call(ivr, rid, *keys, marker=marker, **copy.deepcopy(options))
    classic_rid = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    await place_call(ivr.store, classic_rid, **(marker or {}))
    commands = run_classic(redis_server.url, ivr.settings, classic_rid,
                           FakeAsterisk(list(keys), **copy.deepcopy(options)))
    stored = await outcome_json(ivr.redis, classic_rid)
    assert stored is not None, f"no classic outcome; commands were {commands}"
    return fast, (commands, stored)


class TestSecretModesSilence:
    @pytest.mark.parametrize("marker", [{"mode": "pin"}, match_call()], ids=["pin", "match"])
    async def test_silence_is_a_timeout_in_both(
        self, ivr: Ivr, redis_server: RedisServer, marker: dict[str, str],
    ) -> None:
        """A caller who keys nothing at a PIN or match prompt (a voicemail with AMD off):
        ``no_input``/``timeout``, the greeting played again (not the retry prompt), from
        both drivers. pyst2 parses GET DATA's ``200 result= (timeout)`` as an empty
        result with no data, the same as ``#`` alone: the classic driver took the silence
        for a wrong key (``invalid_input``, "please try again")."""
        await set_pin(ivr, "alice", PIN)
        (fast_cmds, fast), (classic_cmds, classic) = await both(
            ivr, redis_server, "d1d1d1d1-0000-4000-8000-000000000002", ["", ""], marker)
        assert (fast["outcome"], fast["detail"]) == ("no_input", "timeout")
        assert (classic["outcome"], classic["detail"]) == ("no_input", "timeout")
        gets = [c for c in fast_cmds if c.startswith("GET DATA")]
        assert [c for c in classic_cmds if c.startswith("GET DATA")] == gets

    async def test_pound_alone_is_a_wrong_key_in_both(
        self, ivr: Ivr, redis_server: RedisServer,
    ) -> None:
        """'#' with no PIN before it is a wrong answer, in both drivers."""
        await set_pin(ivr, "alice", PIN)
        (_, fast), (_, classic) = await both(
            ivr, redis_server, "d1d1d1d1-0000-4000-8000-000000000004", ["#", "#"],
            {"mode": "pin"})
        assert (fast["outcome"], fast["detail"]) == ("no_input", "invalid_input")
        assert (classic["outcome"], classic["detail"]) == ("no_input", "invalid_input")


class TestMissingPrompt:
    """GET DATA and STREAM FILE answer ``200 result=-1`` for a file that is not installed as
    for a hang-up; a hang-up is told apart by what follows it (FastAGI: a ``HANGUP`` line;
    classic AGI: SIGHUP), before Asterisk reads the next command."""

    async def test_a_missing_pin_prompt_is_agi_failed_in_both(
        self, ivr: Ivr, redis_server: RedisServer,
    ) -> None:
        """The classic driver took every result=-1 for a hang-up: it reported hung_up,
        blaming a caller who never hung up, where serve's IVR reports error/agi_failed."""
        await set_pin(ivr, "alice", PIN)
        (_, fast), (_, classic) = await both(
            ivr, redis_server, "d1d1d1d1-0000-4000-8000-000000000006", [],
            {"mode": "pin"}, missing=frozenset({"callmfa/pin_greeting"}))
        assert (fast["outcome"], fast["detail"]) == ("error", "agi_failed")
        assert (classic["outcome"], classic["detail"]) == ("error", "agi_failed")

    async def test_a_missing_otp_digit_is_agi_failed_in_both(
        self, ivr: Ivr, redis_server: RedisServer,
    ) -> None:
        def missing_digit(command: str) -> bytes | bool:
            return b"200 result=-1 endpos=0\n" if command.startswith(
                "STREAM FILE callmfa/digit_") else False

        rid = "d1d1d1d1-0000-4000-8000-000000000008"
        marker = await otp_entry(ivr, rid)
        marker_classic = await otp_entry(ivr, rid[:-1] + "0")
        assert marker["mode"] == marker_classic["mode"]
        fast = await run_call(ivr, rid, "#", marker=marker, on_command=missing_digit)
        classic_rid = rid[:-1] + "0"
        await place_call(ivr.store, classic_rid, **marker_classic)
        run_classic(redis_server.url, ivr.settings, classic_rid,
                    FakeAsterisk(["#"], on_command=missing_digit))
        classic = await outcome_json(ivr.redis, classic_rid)
        assert classic is not None
        assert (fast[1]["outcome"], fast[1]["detail"]) == ("error", "agi_failed")
        assert (classic["outcome"], classic["detail"]) == ("error", "agi_failed")

    async def test_a_hang_up_during_a_pin_prompt_is_hung_up_in_both(
        self, ivr: Ivr, redis_server: RedisServer,
    ) -> None:
        await set_pin(ivr, "alice", PIN)
        (_, fast), (_, classic) = await both(
            ivr, redis_server, "d1d1d1d1-0000-4000-8000-00000000000a", ["1111#", HANG_UP],
            {"mode": "pin"})
        assert (fast["outcome"], fast["detail"]) == ("hung_up", None)
        assert (classic["outcome"], classic["detail"]) == ("hung_up", None)


class TestPoundThenHangUp:
    @pytest.mark.parametrize(("keys", "outcome"), [("#", "approved"), ("0#", "fraud_reported")])
    async def test_an_answer_read_collected_counts_in_both(
        self, ivr: Ivr, redis_server: RedisServer, keys: str, outcome: str,
    ) -> None:
        """'#' (or '0#'), then a hang-up as Read() returns: Read() ended OK with the answer,
        and Asterisk tells of the hang-up before it reads the IVR's next command (FastAGI:
        a HANGUP line; classic: SIGHUP). serve's IVR reads Read()'s result all the same and
        stores the answer; the classic driver let pyst2's SIGHUP check refuse the
        GET FULL VARIABLE that reads it, and stored hung_up."""
        def then_hang_up(asterisk: FakeAsterisk) -> Any:
            def on_command(command: str) -> bytes | bool:
                if not command.startswith("EXEC Read "):
                    return False
                asterisk.on_command = None
                reply = asterisk.reply(command)
                asterisk.dead = True
                assert reply is not None
                return reply + b"HANGUP\n"
            return on_command

        rid = "d1d1d1d1-0000-4000-8000-00000000000c" if keys == "#" else \
            "d1d1d1d1-0000-4000-8000-00000000000e"
        await place_call(ivr.store, rid)
        fake = FakeAsterisk([keys])
        fake.on_command = then_hang_up(fake)
        await fake.call(ivr.port, rid)
        await ivr.idle()
        fast = await outcome_json(ivr.redis, rid)
        classic_rid = rid[:-1] + "0"
        await place_call(ivr.store, classic_rid)
        fake = FakeAsterisk([keys])
        fake.on_command = then_hang_up(fake)
        run_classic(redis_server.url, ivr.settings, classic_rid, fake)
        classic = await outcome_json(ivr.redis, classic_rid)
        assert fast is not None
        assert classic is not None
        assert fast["outcome"] == outcome
        assert classic["outcome"] == outcome


class TestLanguageRefused:
    async def test_a_refused_set_variable_is_agi_failed_in_both(
        self, ivr: Ivr, redis_server: RedisServer,
    ) -> None:
        """Asterisk refuses the SET VARIABLE of the language (a 510 from a broken or odd
        build): serve's IVR stores error/agi_failed; the classic driver raised past its
        step loop, logged, hung up and stored nothing (found in review)."""
        def refuse(command: str) -> bytes | bool:
            return b"510 Invalid or unknown command\n" \
                if command.startswith("SET VARIABLE CHANNEL(language)") else False

        (_, fast), (_, classic) = await both(
            ivr, redis_server, "d1d1d1d1-0000-4000-8000-000000000010", ["#"],
            on_command=refuse)
        assert (fast["outcome"], fast["detail"]) == ("error", "agi_failed")
        assert (classic["outcome"], classic["detail"]) == ("error", "agi_failed")
