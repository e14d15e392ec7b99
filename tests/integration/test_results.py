"""The sign-in side's defences against replayed and forged outcomes, on a real redis-server:
the client (and its shared result listener) refuses what does not answer its request and
survives any message on callmfa:results."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.domain.signing import signed_json
from ivr.exceptions import OutcomeBindingError
from ivr.storage.store import RESULTS_CHANNEL, Store, result_key

from ..conftest import RedisServer

KEY = "k" * 32


@pytest.fixture
async def client(redis_server: RedisServer, redis: Redis) -> VerificationClient:
    c = VerificationClient.from_url(redis_server.url, signing_key=KEY)
    await c.__aenter__()
    yield c  # type: ignore[misc]
    await c.aclose()


def store(redis: Redis) -> Store:
    return Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=KEY.encode())


def record(rid: str, user: str = "alice", *, at: float | None = None,
           outcome: Outcome = Outcome.APPROVED) -> OutcomeRecord:
    return OutcomeRecord(id=rid, user=user, outcome=outcome,
                         requested_at=time.time() if at is None else at,
                         finished_at=time.time())


class TestReplays:
    async def test_a_signed_approval_copied_to_another_request_is_refused(
        self, client: VerificationClient, redis: Redis
    ) -> None:
        """A's genuine signed approval, copied into B's result key, is refused for B."""
        a = await client.submit(user="alice", phone="+12015550100")
        b = await client.submit(user="alice", phone="+12015550100")
        await store(redis).store_outcome(record(a))
        await redis.set(result_key(b), await redis.get(result_key(a)) or b"")

        assert (await client.wait(a, 1) or record(a)).outcome is Outcome.APPROVED
        with pytest.raises(OutcomeBindingError, match="is for id"):
            await client.wait(b, 1)

    async def test_another_users_or_an_older_outcome_is_refused(
        self, client: VerificationClient, redis: Redis
    ) -> None:
        """Same id, but signed for bob, or requested before this submission (an old outcome
        of a reused id): both refused."""
        rid = await client.submit(user="alice", phone="+12015550100")
        await store(redis).store_outcome(record(rid, user="bob"))
        with pytest.raises(OutcomeBindingError, match="another user"):
            await client.wait(rid, 1)

        again = await client.submit(user="alice", phone="+12015550100")
        await store(redis).store_outcome(record(again, at=time.time() - 3600))
        with pytest.raises(OutcomeBindingError, match="older"):
            await client.wait(again, 1)


class TestForgedMessages:
    @pytest.mark.parametrize("message", [
        b"not json", b"[]", b'{"id": 7}', b'{"id": ["x"]}',
        "sig",  # placeholder: a signed record of B whose sig has non-ASCII characters
        "unknown",  # a record of B with an outcome value that does not exist
        "unsigned",  # B's approval, unsigned
        "foreign",  # a genuine signed approval of B's id, but for another user
    ])
    async def test_a_forged_message_does_not_stop_the_waiter(
        self, client: VerificationClient, redis: Redis, message: bytes | str
    ) -> None:
        """The forged message is dropped; the waiter gets the real outcome the moment it
        is stored, and the listener keeps serving later waits."""
        rid = await client.submit(user="alice", phone="+12015550100")
        waiting = asyncio.create_task(client.wait(rid, 10))
        await asyncio.sleep(0.1)  # registered and subscribed
        wire = json.loads(signed_json(KEY.encode(), record(rid)))
        forged = {
            "sig": json.dumps({**wire, "sig": "é" * 64}),
            "unknown": json.dumps({**wire, "outcome": "approved!"}),
            "unsigned": record(rid).to_json(),
            "foreign": signed_json(KEY.encode(), record(rid, user="mallory")),
        }.get(message, message) if isinstance(message, str) else message
        await redis.publish(RESULTS_CHANNEL, forged)
        await asyncio.sleep(0.1)
        assert not waiting.done()

        t0 = time.monotonic()
        real = record(rid, outcome=Outcome.NO_INPUT)
        await store(redis).store_outcome(real)
        got = await waiting

        assert got is not None
        assert got.outcome is Outcome.NO_INPUT
        assert time.monotonic() - t0 < 0.5
        later = await client.submit(user="alice", phone="+12015550100")
        await store(redis).store_outcome(record(later))
        assert (await client.wait(later, 2) or real).outcome is Outcome.APPROVED


class TestOneListener:
    async def test_first_waits_at_once_share_one_subscription(
        self, redis_server: RedisServer, redis: Redis
    ) -> None:
        """Two waits that start the client's listener at the same moment (two sign-ins
        arriving together) share one listener task; none is left after aclose()."""
        def listeners() -> list[asyncio.Task[object]]:
            return [t for t in asyncio.all_tasks() if t.get_name() == "result-listener"]

        c = VerificationClient.from_url(redis_server.url, signing_key=KEY)
        try:
            a = await c.submit(user="alice", phone="+12015550100")
            b = await c.submit(user="alice", phone="+12015550100")
            waits = [asyncio.create_task(c.wait(rid, 5)) for rid in (a, b)]
            await asyncio.sleep(0.2)
            assert len(listeners()) == 1
            for rid in (a, b):
                await store(redis).store_outcome(record(rid))
            assert [r.outcome if r else None for r in await asyncio.gather(*waits)] == [
                Outcome.APPROVED, Outcome.APPROVED]
        finally:
            await c.aclose()
        assert listeners() == []
