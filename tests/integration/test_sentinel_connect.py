"""Connecting through a real redis-sentinel: a primary that refuses is retried for
CALLMFA_REDIS_FAILOVER_S, once per retry, and a refused login is not retried at all.

The Sentinels name three primaries: ``live``, a redis-server with a password, ``dead``, a
port nothing listens on, and ``frozen``, a port that takes connections and never answers
(a SIGSTOPped primary); the last two are named until their down-after-milliseconds of a
minute ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ivr.app import redis_failover
from ivr.settings import Settings
from ivr.storage.sentinel import budget_for, retries_for
from ivr.storage.store import connect_for
from ivr.storage.sync import SyncStore

from ..conftest import free_port, reply_of, start_redis, wait_until

PASSWORD = "sentinel-test-password"
FAILOVER_S = 1.0  # retries_for(1.0) = 9: one attempt and nine retries


@dataclass(frozen=True)
class Sentinels:
    sentinel_port: int
    live_port: int
    dead_port: int
    frozen_port: int

    def settings(self, service: str, password: str = PASSWORD) -> Settings:
        return Settings(redis_url=f"redis://:{password}@/0",
                        redis_sentinels=f"127.0.0.1:{self.sentinel_port}",
                        redis_sentinel_service=service, redis_failover_s=FAILOVER_S)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    """redis-server (with a password) and one redis-sentinel naming it and a dead port."""
    workdir: Path = tmp_path_factory.mktemp("sentinel")
    server, live = start_redis(workdir, "--requirepass", PASSWORD)
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(64)  # connections complete in the kernel; nothing is ever read or answered
    s = Sentinels(free_port(), live.port, free_port(), frozen.getsockname()[1])
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {s.sentinel_port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor live 127.0.0.1 {s.live_port} 1\n"
        f"sentinel auth-pass live {PASSWORD}\n"
        f"sentinel monitor dead 127.0.0.1 {s.dead_port} 1\n"
        "sentinel down-after-milliseconds dead 60000\n"
        f"sentinel monitor frozen 127.0.0.1 {s.frozen_port} 1\n"
        "sentinel down-after-milliseconds frozen 60000\n")
    sentinel = subprocess.Popen(["redis-sentinel", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for service in ("live", "dead", "frozen"):
            ask = f"SENTINEL GET-MASTER-ADDR-BY-NAME {service}\r\n".encode()
            wait_until(lambda ask=ask: b"127.0.0.1" in (reply_of(s.sentinel_port, ask) or b""),
                       10, "redis-sentinel")
        yield s
    finally:
        for proc in (sentinel, server):
            proc.terminate()
            proc.wait(10)
        frozen.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Connections redis-py's asyncio client opens, by port."""
    counted: Counter[int] = Counter()
    open_connection = asyncio.open_connection

    async def counting(host: Any = None, port: Any = None, **kw: Any) -> Any:
        counted[int(port)] += 1
        return await open_connection(host, port, **kw)

    monkeypatch.setattr(asyncio, "open_connection", counting)
    return counted


@pytest.fixture
def sync_connects(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Connections redis-py's sync client opens, by port."""
    counted: Counter[int] = Counter()
    connect = socket.socket.connect

    def counting(self: socket.socket, address: Any) -> None:
        counted[int(address[1])] += 1
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    return counted


class TestRetriesThroughTheSentinels:
    async def test_a_refusing_primary_is_tried_once_per_retry(
        self, sentinels: Sentinels, connects: Counter[int]
    ) -> None:
        """Each retry of the command asks the Sentinels and tries their primary once:
        redis-py's retry of the connect inside the command's had made it 82 tries, not
        10, and about a minute at the default budget's 126 (126 squared, over an hour)."""
        redis = connect_for(sentinels.settings("dead"), max_connections=1)
        try:
            with pytest.raises(RedisConnectionError):
                await redis.ping()
        finally:
            await redis.aclose()
        assert connects[sentinels.dead_port] == retries_for(FAILOVER_S) + 1

    def test_the_classic_scripts_client_too(
        self, sentinels: Sentinels, sync_connects: Counter[int]
    ) -> None:
        store = SyncStore.connect(sentinels.settings("dead"))
        try:
            with pytest.raises(RedisConnectionError):
                store.call_info("some-call")
        finally:
            store.close()
        assert sync_connects[sentinels.dead_port] == retries_for(FAILOVER_S) + 1

    async def test_a_frozen_primary_is_retried_for_a_time_not_a_count(
        self, sentinels: Sentinels
    ) -> None:
        """Each try against a primary that never answers waits its socket timeout: the
        count of retries (retries_for) made a command last retries x timeout, about ten
        minutes at the defaults (126 x 5 s) for CALLMFA_REDIS_FAILOVER_S=30 (found in
        review). No retry starts once budget_for(the failover time) has gone by."""
        settings = dataclasses.replace(sentinels.settings("frozen"), connect_timeout_s=0.5)
        redis = connect_for(settings, max_connections=1)
        started = time.monotonic()
        try:
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                await asyncio.wait_for(redis.ping(), 30)
        finally:
            await redis.aclose()
        took = time.monotonic() - started
        # the last try starts before the budget and waits its 0.5 s (10 tries took 8.2 s)
        assert took < budget_for(FAILOVER_S) + 2.0, took

    def test_the_classic_scripts_client_stops_at_the_budget_too(
        self, sentinels: Sentinels
    ) -> None:
        settings = dataclasses.replace(sentinels.settings("frozen"), connect_timeout_s=0.5)
        store = SyncStore.connect(settings)
        started = time.monotonic()
        try:
            with pytest.raises((RedisConnectionError, RedisTimeoutError)):
                store.call_info("some-call")
        finally:
            store.close()
        # (10 tries took 7.9 s)
        assert time.monotonic() - started < budget_for(FAILOVER_S) + 2.0

    async def test_a_refused_login_is_not_retried(
        self, sentinels: Sentinels, connects: Counter[int]
    ) -> None:
        redis = connect_for(sentinels.settings("live", "wrong"), max_connections=1)
        try:
            with pytest.raises(AuthenticationError):
                await redis.ping()
        finally:
            await redis.aclose()
        assert connects[sentinels.live_port] == 1

    def test_the_classic_scripts_refused_login_is_not_retried(
        self, sentinels: Sentinels, sync_connects: Counter[int]
    ) -> None:
        """The classic script's client had retried it inside its own retries: the script
        hung (still retrying after ten minutes) where it should fail at once."""
        store = SyncStore.connect(sentinels.settings("live", "wrong"))
        try:
            with pytest.raises(AuthenticationError):
                store.call_info("some-call")
        finally:
            store.close()
        assert sync_connects[sentinels.live_port] == 1

    async def test_the_right_password_still_connects(self, sentinels: Sentinels) -> None:
        redis = connect_for(sentinels.settings("live"), max_connections=1)
        try:
            assert await redis.ping()
        finally:
            await redis.aclose()
        store = SyncStore.connect(sentinels.settings("live"))
        try:
            assert store.call_info("some-call") == {}
        finally:
            store.close()


class TestOneSentinelDown:
    """/healthz with one Sentinel of several down: the others answer, the primary they name
    answers its PING, so no failover is reported (docs/scaling.md: "one Sentinel dies | 2
    of 3 still make the quorum ... | none"). Each Sentinel was asked with redis-py's
    default retries (ten): a refused port cost 3.3 s and a silent host ten connect
    timeouts, past /healthz's 2 s bound, so /healthz said ``redis_failover: true`` and
    answered 503 for as long as one Sentinel was down."""

    @staticmethod
    def _settings(sentinels: Sentinels, other: int) -> Settings:
        return Settings(redis_url=f"redis://:{PASSWORD}@/0",
                        redis_sentinels=f"127.0.0.1:{sentinels.sentinel_port},127.0.0.1:{other}",
                        redis_sentinel_service="live", connect_timeout_s=5.0)

    async def test_a_refused_sentinel_is_no_failover(self, sentinels: Sentinels) -> None:
        assert await redis_failover(self._settings(sentinels, free_port())) is False

    async def test_a_silent_sentinel_is_no_failover(self, sentinels: Sentinels) -> None:
        with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
            assert await redis_failover(
                self._settings(sentinels, silent.getsockname()[1])) is False

    async def test_every_sentinel_down_is_still_a_failover(self, sentinels: Sentinels) -> None:
        settings = Settings(redis_url=f"redis://:{PASSWORD}@/0",
                            redis_sentinels=f"127.0.0.1:{free_port()}",
                            redis_sentinel_service="live")
        assert await redis_failover(settings) is True
