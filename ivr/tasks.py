"""Small helpers for owning asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until they are done; their results are dropped.

    Only for tasks whose outcome no longer matters; a task that failed before the
    cancel keeps its exception to itself. A task that is still running after a second
    is cancelled again: on Python 3.11 a cancel that lands as an ``asyncio.timeout`` inside
    a library (redis-py's) expires is taken for the timeout and lost.
    """
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()


async def drain(tasks: Collection[asyncio.Future[Any]], grace_s: float) -> int:
    """Let ``tasks`` finish for up to ``grace_s``, then cancel the rest and wait for them.

    Returns how many had to be cancelled (a graceful shutdown's leftovers).
    """
    if not tasks:
        return 0
    _, pending = await asyncio.wait(set(tasks), timeout=grace_s)
    await cancel_and_wait(*pending)
    return len(pending)


def either(a: asyncio.Future[Any], b: asyncio.Future[Any], *, timeout_s: float
           ) -> Coroutine[Any, Any, None]:
    """Until ``a`` or ``b`` is done, or ``timeout_s`` has passed: asyncio.wait's job, with one
    callback and no set or inner coroutines to hold for the call's length (the coroutine
    returned is the waiting one itself)."""
    return _first((a, b), timeout_s)


async def within(future: asyncio.Future[T], timeout_s: float) -> T:
    """``future``'s result, or TimeoutError after ``timeout_s``; ``future`` itself is never
    cancelled (``asyncio.wait_for(asyncio.shield(future), timeout_s)``, without the shield's
    future and wait_for's own)."""
    await _first((future,), timeout_s)
    if not future.done():
        raise TimeoutError
    return future.result()


async def _first(futures: tuple[asyncio.Future[Any], ...], timeout_s: float) -> None:
    if any(f.done() for f in futures):
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = loop.call_later(timeout_s, wake)
    for f in futures:
        f.add_done_callback(wake)
    try:
        await woken
    finally:
        timer.cancel()
        for f in futures:
            f.remove_done_callback(wake)
