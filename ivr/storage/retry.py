"""Retrying Redis operations across a Redis restart, with backoff and jitter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError

from .backoff import TRANSIENT, backoff

__all__ = ["TRANSIENT", "LoginNotRetried", "backoff", "redis_retry", "retrying"]

log = structlog.get_logger("ivr.retry")

T = TypeVar("T")


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


class LoginNotRetried(Retry):
    """redis-py's retry of a command on a new connection, except after a refused login,
    and (with ``budget_s``) not once that long has gone by since the command's first try.

    redis-py makes ``AuthenticationError`` a ``ConnectionError``, so its ``Retry`` retries
    it: a client without a password (the default user off) opened 36 connections over
    12 s for one PING, the health check's retries inside the command's, to end in the
    same error. A wrong or missing password does not heal by itself: it is raised at once.
    A count of retries alone is no bound in time: against a frozen primary each try waits
    its socket timeout (126 tries of 5 s for CALLMFA_REDIS_FAILOVER_S=30).
    """

    def __init__(self, backoff: AbstractBackoff, retries: int, *,
                 budget_s: float | None = None) -> None:
        super().__init__(backoff, retries)
        self._budget_s = budget_s

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., object],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        """Run ``do`` as redis-py does, an ``AuthenticationError`` never retried, nor any
        error past the budget."""
        ends = None if self._budget_s is None else time.monotonic() + self._budget_s

        def retryable(error: Exception) -> bool:
            return not isinstance(error, AuthenticationError) and (
                ends is None or time.monotonic() < ends) and (
                is_retryable is None or is_retryable(error))
        return await super().call_with_retry(do, fail, retryable, with_failure_count)


def redis_retry(retries: int, *, base_s: float, cap_s: float,
                budget_s: float | None = None) -> LoginNotRetried:
    """The retry of callmfa's Redis clients: ``retries`` times, full jitter up to ``cap_s``,
    and with ``budget_s`` no retry once that long has gone by."""
    return LoginNotRetried(ExponentialWithJitterBackoff(base=base_s, cap=cap_s), retries=retries,
                           budget_s=budget_s)
