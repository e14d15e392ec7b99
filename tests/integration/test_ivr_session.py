"""The verification IVR end to end over FastAGI and real Redis, with a scripted Asterisk.

The fake Asterisk sends the AGI headers of a verification call and answers every command
line the way Asterisk 22 does; the tests check what the sign-in service would see in
Redis (the result key, the results channel, the events stream) and the commands sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord, parse_iso
from ivr.session import VerificationIvr
from ivr.settings import Settings
from ivr.storage.store import EVENTS, RESULTS_CHANNEL, Store, result_key
from ivr.transport.fastagi import FastAgiServer

from .conftest import close_writer, eventually

GREETING = "hello&vm-press&digits/pound&vm-press&digits/0&vm-then-pound"
RETRY_GREETING = f"pm-invalid-option&please-try-again&{GREETING}"
READ = "EXEC Read CALLMFA_KEYS,{files},4,,1,0.5"
GET_KEYS = "GET FULL VARIABLE ${READSTATUS}:${CALLMFA_KEYS}"
COMMAND_TIMEOUT_S = 1.0

# What the caller does at one Read(): the keys before '#', silence, or hanging up.
PRESS_POUND = "OK:"
PRESS_ZERO_POUND = "OK:0"
PRESS_WRONG = "OK:5"
SILENCE = "TIMEOUT:"
HANG_UP = "hangup"


@dataclass
class Ivr:
    """The IVR under test: its FastAGI port and the store it writes to."""

    server: FastAgiServer
    store: Store
    redis: Redis

    @property
    def port(self) -> int:
        return self.server.port

    async def idle(self) -> None:
        """Wait until every FastAGI session has ended (a hung-up peer does not wait)."""
        await eventually(
            lambda: self.server.active_sessions == 0, timeout_s=COMMAND_TIMEOUT_S + 2,
            what="the IVR session to end",
        )


@pytest.fixture
async def ivr(redis: Redis) -> AsyncIterator[Ivr]:
    """The real VerificationIvr behind a real FastAGI server on a free port."""
    store = Store(redis, result_ttl_s=60, events_maxlen=1000)
    settings = Settings(input_timeout_s=0.5, max_attempts=2)
    server = FastAgiServer(
        {"verify": VerificationIvr(settings, store)},
        host="127.0.0.1", port=0, header_timeout_s=1.0,
        command_timeout_s=COMMAND_TIMEOUT_S, max_sessions=10,
    )
    await server.start()
    yield Ivr(server, store, redis)
    await server.close(grace_s=1.0)


async def place_call(store: Store, rid: str) -> float:
    """What the originator writes before dialling: the call marker."""
    t = time.time() - 5
    await store.claim_call(rid, {
        "user": "alice", "number": "+15550100", "mode": "standard", "lang": "en",
        "requested_at": str(t), "call_started_at": str(t), "context": "{}",
    })
    return t


Reply = bytes | None  # None: hang up by closing the socket


@dataclass
class FakeAsterisk:
    """Answers AGI commands like Asterisk 22; ``keys`` is what the caller does at each
    Read(): a READSTATUS:keys pair (PRESS_POUND, SILENCE, ...) or HANG_UP.

    ``on_command`` may override the reply to a command (return bytes, or None to close).
    """

    keys: list[str] = field(default_factory=list)
    on_playback: Callable[[str], Awaitable[None]] | None = None
    on_command: Callable[[str], Reply | bool] | None = None
    reset: bool = False  # hang up with RST rather than FIN
    commands: list[str] = field(default_factory=list)
    _current: str = ""

    def reply(self, command: str) -> Reply:
        if self.on_command is not None:
            custom = self.on_command(command)
            if custom is not False:
                assert not isinstance(custom, bool)
                return custom
        if command.startswith("EXEC Read "):
            self._current = self.keys.pop(0)
            if self._current == HANG_UP:
                return b"HANGUP\n200 result=-1\n"
            return b"200 result=0\n"
        if command == GET_KEYS:
            return f"200 result=1 ({self._current})\n".encode()
        if command.startswith("EXEC Playback "):
            return b"200 result=0\n"
        if command == "HANGUP":
            return b"200 result=1\n"
        return b"510 Invalid or unknown command\n"

    async def call(
        self, port: int, rid: str, *, with_arg: bool = True, timeout_s: float = 5.0
    ) -> list[str]:
        """Run one AGI session for ``rid``; returns the commands received, in order."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = [
            "agi_network_script: verify", "agi_request: agi://127.0.0.1/verify",
            "agi_channel: PJSIP/trunk-00000001", f"agi_uniqueid: {rid}",
            "agi_callerid: 15550000",
        ]
        if with_arg:
            headers.append(f"agi_arg_1: {rid}")
        writer.write(("\n".join(headers) + "\n\n").encode())
        try:
            async with asyncio.timeout(timeout_s):
                while line := await reader.readline():
                    command = line.decode().rstrip("\n")
                    self.commands.append(command)
                    if command.startswith("EXEC Playback ") and self.on_playback is not None:
                        await self.on_playback(command)
                    answer = self.reply(command)
                    if answer is None:
                        if self.reset:
                            _reset(writer)
                        break
                    writer.write(answer)
                    if answer.endswith(b"200 result=-1\n"):
                        break  # the channel is gone: Asterisk ends the AGI session
        finally:
            await close_writer(writer)
        return self.commands


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def outcome_json(redis: Redis, rid: str) -> dict[str, object] | None:
    raw = await redis.get(result_key(rid))
    return json.loads(raw) if raw is not None else None


async def events_of(redis: Redis, rid: str) -> list[dict[str, str]]:
    entries = await redis.xrange(EVENTS)
    out = []
    for _, fields in entries:
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        if decoded.get("id") == rid:
            out.append(decoded)
    return out


async def run_call(
    ivr: Ivr, rid: str, *keys: str, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """Place the marker, run the session, return (commands, stored outcome JSON)."""
    await place_call(ivr.store, rid)
    asterisk = FakeAsterisk(list(keys), **options)
    commands = await asterisk.call(ivr.port, rid)
    await ivr.idle()
    stored = await outcome_json(ivr.redis, rid)
    assert stored is not None, f"no outcome stored; commands were {commands}"
    return commands, stored


class TestApproved:
    async def test_pound_approves(self, ivr: Ivr) -> None:
        """'#' stores outcome approved for the marker's user, with the times set."""
        rid = "11111111-1111-4111-8111-111111111111"
        before = time.time()

        commands, stored = await run_call(ivr, rid, PRESS_POUND)

        assert commands == [
            READ.format(files=GREETING), GET_KEYS,
            "EXEC Playback auth-thankyou&goodbye", "HANGUP",
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
        assert commands[-2:] == ["EXEC Playback privacy-thankyou&goodbye", "HANGUP"]

    async def test_silence_twice_is_no_input_timeout(self, ivr: Ivr) -> None:
        """Two silent prompts (max_attempts=2) store no_input/timeout, no input time."""
        rid = "55555555-5555-4555-8555-555555555555"

        commands, stored = await run_call(ivr, rid, SILENCE, SILENCE)

        assert (stored["outcome"], stored["detail"]) == ("no_input", "timeout")
        assert stored["input_at"] is None
        assert commands == [
            READ.format(files=GREETING), GET_KEYS, READ.format(files=GREETING), GET_KEYS,
            "EXEC Playback im-sorry&goodbye", "HANGUP",
        ]

    async def test_wrong_key_twice_is_no_input_invalid(self, ivr: Ivr) -> None:
        """A wrong key twice stores no_input/invalid_input; the retry prompt comes first."""
        rid = "66666666-6666-4666-8666-666666666666"

        commands, stored = await run_call(ivr, rid, PRESS_WRONG, PRESS_WRONG)

        assert (stored["outcome"], stored["detail"]) == ("no_input", "invalid_input")
        assert commands[2] == READ.format(files=RETRY_GREETING)
        assert commands[-2:] == ["EXEC Playback im-sorry&goodbye", "HANGUP"]

    async def test_silence_then_pound_approves(self, ivr: Ivr) -> None:
        """A silent first prompt and '#' at the second approves."""
        rid = "77777777-7777-4777-8777-777777777777"

        _, stored = await run_call(ivr, rid, SILENCE, PRESS_POUND)

        assert stored["outcome"] == "approved"


class TestHangUp:
    @pytest.mark.parametrize("reply", [b"HANGUP\n200 result=-1\n", b"200 result=-1\n"])
    async def test_hang_up_during_prompt(self, ivr: Ivr, reply: bytes) -> None:
        """'result=-1' to Read() (with or without the HANGUP line first), then a closed
        socket, stores hung_up; no command follows."""
        rid = "88888888-8888-4888-8888-888888888888"

        def gone(command: str) -> Reply | bool:
            return reply if command.startswith("EXEC Read") else False

        commands, stored = await run_call(ivr, rid, on_command=gone)

        assert stored["outcome"] == "hung_up"
        assert stored["input_at"] is None
        assert commands == [READ.format(files=GREETING)]

    async def test_hang_up_at_the_second_prompt(self, ivr: Ivr) -> None:
        """Silence, then a hang-up during the repeated prompt, stores hung_up."""
        rid = "89898989-8989-4989-8989-898989898989"

        commands, stored = await run_call(ivr, rid, SILENCE, HANG_UP)

        assert stored["outcome"] == "hung_up"
        assert commands == [READ.format(files=GREETING), GET_KEYS, READ.format(files=GREETING)]

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
        assert commands == [READ.format(files=GREETING)]

    async def test_hang_up_during_goodbye_keeps_the_outcome(self, ivr: Ivr) -> None:
        """Hanging up during the goodbye leaves 'approved' and sends no HANGUP."""
        rid = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

        def gone(command: str) -> Reply | bool:
            return b"HANGUP\n200 result=-1\n" if command.startswith("EXEC Playback") else False

        commands, stored = await run_call(ivr, rid, PRESS_POUND, on_command=gone)

        assert stored["outcome"] == "approved"
        assert commands[-1] == "EXEC Playback auth-thankyou&goodbye"

    async def test_read_status_hangup_is_a_hang_up(self, ivr: Ivr) -> None:
        """READSTATUS=HANGUP (Read() ended by the hang-up) stores hung_up."""
        rid = "abababab-abab-4bab-8bab-abababababab"

        commands, stored = await run_call(ivr, rid, "HANGUP:")

        assert stored["outcome"] == "hung_up"
        assert commands == [READ.format(files=GREETING), GET_KEYS]

    async def test_pound_then_immediate_hang_up_is_approved(self, ivr: Ivr) -> None:
        """'#' and a hang-up right after (Asterisk's HANGUP line arrives before the
        variable's reply): approved stands, and no goodbye is sent to a dead channel."""
        rid = "cdcdcdcd-cdcd-4dcd-8dcd-cdcdcdcdcdcd"

        def pound_then_gone(command: str) -> Reply | bool:
            return b"HANGUP\n200 result=1 (OK:)\n" if command == GET_KEYS else False

        commands, stored = await run_call(ivr, rid, PRESS_POUND, on_command=pound_then_gone)

        assert stored["outcome"] == "approved"
        assert commands == [READ.format(files=GREETING), GET_KEYS]

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
        assert commands == [READ.format(files=GREETING), "HANGUP"]

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
        """READSTATUS=ERROR (e.g. a missing sound file) stores error/agi_failed."""
        rid = "ffffffff-ffff-4fff-8fff-ffffffffffff"

        commands, stored = await run_call(ivr, rid, "ERROR:")

        assert (stored["outcome"], stored["detail"]) == ("error", "agi_failed")
        assert commands[-1] == "HANGUP"

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


class TestUnknownAndDuplicates:
    async def test_unknown_id_stores_nothing(self, ivr: Ivr) -> None:
        """A call with no marker gets the sorry prompt and a hang-up; nothing is stored."""
        rid = "13131313-1313-4313-8313-131313131313"

        commands = await FakeAsterisk().call(ivr.port, rid)
        await ivr.idle()

        assert commands == ["EXEC Playback im-sorry&goodbye", "HANGUP"]
        assert await ivr.redis.keys("callmfa:result:*") == []
        assert await events_of(ivr.redis, rid) == []

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
