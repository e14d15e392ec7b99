"""Helpers for the integration tests: scripted TCP peers and polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest


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
