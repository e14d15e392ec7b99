"""Retrying Redis operations across a Redis restart, with backoff and jitter."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("ivr.retry")

T = TypeVar("T")

# What a Redis restart or a network blip raises; anything else is a real error.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def backoff(attempt: int, *, base_s: float = 0.05, cap_s: float = 2.0) -> float:
    """Exponential backoff with full jitter: a random wait in [0, min(cap, base * 2^n)]."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))  # noqa: S311 - not crypto


async def retrying(operation: Callable[[], Awaitable[T]], *, what: str, for_s: float) -> T:
    """Run ``operation`` until it succeeds, retrying transient Redis failures for ``for_s``."""
    deadline = time.monotonic() + for_s
    attempt = 0
    while True:
        try:
            return await operation()
        except TRANSIENT as e:
            if time.monotonic() >= deadline:
                raise
            wait = backoff(attempt)
            attempt += 1
            log.warning("redis_retrying", operation=what, error=str(e) or type(e).__name__,
                        attempt=attempt, retry_in_s=round(wait, 3))
            await asyncio.sleep(wait)
