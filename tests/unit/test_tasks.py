"""ivr.tasks.either: the wait for the first of two futures, with a time limit."""

from __future__ import annotations

import asyncio
import contextlib
import time

from ivr.tasks import either


async def test_returns_when_the_first_is_done() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[int] = loop.create_future()
    b: asyncio.Future[int] = loop.create_future()
    loop.call_soon(a.set_result, 1)
    await either(a, b, timeout_s=5)
    assert a.done()
    assert not b.done()


async def test_returns_when_the_second_is_done() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[int] = loop.create_future()
    b: asyncio.Future[int] = loop.create_future()
    loop.call_soon(b.set_exception, RuntimeError("gone"))
    await either(a, b, timeout_s=5)
    assert b.done()
    assert not a.done()
    b.exception()


async def test_returns_after_the_timeout_and_leaves_no_callback() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[int] = loop.create_future()
    b: asyncio.Future[int] = loop.create_future()
    started = time.monotonic()
    await either(a, b, timeout_s=0.05)
    assert 0.04 <= time.monotonic() - started < 2
    assert not a.done()
    assert not b.done()
    a.set_result(1)  # nothing is woken any more, and nothing fails
    await asyncio.sleep(0)


async def test_a_future_done_already_returns_at_once() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[int] = loop.create_future()
    a.set_result(1)
    await either(a, loop.create_future(), timeout_s=5)


async def test_a_cancelled_wait_removes_its_callbacks() -> None:
    loop = asyncio.get_running_loop()
    a: asyncio.Future[int] = loop.create_future()
    b: asyncio.Future[int] = loop.create_future()
    waiting = asyncio.create_task(either(a, b, timeout_s=5))
    await asyncio.sleep(0)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert waiting.cancelled()
    a.set_result(1)  # its callback is gone: nothing wakes the ended wait
    b.set_result(2)
    await asyncio.sleep(0)
