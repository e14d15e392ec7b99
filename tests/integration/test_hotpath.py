"""The hot path (issue 16): the Store's scripts and the read of requests on connections of
the client's pool, without its layers, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ivr.storage.hotpath import HotPath, next_published, pack_python
from ivr.storage.store import RedisTraffic, connect, lean

from ..conftest import RedisServer

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def counted(redis_server: RedisServer, redis: Redis
                  ) -> AsyncIterator[tuple[Redis, RedisTraffic]]:
    """callmfa's own client (a blocking pool of 8, counted) on the emptied database."""
    traffic = RedisTraffic()
    client = connect(redis_server.url, max_connections=8, timeout_s=2.0, traffic=traffic)
    yield client, traffic
    await client.aclose()


class TestPack:
    @given(st.lists(st.one_of(st.text(), st.binary(), st.integers()), min_size=1, max_size=40))
    def test_without_hiredis_packs_as_hiredis_does(self, args: list[str | bytes | int]) -> None:
        assert pack_python(args) == hiredis.pack_command(tuple(args))


class TestHotPath:
    async def test_a_command_and_a_script_are_counted(
        self, counted: tuple[Redis, RedisTraffic]
    ) -> None:
        """One command and one round trip each, as the client counts them (a script once
        Redis has it cached)."""
        client, traffic = counted
        hot = HotPath(client)
        script = hot.register_script(ECHO)
        await script(keys=["a"], args=[6])
        before = (traffic.commands, traffic.round_trips)
        assert await hot.execute("SET", "k", 42) == b"OK"
        assert await script(keys=["a"], args=[7]) == [b"a", b"7"]
        assert (traffic.commands, traffic.round_trips) == (before[0] + 2, before[1] + 2)
        assert await client.get("k") == b"42"

    async def test_a_script_redis_lost_is_run_by_its_text(
        self, counted: tuple[Redis, RedisTraffic]
    ) -> None:
        """NOSCRIPT (a restarted or newly promoted primary): EVAL, which caches it again."""
        client, _ = counted
        hot = HotPath(client)
        script = hot.register_script(ECHO)
        await client.script_flush()
        assert await script(keys=["a"], args=["b"]) == [b"a", b"b"]
        assert await client.script_exists(script.sha) == [True]

    async def test_an_error_reply_is_raised_and_the_connection_kept(
        self, counted: tuple[Redis, RedisTraffic]
    ) -> None:
        client, _ = counted
        hot = HotPath(client)
        with pytest.raises(ResponseError, match="unknown command"):
            await hot.execute("NOSUCHCOMMAND")
        assert await hot.execute("PING") == b"PONG"

    async def test_replies_come_in_order_and_errors_after_all_are_read(
        self, counted: tuple[Redis, RedisTraffic]
    ) -> None:
        """Two commands in one write: the first error is raised once both replies are read,
        so the next command reads its own reply."""
        client, traffic = counted
        hot = HotPath(client)
        await hot.execute("PING")
        before = traffic.round_trips
        with pytest.raises(ResponseError):
            await hot.run((("INCR", "k", "x"), ("SET", "k", "v")))
        assert traffic.round_trips == before + 1
        assert await hot.execute("GET", "k") == b"v"

    async def test_a_killed_connection_is_retried_on_a_new_one(
        self, counted: tuple[Redis, RedisTraffic], redis: Redis
    ) -> None:
        """The server closed the connection (a restart, a failover): the command runs again
        under the connection's Retry, on a new connection."""
        client, _ = counted
        hot = HotPath(client)
        first = await hot.execute("CLIENT", "ID")
        await redis.client_kill_filter(_id=first)
        assert await hot.execute("SET", "k", "after") == b"OK"
        assert await hot.execute("GET", "k") == b"after"
        assert await hot.execute("CLIENT", "ID") != first

    async def test_a_cancelled_command_leaves_no_reply_behind(
        self, counted: tuple[Redis, RedisTraffic], redis: Redis
    ) -> None:
        """Cancelled between its write and its reply: the connection is closed, so the next
        command does not read the late reply as its own."""
        client, _ = counted
        hot = HotPath(client)
        waiting = asyncio.create_task(hot.execute("BLPOP", "list", 5))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await redis.rpush("list", "late")
        assert await hot.execute("PING") == b"PONG"
        assert await hot.execute("LRANGE", "list", 0, -1) == [b"late"]

    async def test_beyond_its_own_connections_it_borrows_from_the_pool(
        self, counted: tuple[Redis, RedisTraffic]
    ) -> None:
        """A pool of 8 lends the hot path 2 to keep; the others are given back."""
        client, _ = counted
        hot = HotPath(client)
        replies = await asyncio.gather(*(hot.execute("BLPOP", "none", 0.2) for _ in range(5)))
        assert replies == [None] * 5
        assert await client.ping()
        pool = client.connection_pool
        assert len(pool._in_use_connections) == 2  # type: ignore[attr-defined]  # redis-py's

    async def test_an_unreachable_redis_raises_connection_error(self) -> None:
        """What the callers' retries (``retrying``, the Sentinel failover) catch."""
        client = connect("redis://127.0.0.1:1/0", max_connections=8, timeout_s=0.5)
        try:
            with pytest.raises(RedisConnectionError):
                await HotPath(client).execute("PING")
        finally:
            await client.aclose()


    async def test_a_reply_that_does_not_come_in_time_is_a_timeout(
        self, redis_server: RedisServer
    ) -> None:
        """A read past the socket timeout closes the connection and raises redis-py's
        TimeoutError (a blocked pop outlasts it here); the next command gets a new one."""
        pool = BlockingConnectionPool.from_url(
            redis_server.url, connection_class=lean(Connection, None), socket_timeout=0.2,
            retry=Retry(NoBackoff(), 0))
        client = Redis.from_pool(pool)
        try:
            hot = HotPath(client)
            with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
                await hot.execute("BLPOP", "none", 2)
            assert await hot.execute("PING") == b"PONG"
        finally:
            await client.aclose()


class TestNextPublished:
    async def published_within(self, pubsub: PubSub, seconds: float) -> object:
        """The first message's data in ``seconds`` (None replies skipped)."""
        async with asyncio.timeout(seconds):
            while (data := await next_published(pubsub, 0.2)) is None:
                pass
        return data

    async def test_a_message_s_data_and_nothing_else(
        self, counted: tuple[Redis, RedisTraffic], redis: Redis
    ) -> None:
        """The subscription's confirmation is None; a message gives its data."""
        client, _ = counted
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe("ch")
            assert await next_published(pubsub, 0.5) is None  # the confirmation
            assert await next_published(pubsub, 0.1) is None  # nothing yet
            await redis.publish("ch", "one")
            assert await self.published_within(pubsub, 2.0) == b"one"
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: untyped

    async def test_a_killed_subscription_is_made_again(
        self, counted: tuple[Redis, RedisTraffic], redis: Redis
    ) -> None:
        """The server closed the subscriber's connection: redis-py reconnects and subscribes
        again, and the next message arrives."""
        client, _ = counted
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe("ch")
            assert await next_published(pubsub, 0.5) is None
            assert await redis.client_kill_filter(_type="pubsub") == 1
            async with asyncio.timeout(5.0):
                while await redis.pubsub_numsub("ch") != [(b"ch", 1)]:
                    await next_published(pubsub, 0.1)
            await redis.publish("ch", "two")
            assert await self.published_within(pubsub, 2.0) == b"two"
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: untyped
