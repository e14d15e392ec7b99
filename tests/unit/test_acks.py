"""The originator's batched acknowledgements: every batch is owned until it is done."""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import ConnectionError as RedisConnectionError

from ivr.originator import _Acks


class _RedisDown:
    """A store whose acknowledgements fail as in a Redis outage."""

    def __init__(self) -> None:
        self.tried = asyncio.Event()

    async def ack_all(self, ids: list[str]) -> None:
        self.tried.set()
        raise RedisConnectionError("Connection refused")


async def test_close_cancels_a_batch_that_is_already_retrying() -> None:
    """At stop the handlers waiting for their acknowledgement are cancelled first; a batch
    past its short wait (retrying across the outage) is still stopped by close()."""
    store = _RedisDown()
    acks = _Acks(store)  # type: ignore[arg-type]
    waiter = asyncio.create_task(acks.ack("1-0"))
    await asyncio.wait_for(store.tried.wait(), 5)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    async with asyncio.timeout(5):
        await acks.close()
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
