"""The Redis steps of a call whose IVR runs in the originator's own process.

The originator hands the answer it saw to the IVR session's claim (with AMD off the session
starts at once), and the outcome's script acknowledges the request's stream entry: one round
trip fewer each. The real originator (on a fake AMI that answers) and the real IVR over
FastAGI (a scripted Asterisk) run against a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ivr import originator as originator_module
from ivr.domain.outcome import iso
from ivr.originator import Originator
from ivr.session import VerificationIvr
from ivr.settings import Settings
from ivr.storage.hotpath import HotScript
from ivr.storage.keys import GROUP
from ivr.storage.results import ResultListener
from ivr.storage.store import REQUESTS, RedisTraffic, Store, call_key, connect, result_key
from ivr.tasks import cancel_and_wait
from ivr.transport.ami import ChannelWatch, OriginateResult
from ivr.transport.ami_pool import AmiPool
from ivr.transport.fastagi import FastAgiServer

from ..conftest import RedisServer
from .conftest import eventually
from .fake_asterisk import FakeAsterisk, events_of
from .test_originator import FakeAmi, OriginateCall

TIMELINE = ["queued", "dialing", "ringing", "answered", "input", "finished"]


@dataclass
class Phone:
    """What the fake network does once the phone answers: the IVR session starts
    ``delay_s`` later (Asterisk's own work, or AMD's); ``before`` runs first."""

    delay_s: float = 0.0
    before: Callable[[str], Awaitable[Any]] | None = None


@dataclass
class Service:
    originator: Originator
    ami: FakeAmi
    traffic: RedisTraffic
    refused: list[str]
    phone: Phone


Start = Callable[..., Awaitable[Service]]


def answering(port: int, phone: Phone) -> Any:
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        rid = call.fields["ChannelId"]
        watch.ringing.set()

        async def ivr_then_hangup() -> None:
            await asyncio.sleep(phone.delay_s)
            if phone.before is not None:
                await phone.before(rid)
            await FakeAsterisk(["#"], token=call.variables["CALLMFA_TOKEN"]).call(port, rid)
            watch.hangup.set_result(16)

        ami.later(ivr_then_hangup())
        return OriginateResult(True, 4, {"Response": "Success", "Reason": "4"})
    return network


@pytest.fixture
async def start(redis_server: RedisServer, redis: Redis) -> AsyncIterator[Start]:
    """The originator and the IVR on one counted client, AMD off; ``shared``: on one Store,
    as in ``callmfa serve`` (else the IVR has a Store of its own, as in another process).
    One verification is run first (the scripts loaded); then ``Service.phone`` may change."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def run(*, shared: bool = True, **overrides: Any) -> Service:
        traffic = RedisTraffic()
        client = connect(redis_server.url, max_connections=50, timeout_s=5.0, traffic=traffic)
        settings = Settings(**{
            "dial_template": "PJSIP/{number}@trunk", "agi_url": "agi://127.0.0.1:4573/verify",
            "allowed_prefixes": "+", "allowed_regions": "*", "denied_number_types": "",
            "lease_s": 60.0, "outcome_grace_s": 0.2, "input_timeout_s": 0.5, "amd": "off",
            **overrides})
        store = Store(client, result_ttl_s=60, events_maxlen=1000)
        ivr_store = store if shared else Store(client, result_ttl_s=60, events_maxlen=1000)
        refused: list[str] = []
        ivr = VerificationIvr(settings, ivr_store,
                              observer=SimpleNamespace(session_refused=refused.append))
        server = FastAgiServer({"verify": ivr}, host="127.0.0.1", port=0,
                               header_timeout_s=1.0, command_timeout_s=1.0, max_sessions=10)
        await server.start()
        results = ResultListener(client)
        await results.start()
        phone = Phone()
        ami = FakeAmi(store, answering(server.port, phone))
        originator = Originator(settings, store, cast(AmiPool, ami), results)
        task = asyncio.create_task(originator.run())

        async def stop() -> None:
            await originator.stop(grace_s=1.0)
            await cancel_and_wait(task, *ami.background)
            await results.close()
            await server.close(grace_s=1.0)
            await client.aclose()
        stops.append(stop)

        async def group_exists() -> bool:
            return bool(await redis.exists(REQUESTS)) and bool(await redis.xinfo_groups(REQUESTS))
        await eventually(group_exists, what="consumer group")
        await asyncio.gather(*(client.ping() for _ in range(20)))
        # Each script's first run would cost a round trip more (NOSCRIPT, then EVAL).
        for script in [*vars(store).values(), *vars(ivr_store).values()]:
            if isinstance(script, AsyncScript | HotScript):
                await client.script_load(script.script)
        service = Service(originator, ami, traffic, refused, phone)
        await verify(redis, service)
        return service

    yield run
    for stop in stops:
        await stop()


async def verify(redis: Redis, service: Service, outcome: str = "approved") -> str:
    """One verification, requested and waited for (its task ended); its id."""
    rid = str(uuid.uuid4())
    calls = len(service.ami.calls)
    request = {"id": rid, "user": f"user-{calls}", "expires_at": iso(time.time() + 60),
               "phone": f"+1201555{calls:04d}"}
    await redis.xadd(REQUESTS, {"request": json.dumps(request)})
    await eventually(lambda: len(service.ami.calls) == calls + 1 and not service.ami.background
                     and service.originator.in_flight == 0, what="the verification to end")
    stored = json.loads(await redis.get(result_key(rid)) or b"{}")
    assert stored.get("outcome") == outcome
    return rid


async def settled(redis: Redis) -> None:
    """No request left in the stream, none pending."""
    assert await redis.xlen(REQUESTS) == 0
    assert (await redis.xpending(REQUESTS, GROUP))["pending"] == 0


async def answered_at(redis: Redis, rid: str) -> bytes | None:
    return cast(bytes | None, await redis.hget(call_key(rid), "answered_at"))


@pytest.fixture
def long_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-over that waits long enough for any session (a loaded test machine)."""
    monkeypatch.setattr(originator_module, "ANSWER_HOLD_S", 5.0)


class TestOneProcess:
    @pytest.mark.usefixtures("long_hold")
    async def test_the_answer_rides_in_the_claim(self, redis: Redis, start: Start) -> None:
        """Read, placed, claimed with the answer, settled with the outcome: four round
        trips for a verification alone, and the timeline in order."""
        service = await start()
        before = service.traffic.round_trips
        rid = await verify(redis, service)

        assert service.traffic.round_trips - before == 4
        assert [e["event"] for e in await events_of(redis, rid)] == TIMELINE
        marker = await redis.hgetall(call_key(rid))
        assert float(marker[b"ivr_at"]) >= float(marker[b"answered_at"])
        await settled(redis)

    async def test_a_late_session_finds_the_answer_written(
        self, redis: Redis, start: Start
    ) -> None:
        """A session that starts after the hand-over's wait (a slow Asterisk): the
        originator wrote the answer itself, before the session began."""
        service = await start()
        seen: list[bytes | None] = []

        async def look(rid: str) -> None:
            seen.append(await answered_at(redis, rid))
        service.phone.delay_s, service.phone.before = 0.3, look
        before = service.traffic.round_trips
        rid = await verify(redis, service)

        assert seen == [await answered_at(redis, rid)]
        assert seen[0] is not None
        assert service.traffic.round_trips - before == 5
        assert [e["event"] for e in await events_of(redis, rid)] == TIMELINE
        await settled(redis)

    @pytest.mark.usefixtures("long_hold")
    async def test_a_refused_session_writes_no_answer(self, redis: Redis, start: Start) -> None:
        """The call was claimed elsewhere first: the session here is refused and writes
        nothing; the originator writes the answer at once (no wait for the hold's end),
        then its own outcome."""
        service = await start()

        async def claimed_elsewhere(rid: str) -> None:
            await redis.hset(call_key(rid), "ivr_at", "1")
        service.phone.before = claimed_elsewhere
        started = time.monotonic()
        rid = await verify(redis, service, outcome="error")

        assert time.monotonic() - started < 3.0
        assert service.refused == ["already_claimed"]
        events = [e["event"] for e in await events_of(redis, rid)]
        assert events == ["queued", "dialing", "ringing", "answered", "finished"]
        await settled(redis)

    @pytest.mark.usefixtures("long_hold")
    @pytest.mark.parametrize("setting", [
        {"amd": "on"}, {"roles": "originator"}, {"agi_mode": "classic"},
        {"agi_url": "agi://192.0.2.10:4573/verify"},
    ], ids=str)
    async def test_no_hand_over_without_a_session_at_once(
        self, redis: Redis, start: Start, setting: dict[str, str]
    ) -> None:
        """With AMD on (the session starts seconds after the answer) or no IVR in this
        process, the answer is written at once, and the claim is a round trip of its own."""
        service = await start(**setting)
        before = service.traffic.round_trips
        started = time.monotonic()
        rid = await verify(redis, service)

        assert time.monotonic() - started < 3.0
        assert service.traffic.round_trips - before == 5
        assert [e["event"] for e in await events_of(redis, rid)] == TIMELINE


class TestAnotherProcess:
    async def test_the_originator_acknowledges_an_outcome_stored_elsewhere(
        self, redis: Redis, start: Start
    ) -> None:
        """The IVR runs elsewhere (its own Store, at another address): nothing is handed
        over, the outcome's script acknowledges nothing, and the originator acknowledges
        the entry."""
        service = await start(shared=False, agi_url="agi://192.0.2.10:4573/verify")
        before = service.traffic.round_trips
        rid = await verify(redis, service)

        # Read, placed, the marker read by the IVR, answered, claimed, the outcome, the
        # originator's acknowledgement.
        assert service.traffic.round_trips - before == 7
        assert [e["event"] for e in await events_of(redis, rid)] == TIMELINE
        await settled(redis)
