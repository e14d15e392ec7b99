"""The sign-in side's client on a real redis-server: every call ends by its own timeout, even
when Redis stops answering (SIGSTOP stands for a paused VM or a blackholed network)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord, parse_iso
from ivr.exceptions import OutcomeSignatureError, SettingsError
from ivr.settings import Settings
from ivr.storage.store import EVENTS, REQUESTS, Store, result_key

from ..conftest import RedisServer, start_redis

KEY = "k" * 32
# What a call may take past its bound on a loaded test machine.
MARGIN_S = 1.0
READ_GRACE_S = 1.0  # ivr.client.READ_GRACE_S: what a call may add for its last read
T = TypeVar("T")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], RedisServer]]:
    """A redis-server of this test alone, to freeze; running again before it is stopped."""
    proc, server = start_redis(tmp_path)
    try:
        yield proc, server
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def frozen(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Redis stopped (its sockets stay open, nothing answers) until the block ends."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


async def ends_within(call: Awaitable[T], bound_s: float) -> tuple[T | BaseException, float]:
    """What ``call`` returned or raised, and how long it took; fails the test (at once) if
    it is still running after ``bound_s``."""
    task = asyncio.ensure_future(call)
    t0 = time.monotonic()
    try:
        await asyncio.wait({task}, timeout=bound_s)
        assert task.done(), f"still running after {bound_s}s"
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    elapsed = time.monotonic() - t0
    error = task.exception()
    return (error if error is not None else task.result()), elapsed


async def first_event(client: VerificationClient, rid: str, timeout_s: float) -> Any:
    async for ev in client.watch(rid, timeout_s=timeout_s):
        return ev
    return None


@pytest.fixture
async def client(
    own_redis: tuple[subprocess.Popen[bytes], RedisServer],
) -> AsyncIterator[VerificationClient]:
    async with VerificationClient.from_url(own_redis[1].url, signing_key=KEY,
                                           timeout_s=1) as c:
        yield c


class TestFrozenRedis:
    async def test_wait_ends_by_its_timeout(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
        client: VerificationClient,
    ) -> None:
        """wait(rid, 2) on a Redis that stopped answering raises TimeoutError by
        2 s + READ_GRACE_S (it took 92 s: retries of 15 s socket reads)."""
        rid = await client.submit(user="alice", phone="+12015550100")
        with frozen(own_redis[0]):
            got, elapsed = await ends_within(client.wait(rid, 2), 2 + READ_GRACE_S + MARGIN_S)
        assert isinstance(got, TimeoutError)
        assert elapsed >= 2 - 0.1  # it waited for the outcome first

    async def test_a_first_wait_ends_by_its_timeout(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
    ) -> None:
        """The first wait also starts the subscription: that too is bounded."""
        c = VerificationClient.from_url(own_redis[1].url, signing_key=KEY, timeout_s=1)
        try:
            with frozen(own_redis[0]):
                got, _ = await ends_within(c.wait("0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11", 1),
                                           1 + READ_GRACE_S + MARGIN_S)
            assert isinstance(got, TimeoutError)
        finally:
            await c.aclose()

    async def test_submit_ends_by_the_clients_timeout_and_recovers(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
        client: VerificationClient,
    ) -> None:
        """submit() raises TimeoutError by the client's timeout (1 s), a later submit too,
        and once Redis answers again a submit goes through at once."""
        with frozen(own_redis[0]):
            for _ in range(2):
                got, _ = await ends_within(
                    client.submit(user="alice", phone="+12015550100"), 1 + MARGIN_S)
                assert isinstance(got, TimeoutError)
        got, elapsed = await ends_within(client.submit(user="alice", phone="+12015550100"),
                                         1 + MARGIN_S)
        assert isinstance(got, str)
        assert elapsed < 1

    async def test_verify_ends_by_its_timeout(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
        client: VerificationClient,
    ) -> None:
        with frozen(own_redis[0]):
            got, _ = await ends_within(
                client.verify(user="alice", phone="+12015550100", timeout_s=2),
                2 + READ_GRACE_S + MARGIN_S)
        assert isinstance(got, TimeoutError)

    async def test_watch_ends_by_its_timeout(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
        client: VerificationClient,
    ) -> None:
        with frozen(own_redis[0]):
            got, _ = await ends_within(first_event(client, "x", 2), 2 + READ_GRACE_S + MARGIN_S)
        assert isinstance(got, TimeoutError)

    async def test_an_outcome_still_arrives_when_redis_answers(
        self, own_redis: tuple[subprocess.Popen[bytes], RedisServer],
        client: VerificationClient,
    ) -> None:
        """The bound costs nothing on a Redis that answers: the outcome comes at once."""
        rid = await client.submit(user="alice", phone="+12015550100")
        waiting = asyncio.create_task(client.wait(rid, 5))
        async with Redis.from_url(own_redis[1].url) as redis:
            await Store(redis, result_ttl_s=60, events_maxlen=100,
                        signing_key=KEY.encode()).store_outcome(OutcomeRecord(
                id=rid, user="alice", outcome=Outcome.APPROVED, requested_at=time.time(),
                finished_at=time.time()))
        got, elapsed = await ends_within(waiting, 5)
        assert isinstance(got, OutcomeRecord)
        assert got.outcome is Outcome.APPROVED
        assert elapsed < 1


class TestSigningKey:
    def test_a_client_without_a_key_is_refused(self, redis_server: RedisServer) -> None:
        """A default client accepted a hand-written unsigned 'approved' (found in review):
        with no key and no opt-out, every way of making one is refused, naming both."""
        makers = [
            lambda: VerificationClient.from_url(redis_server.url),
            lambda: VerificationClient(Redis.from_url(redis_server.url)),
            lambda: VerificationClient.from_settings(Settings(redis_url=redis_server.url)),
        ]
        for make in makers:
            with pytest.raises(SettingsError, match=r"CALLMFA_SIGNING_KEY.*insecure_unsigned"):
                make()

    async def test_the_opt_out_accepts_an_unsigned_outcome(
        self, redis_server: RedisServer, redis: Redis
    ) -> None:
        """insecure_unsigned=True (or CALLMFA_INSECURE_UNSIGNED=1) is the explicit way to
        believe unsigned outcomes; a key, when given, is still required of every outcome."""
        for c in (VerificationClient.from_url(redis_server.url, insecure_unsigned=True),
                  VerificationClient.from_settings(
                      Settings(redis_url=redis_server.url, insecure_unsigned=1))):
            async with c:
                rid = await c.submit(user="alice", phone="+12015550100")
                await redis.set(result_key(rid), unsigned(rid))
                got = await c.wait(rid, 1)
                assert got is not None
                assert got.outcome is Outcome.APPROVED
        async with VerificationClient.from_url(redis_server.url, signing_key=KEY,
                                               insecure_unsigned=True) as c:
            rid = await c.submit(user="alice", phone="+12015550100")
            await redis.set(result_key(rid), unsigned(rid))
            with pytest.raises(OutcomeSignatureError, match="unsigned"):
                await c.wait(rid, 1)


    async def test_while_rotating_outcomes_of_the_previous_key_are_believed(
        self, redis_server: RedisServer, redis: Redis
    ) -> None:
        """The sign-in side takes the new key first, with the old one as previous
        (CALLMFA_SIGNING_KEY_PREVIOUS): outcomes signed before callmfa switches keys, and
        after, are both believed; one signed by any other key is not."""
        old, new = KEY, "n" * 32
        settings = Settings(redis_url=redis_server.url, signing_key=new,
                            signing_key_previous=old)
        async with VerificationClient.from_settings(settings) as c:
            for signer, believed in ((old, True), (new, True), ("x" * 32, False)):
                rid = await c.submit(user="alice", phone="+12015550100")
                await Store(redis, result_ttl_s=60, events_maxlen=100,
                            signing_key=signer.encode()).store_outcome(OutcomeRecord(
                    id=rid, user="alice", outcome=Outcome.APPROVED, requested_at=time.time(),
                    finished_at=time.time()))
                if believed:
                    got = await c.wait(rid, 1)
                    assert got is not None
                    assert got.outcome is Outcome.APPROVED
                else:
                    with pytest.raises(OutcomeSignatureError, match="mismatch"):
                        await c.wait(rid, 1)


def unsigned(rid: str) -> str:
    """A hand-written 'approved' for ``rid``, with no signature."""
    return OutcomeRecord(id=rid, user="alice", outcome=Outcome.APPROVED,
                         requested_at=time.time(), finished_at=time.time()).to_json()


class TestExpiry:
    async def test_verify_expires_the_request_with_its_timeout(
        self, redis_server: RedisServer, redis: Redis
    ) -> None:
        """verify(timeout_s=1) queued a request that expired after 120 s: a sign-in that
        gave up could still ring the phone long after (found in review). It now expires
        with the timeout, unless expires_in_s says otherwise."""
        async with VerificationClient.from_url(redis_server.url, signing_key=KEY) as c:
            for options, expected_s in (({}, 1), ({"expires_in_s": 30}, 30)):
                before = time.time()
                assert await c.verify(user="alice", phone="+12015550100", timeout_s=1,
                                      **options) is None
                [(_, fields)] = await redis.xrevrange(REQUESTS, count=1)
                expires_at = parse_iso(json.loads(fields[b"request"])["expires_at"])
                assert before + expected_s - 0.01 <= expires_at <= time.time() + expected_s


class TestDecodedReplies:
    async def test_a_client_on_decode_responses_redis_watches_and_waits(
        self, redis_server: RedisServer, redis: Redis
    ) -> None:
        """watch() called .decode() on str entry ids and broke on a
        Redis(decode_responses=True), which the constructor accepts and submit() handles
        (found in review): every call works on one."""
        async with Redis.from_url(redis_server.url, decode_responses=True) as text:
            c = VerificationClient(text, signing_key=KEY)
            try:
                since = int(time.time() * 1000) - 1
                rid = await c.submit(user="alice", phone="+12015550100")
                for event in ("queued", "finished"):
                    await redis.xadd(EVENTS, {"id": rid, "event": event, "at": "t"})
                events = [ev.event async for ev in c.watch(rid, since_ms=since, timeout_s=2)]
                assert events == ["queued", "finished"]

                await Store(redis, result_ttl_s=60, events_maxlen=100,
                            signing_key=KEY.encode()).store_outcome(OutcomeRecord(
                    id=rid, user="alice", outcome=Outcome.APPROVED, requested_at=time.time(),
                    finished_at=time.time()))
                got = await c.wait(rid, 2)
                assert got is not None
                assert got.outcome is Outcome.APPROVED
            finally:
                await c.stop()
