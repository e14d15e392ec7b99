"""Helpers for the integration tests: scripted TCP peers, polling with a deadline, and the
real IVR behind a real FastAGI server (the fake Asterisk that calls it is in
fake_asterisk.py)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.session import VerificationIvr
from ivr.settings import Settings
from ivr.storage.keys import SECURITY_CHANNEL
from ivr.storage.store import Store
from ivr.transport.fastagi import FastAgiServer

COMMAND_TIMEOUT_S = 1.0


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = 5.0,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` (plain or async) until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not true after {timeout_s}s")
        await asyncio.sleep(0.01)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes | None:
    """Everything the server sends until it closes the connection.

    None if the connection is still open after ``timeout_s``. A reset counts as closed:
    a server that closes with unread input in its buffer makes the kernel send RST.
    """
    data = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a client connection, ignoring a peer that is already gone."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


@dataclass
class Ivr:
    """The IVR under test: its FastAGI port, its settings and the store it writes to."""

    server: FastAgiServer
    settings: Settings
    store: Store
    redis: Redis
    refused: list[str] = field(default_factory=list)  # reasons, as the metrics count them

    @property
    def port(self) -> int:
        return self.server.port

    async def idle(self) -> None:
        """Wait until every FastAGI session has ended."""
        await eventually(
            lambda: self.server.active_sessions == 0, timeout_s=COMMAND_TIMEOUT_S + 2,
            what="the IVR session to end",
        )


StartIvr = Callable[..., Awaitable[Ivr]]


@pytest.fixture
async def start_ivr(redis: Redis) -> AsyncIterator[StartIvr]:
    """Start the real VerificationIvr behind a real FastAGI server on a free port.

    Settings: a 0.5 s input timeout and 2 attempts, then the keyword overrides.
    """
    servers: list[FastAgiServer] = []

    async def start(max_sessions: int = 10, **overrides: Any) -> Ivr:
        store = Store(redis, result_ttl_s=60, events_maxlen=1000)
        settings = Settings(**{"input_timeout_s": 0.5, "max_attempts": 2,
                               "agi_header_timeout_s": 1.0, **overrides})
        refused: list[str] = []
        observer = SimpleNamespace(session_refused=refused.append)
        server = FastAgiServer(
            {"verify": VerificationIvr(settings, store, observer=observer)},
            host="127.0.0.1", port=0, header_timeout_s=settings.agi_header_timeout_s,
            command_timeout_s=COMMAND_TIMEOUT_S, max_sessions=max_sessions,
        )
        await server.start()
        servers.append(server)
        return Ivr(server, settings, store, redis, refused)

    yield start
    for server in servers:
        await server.close(grace_s=1.0)


@pytest.fixture
async def ivr(start_ivr: StartIvr) -> Ivr:
    """The IVR with the default test settings."""
    return await start_ivr()


class Alerts:
    """What a security subscriber of callmfa:security receives."""

    def __init__(self, redis: Redis) -> None:
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self) -> Alerts:
        await self.pubsub.subscribe(SECURITY_CHANNEL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def take(self, count: int, timeout_s: float = 5.0) -> list[dict[str, str]]:
        """The next ``count`` published entries, decoded."""
        out: list[dict[str, str]] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(out) < count and asyncio.get_running_loop().time() < deadline:
            message = await self.pubsub.get_message(timeout=0.1)
            if message is not None:
                out.append(json.loads(message["data"]))
        return out
