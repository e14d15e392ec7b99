"""Forged AGI sessions: a process that is not Asterisk connects to FastAGI and names a live
verification. It must change nothing: no outcome, no event, no fraud block; it is refused
at once (never holding a session slot for long) and counted."""

from __future__ import annotations

import asyncio
import time

from ivr.storage.keys import AUDIT, BLOCKED
from ivr.storage.store import call_key

from .conftest import Ivr, StartIvr, close_writer, eventually
from .fake_asterisk import CALL_TOKEN, FakeAsterisk, events_of, outcome_json, place_call

PROBE = ("GET FULL VARIABLE ${CALLMFA_TOKEN}|${AMDSTATUS}|${AMDCAUSE}|${CALLMFA_EARLY_KEYS}|"
    "|${CALLMFA_COLLECT}")


async def assert_untouched(ivr: Ivr, rid: str) -> None:
    assert await outcome_json(ivr.redis, rid) is None
    assert await events_of(ivr.redis, rid) == []
    assert await ivr.redis.xlen(AUDIT) == 0
    assert await ivr.redis.zcard(BLOCKED) == 0


class TestForgedSessions:
    async def test_unknown_id_is_closed_before_any_command(self, ivr: Ivr) -> None:
        """No call marker: the session is closed without a single command."""
        rid = "13131313-1313-4313-8313-131313131313"

        commands = await FakeAsterisk(["#"]).call(ivr.port, rid)
        await ivr.idle()

        assert commands == []
        assert ivr.refused == ["unknown_call"]
        await assert_untouched(ivr, rid)

    async def test_wrong_token_cannot_approve_or_report_fraud(self, ivr: Ivr) -> None:
        """A forger names a live call but cannot know its token: after the probe the
        session is closed; neither '#' nor '0#' is ever asked for, nothing is stored."""
        rid = "f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f1"
        await place_call(ivr.store, rid)
        marker = await ivr.redis.hgetall(call_key(rid))

        for keys, token in (("#", "00" * 24), ("0#", ""), ("#", CALL_TOKEN.upper())):
            commands = await FakeAsterisk([keys], token=token).call(ivr.port, rid)
            assert commands == [PROBE]
        await ivr.idle()

        assert ivr.refused == ["bad_token"] * 3
        assert await ivr.redis.hgetall(call_key(rid)) == marker  # not claimed
        await assert_untouched(ivr, rid)
        # The real call still runs: its session has the token.
        await FakeAsterisk(["#"]).call(ivr.port, rid)
        await ivr.idle()
        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "approved"

    async def test_second_session_with_the_token_is_refused(self, ivr: Ivr) -> None:
        """Even the right token admits one session per call: a replay of the real call's
        session (while it runs, or after it ended) is refused and reports no fraud."""
        rid = "f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f2"
        await place_call(ivr.store, rid)
        async def goodbye(_command: str) -> None:
            await asyncio.sleep(0.3)  # the real call is still on the line during the replay

        real = asyncio.create_task(FakeAsterisk(["#"], on_playback=goodbye).call(ivr.port, rid))
        await eventually(lambda: ivr.redis.hexists(call_key(rid), "ivr_at"), timeout_s=5,
                         what="the real session's claim")
        replay = await FakeAsterisk(["0#"]).call(ivr.port, rid)
        await real
        after = await FakeAsterisk(["0#"]).call(ivr.port, rid)
        await ivr.idle()

        assert replay == after == [PROBE]
        assert ivr.refused == ["already_claimed", "already_claimed"]
        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "approved"
        assert await ivr.redis.zcard(BLOCKED) == 0
        assert await ivr.redis.xlen(AUDIT) == 0

    async def test_silent_forgers_do_not_hold_the_slots(self, start_ivr: StartIvr) -> None:
        """Forgers that send the headers and never answer the probe are dropped after the
        header deadline (not the 90 s command timeout): the real call then gets a slot."""
        ivr = await start_ivr(max_sessions=2, agi_header_timeout_s=0.5)
        rid = "f0f0f0f0-f0f0-4f0f-8f0f-f0f0f0f0f0f3"
        await place_call(ivr.store, rid)
        forgers = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", ivr.port)
            writer.write(f"agi_network_script: verify\nagi_arg_1: {rid}\n\n".encode())
            forgers.append((reader, writer))
        t0 = time.monotonic()
        for reader, _ in forgers:
            assert (await reader.readline()).startswith(b"GET FULL VARIABLE")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the IVR
        waited = time.monotonic() - t0
        for _, writer in forgers:
            await close_writer(writer)

        await FakeAsterisk(["#"]).call(ivr.port, rid)
        await ivr.idle()

        assert waited < 2
        assert ivr.refused == ["no_token", "no_token"]
        assert (await outcome_json(ivr.redis, rid) or {}).get("outcome") == "approved"
