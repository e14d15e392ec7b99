"""Small helpers for owning asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


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
