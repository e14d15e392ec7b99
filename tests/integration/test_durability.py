"""Writes that must survive a Redis failover (issue 17): retried writes are harmless, and
WAIT tells whether a replica has the request, the call claim and the outcome."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.storage.keys import EVENTS
from ivr.storage.store import Claim, Durability, Store, call_key

from ..conftest import RedisServer, free_port, wait_until


def _record(rid: str, outcome: Outcome) -> OutcomeRecord:
    now = time.time()
    return OutcomeRecord(id=rid, user="alice", outcome=outcome, detail=None,
                         requested_at=now - 1, finished_at=now)


class TestRetriedWrites:
    async def test_a_retried_claim_finds_its_own_marker(self, redis: Redis) -> None:
        """The claim's reply lost and the claim run again: still ours (NEW); another
        delivery's claim (another token) is IN_PROGRESS; after the outcome, DONE."""
        store = Store(redis, result_ttl_s=60, events_maxlen=100)
        ours = {"token_hash": "a" * 64, "user": "alice"}
        assert await store.claim_call("r1", ours) is Claim.NEW
        assert await store.claim_call("r1", ours) is Claim.NEW
        assert await store.claim_call("r1", {**ours, "token_hash": "b" * 64}) is Claim.IN_PROGRESS
        assert await store.claim_call("r1", {"user": "alice"}) is Claim.IN_PROGRESS
        await store.store_outcome(_record("r1", Outcome.APPROVED))
        assert await store.claim_call("r1", ours) is Claim.DONE

    async def test_a_retried_outcome_is_stored_once(self, redis: Redis) -> None:
        """The outcome script run again with the same outcome (its reply lost, the script
        retried): still stored (it said not, so a wrong PIN's denial went uncounted; found
        in review), nothing written twice; a different outcome is refused: the first
        stands, with one ``input`` and one ``finished`` event."""
        store = Store(redis, result_ttl_s=60, events_maxlen=100)
        record, at = _record("r2", Outcome.APPROVED), time.time()
        assert await store.store_outcome(record, input_at=at) is True
        assert await store.store_outcome(record, input_at=at) is True
        assert await store.store_outcome(_record("r2", Outcome.ERROR)) is False
        stored = await store.get_outcome("r2")
        assert stored is not None
        assert stored.outcome is Outcome.APPROVED
        events = [f for _, f in await redis.xrange(EVENTS) if f[b"id"] == b"r2"]
        assert [f[b"event"] for f in events] == [b"input", b"finished"]

    async def test_a_retried_ivr_claim_is_still_the_sessions(self, redis: Redis) -> None:
        """The IVR session's claim run again (its reply lost): still that session's (it
        was refused as already_claimed, and the real call ended without an outcome; found
        in review); another session's claim is refused."""
        store = Store(redis, result_ttl_s=60, events_maxlen=100)
        await redis.hset(call_key("r3"), "user", "alice")
        assert await store.claim_ivr("r3", 1.25) is True
        assert await store.claim_ivr("r3", 1.25) is True
        assert await store.claim_ivr("r3", 2.5) is False

    async def test_a_retried_claim_with_the_answer_is_still_the_sessions(
            self, redis: Redis) -> None:
        """The claim that carries the originator's answer, run again: claimed (1: the
        answer in already), with one 'answered' event; another session's: refused (0)."""
        store = Store(redis, result_ttl_s=60, events_maxlen=100)
        await redis.hset(call_key("r4"), "user", "alice")
        args = [*store._answer_args("r4", 1.0, None), "1.25"]
        claim = store._claim_answered
        assert await claim(keys=[EVENTS, call_key("r4")], args=args) == 2
        assert await claim(keys=[EVENTS, call_key("r4")], args=args) == 1
        assert await claim(keys=[EVENTS, call_key("r4")], args=[*args[:-1], "2.5"]) == 0
        events = [f for _, f in await redis.xrange(EVENTS) if f[b"id"] == b"r4"]
        assert [f[b"event"] for f in events] == [b"answered"]


@pytest.fixture
def replica(redis_server: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server replicating the test Redis."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path),
         "--replicaof", "127.0.0.1", str(redis_server.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def linked() -> bool:
        out = subprocess.run(["redis-cli", "-p", str(port), "info", "replication"],
                             capture_output=True, text=True, check=False).stdout
        return "master_link_status:up" in out

    wait_until(linked, 20, "the replica's link")
    yield proc
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def primary(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


class TestWaitForAReplica:
    async def test_claim_and_outcome_wait_for_the_replica(
        self, primary: Redis, replica: subprocess.Popen[bytes]
    ) -> None:
        """With a replica linked, WAIT 1 is met: nothing is reported short."""
        short: list[str] = []
        store = Store(primary, result_ttl_s=60, events_maxlen=100,
                      durability=Durability(1, 1000, short.append))
        assert await store.claim_call("w1", {"token_hash": "c" * 64}) is Claim.NEW
        assert await store.store_outcome(_record("w1", Outcome.APPROVED)) is True
        assert await Durability(1, 1000, short.append).command(
            primary, "request", "XADD", "callmfa:requests", "*", "request", "{}")
        assert short == []

    async def test_a_write_no_replica_acknowledged_is_reported_and_kept(
        self, primary: Redis, replica: subprocess.Popen[bytes]
    ) -> None:
        """The replica gone: WAIT times out; the write is kept on the primary, reported
        (logged and counted by serve) once per write, and callmfa goes on."""
        replica.terminate()
        replica.wait(10)
        short: list[str] = []
        store = Store(primary, result_ttl_s=60, events_maxlen=100,
                      durability=Durability(1, 100, short.append))
        started = time.monotonic()
        assert await store.claim_call("w2", {"token_hash": "d" * 64}) is Claim.NEW
        assert await store.store_outcome(_record("w2", Outcome.APPROVED)) is True
        assert short == ["call_claim", "outcome"]
        assert time.monotonic() - started < 2  # two WAITs of 100 ms, not more
        assert await store.get_outcome("w2") is not None
