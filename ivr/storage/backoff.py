"""Backoff with jitter, and retrying a synchronous Redis operation (the classic AGI script).

Nothing here loads structlog or asyncio: the classic script imports it on every call, on
an Asterisk host that may have neither (see :mod:`ivr.storage.sync`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# What a Redis restart or a network blip raises; anything else is a real error.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def backoff(attempt: int, *, base_s: float = 0.05, cap_s: float = 2.0) -> float:
    """Exponential backoff with full jitter: a random wait in [0, min(cap, base * 2^n)]."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))  # noqa: S311 - not crypto


def retrying_sync(
    operation: Callable[[], T],
    *,
    for_s: float,
    on_retry: Callable[[Exception, int, float], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, retrying transient Redis failures for ``for_s``
    (as :func:`ivr.storage.retry.retrying`, blocking). ``on_retry(error, attempt, wait_s)``
    is told of each retry before its wait."""
    deadline = time.monotonic() + for_s
    attempt = 0
    while True:
        try:
            return operation()
        except TRANSIENT as e:
            if time.monotonic() >= deadline:
                raise
            wait = min(backoff(attempt), max(0.0, deadline - time.monotonic()))
            attempt += 1
            if on_retry is not None:
                on_retry(e, attempt, wait)
            time.sleep(wait)
