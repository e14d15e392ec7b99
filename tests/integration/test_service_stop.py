"""`callmfa serve` closes every part it started, however its run ends: a part that fails to
start, or an originator that fails while calls are being answered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.app import Service
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.guard import Guard
from ivr.storage.keys import AUDIT, AUDIT_GROUP

from ..conftest import RedisServer, free_port
from .conftest import eventually


def _settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    return Settings(**{"redis_url": redis_server.url, "agi_port": free_port(), "health_port": 0,
                       "metrics_port": 0, "signing_key": "k" * 32, "shutdown_grace_s": 0.5,
                       **overrides})


WEBHOOK_SECRET = "whsec_" + "QUJD" * 8


async def _has_groups(redis: Redis) -> bool:
    try:
        groups = await redis.xinfo_groups(AUDIT)
    except Exception:  # noqa: BLE001 - no stream yet
        return False
    return any(g["name"] in (AUDIT_GROUP, AUDIT_GROUP.encode()) for g in groups)


async def _stop_with_a_session_open(service: Service, stop: asyncio.Event,
                                    running: asyncio.Task[None]) -> float:
    """Once a FastAGI session is open, stop ``service``: how long its run took to end."""
    await eventually(lambda: service.agi is not None and service.agi.active_sessions > 0,
                     what="the FastAGI session is open")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop.set()
    await asyncio.wait_for(running, 20)
    return loop.time() - started


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_a_part_that_fails_to_start_leaves_no_fastagi_listener(
    redis_server: RedisServer,
) -> None:
    """The health port is taken: start-up fails after the FastAGI listener is up, and the
    listener is closed before the error is raised."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = _settings(redis_server, roles="agi", health_port=taken.getsockname()[1])
        with pytest.raises(OSError, match="address already in use"):
            await asyncio.wait_for(Service(settings).run(asyncio.Event()), 10)
    assert await _refused(settings.agi_port)


async def test_an_originator_that_fails_closes_the_fastagi_sessions_and_listener(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The originator's error is raised once the FastAGI side is closed too: its listener,
    and a session still open, are not left behind."""
    settings = _settings(redis_server, roles="agi,originator", ami_port=free_port())
    service = Service(settings)
    failed = asyncio.Event()

    async def fail() -> None:
        await failed.wait()
        raise RuntimeError("the originator failed")

    assert service.originator is not None
    monkeypatch.setattr(service.originator, "run", fail)
    running = asyncio.create_task(service.run(asyncio.Event()))
    async with asyncio.timeout(10):
        while True:  # the listener is up once a connection is taken
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", settings.agi_port)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
    try:
        failed.set()
        with pytest.raises(RuntimeError, match="the originator failed"):
            await asyncio.wait_for(running, 10)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the session was closed
    finally:
        writer.close()
    assert await _refused(settings.agi_port)


async def test_a_stop_lasts_the_shutdown_grace_once_not_once_per_part(
    redis_server: RedisServer,
) -> None:
    """A call still in flight in the originator and a FastAGI session still open when the
    stop comes: the grace is one deadline for the whole drain. It was given to each part
    in turn (RADIUS, originator, FastAGI), so a 30 s grace stopped in 60 s or more, past
    systemd's TimeoutStopSec (45 s) and compose's stop_grace_period (40 s): a SIGKILL."""
    grace_s = 1.0
    settings = _settings(redis_server, roles="agi,originator", ami_port=free_port(),
                         shutdown_grace_s=grace_s, agi_header_timeout_s=30.0)
    service = Service(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", settings.agi_port)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
    assert service.originator is not None
    call = asyncio.create_task(asyncio.Event().wait())  # a call that outlasts the grace
    service.originator._tasks[call] = "1-0"
    try:
        took = await _stop_with_a_session_open(service, stop, running)
    finally:
        writer.close()
        call.cancel()
    assert call.cancelled()
    assert took < grace_s * 1.5, f"the stop took {took:.2f} s for a grace of {grace_s} s"


async def test_a_webhook_that_never_answers_is_cut_at_the_same_deadline(
    redis_server: RedisServer,
) -> None:
    """A delivery still in flight when the stop comes (a receiver that never answers), and
    a FastAGI session that outlasts the grace: the webhook sender got min(grace,
    CALLMFA_WEBHOOK_TIMEOUT_S) more after the drain, past the one grace. It is cut at the
    same deadline (and sent again later: it stays pending)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    receiver = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = receiver.sockets[0].getsockname()[1]
    grace_s = 1.0
    settings = _settings(redis_server, roles="agi,webhooks", shutdown_grace_s=grace_s,
                         agi_header_timeout_s=30.0,
                         webhook_timeout_s=10.0, webhook_secret=WEBHOOK_SECRET,
                         security_webhook_url=f"http://127.0.0.1:{port}/hook")
    stop = asyncio.Event()
    service = Service(settings)
    running = asyncio.create_task(service.run(stop))
    try:
        async with Redis.from_url(redis_server.url) as redis:
            await eventually(lambda: _has_groups(redis), what="the delivery groups")
            await Guard(redis, limits(settings)).record("fraud_reported", "alice",
                                                        actor="ivr", id="r1")
        await eventually(lambda: bool(accepted), what="the delivery is in flight")
        _, session = await asyncio.open_connection("127.0.0.1", settings.agi_port)
        accepted.append(session)  # closed at the end
        took = await _stop_with_a_session_open(service, stop, running)
    finally:
        for writer in accepted:
            writer.close()
        receiver.close()
        await receiver.wait_closed()
    assert took < grace_s * 1.5, f"the stop took {took:.2f} s for a grace of {grace_s} s"
