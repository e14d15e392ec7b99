"""What one verification costs Redis: commands and round trips, pinned so they cannot grow.

A request goes through the real originator (on a fake AMI that answers) and the real IVR
over FastAGI (a scripted Asterisk that presses #), against a real redis-server, with the
default throttles on. The commands are Redis' own count (INFO commandstats, which counts
the commands a script runs too); the round trips are the client's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, iso
from ivr.originator import Originator
from ivr.session import VerificationIvr
from ivr.settings import Settings
from ivr.storage.results import ResultListener
from ivr.storage.store import REQUESTS, Durability, RedisTraffic, Store, connect, result_key
from ivr.tasks import cancel_and_wait
from ivr.transport.ami import ChannelWatch, OriginateResult
from ivr.transport.ami_pool import AmiPool
from ivr.transport.fastagi import FastAgiServer

from ..conftest import RedisServer
from .conftest import eventually
from .fake_asterisk import FakeAsterisk
from .test_originator import FakeAmi, OriginateCall

# Issue 16's budget for one verification, the sign-in service's commands left out: a
# script is one command (WAIT one more), a pipeline one round trip. The read of requests
# (XREADGROUP) and their acknowledgement are shared by the requests that come together:
# a verification alone has both to itself, one more round trip.
MAX_COMMANDS = 12
MAX_ROUND_TRIPS = 5
ALONE = 1
# Every command Redis runs, the scripts' own included, with every throttle on (45 now).
MAX_REDIS_COMMANDS = 45


async def commandstats(redis: Redis) -> dict[str, int]:
    """Calls per command, as INFO commandstats counts them."""
    info: Any = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def answered_ivr(port: int) -> Any:
    """The phone rings, answers; the IVR runs over FastAGI and the caller presses #."""
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        rid = call.fields["ChannelId"]
        watch.ringing.set()

        async def ivr_then_hangup() -> None:
            await FakeAsterisk(["#"], token=call.variables["CALLMFA_TOKEN"]).call(port, rid)
            watch.hangup.set_result(16)

        ami.later(ivr_then_hangup())
        return OriginateResult(True, 4, {"Response": "Success", "Reason": "4"})
    return network


@pytest.fixture(params=[0, 1], ids=["no-wait", "wait-1"])
async def service(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis: Redis
) -> AsyncIterator[tuple[Originator, FakeAmi, RedisTraffic]]:
    """The service's parts on a counted client; with ``wait-1``, a WAIT after the claim and
    the outcome (as with Sentinel; this Redis has no replica, so each WAIT times out)."""
    traffic = RedisTraffic()
    client = connect(redis_server.url, max_connections=50, timeout_s=5.0, traffic=traffic)
    settings = Settings(
        dial_template="PJSIP/{number}@trunk", agi_url="agi://127.0.0.1:4573/verify",
        allowed_prefixes="+", allowed_regions="*", denied_number_types="",
        signing_key="k" * 32, lease_s=60.0, outcome_grace_s=0.2, input_timeout_s=0.5,
    )
    store = Store(client, result_ttl_s=60, events_maxlen=1000,
                  signing_key=settings.signing_key.encode(),
                  durability=Durability(replicas=request.param, timeout_ms=5))
    server = FastAgiServer({"verify": VerificationIvr(settings, store)}, host="127.0.0.1",
                           port=0, header_timeout_s=1.0, command_timeout_s=1.0,
                           max_sessions=10)
    await server.start()
    results = ResultListener(client)
    await results.start()
    ami = FakeAmi(store, answered_ivr(server.port))
    originator = Originator(settings, store, cast(AmiPool, ami), results)
    task = asyncio.create_task(originator.run())

    async def group_exists() -> bool:
        return bool(await redis.exists(REQUESTS)) and bool(await redis.xinfo_groups(REQUESTS))
    await eventually(group_exists, what="consumer group")
    # Connections made now, not while the calls are counted.
    await asyncio.gather(*(client.ping() for _ in range(20)))
    yield originator, ami, traffic
    await originator.stop(grace_s=1.0)
    await cancel_and_wait(task, *ami.background)
    await results.close()
    await server.close(grace_s=1.0)
    await client.aclose()


async def verify(redis: Redis, originator: Originator, ami: FakeAmi, *users: str) -> None:
    """Approved verifications of ``users``, requested at once, waited for without touching
    Redis (the outcomes are read after, with one GET each)."""
    placed, rids = len(ami.calls), []
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            rids.append(str(uuid.uuid4()))
            request = {"id": rids[-1], "user": user, "expires_at": iso(time.time() + 60),
                       "phone": f"+1201555{placed + len(rids):04d}"}
            pipe.xadd(REQUESTS, {"request": json.dumps(request)})
        await pipe.execute()
    await eventually(lambda: len(ami.calls) == placed + len(users) and not ami.background
                     and originator.in_flight == 0, what="the verifications to end")
    for rid in rids:
        stored = json.loads(await redis.get(result_key(rid)) or b"{}")
        assert stored.get("outcome") == Outcome.APPROVED.value


class TestBudget:
    async def test_one_verification(
        self, redis: Redis, service: tuple[Originator, FakeAmi, RedisTraffic]
    ) -> None:
        """Placed, rung, answered, '#', approved: within the budget, and Redis agrees."""
        originator, ami, traffic = service
        for n in range(2):  # the connections made, the scripts loaded
            await verify(redis, originator, ami, f"warm-up-{n}")
        before = (await commandstats(redis), traffic.commands, traffic.round_trips)
        await verify(redis, originator, ami, "alice")
        after = (await commandstats(redis), traffic.commands, traffic.round_trips)

        commands, round_trips = after[1] - before[1], after[2] - before[2]
        assert commands <= MAX_COMMANDS, commands
        assert round_trips <= MAX_ROUND_TRIPS + ALONE, round_trips
        used = {k: n - before[0].get(k, 0) for k, n in after[0].items()}
        # The test's own: the request's XADD, the outcome's GET, one INFO.
        used["xadd"] -= 1
        used["get"] -= 1
        used["info"] -= 1
        ran = {k: n for k, n in used.items() if n}
        assert sum(ran.values()) - ran.get("wait", 0) <= MAX_REDIS_COMMANDS, ran
        # Every event of the timeline, once.
        assert ran["xadd"] == len(["queued", "dialing", "ringing", "answered", "input",
                                   "finished"])

    async def test_verifications_that_come_together(
        self, redis: Redis, service: tuple[Originator, FakeAmi, RedisTraffic]
    ) -> None:
        """Four requests at once share their read and their acknowledgements."""
        originator, ami, traffic = service
        for n in range(2):  # as many connections as four calls at once need
            await verify(redis, originator, ami, *(f"warm-up-{n}-{i}" for i in range(4)))
        commands, round_trips = traffic.commands, traffic.round_trips
        users = [f"user-{n}" for n in range(4)]
        await verify(redis, originator, ami, *users)
        assert (traffic.commands - commands) / len(users) <= MAX_COMMANDS
        assert (traffic.round_trips - round_trips) / len(users) <= MAX_ROUND_TRIPS
