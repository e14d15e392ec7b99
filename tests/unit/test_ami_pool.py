"""AmiPool's slots: one freed slot wakes one waiter, and no wake-up is lost."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ivr.transport.ami import AmiClient
from ivr.transport.ami_pool import AmiPool


class _Client:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.endpoint = "127.0.0.1:5038"
        self.reconnects = 0


def _pool(capacity: int) -> tuple[AmiPool, AmiClient]:
    client = cast(AmiClient, _Client())
    return AmiPool([client], capacity=capacity), client


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class TestSlots:
    async def test_a_freed_slot_goes_to_one_waiter_of_many(self) -> None:
        pool, client = _pool(capacity=1)
        assert await pool.acquire(1) is client
        picks = 0
        real_pick = pool._pick

        def counting() -> Any:
            nonlocal picks
            picks += 1
            return real_pick()

        pool._pick = counting  # type: ignore[method-assign]
        waiters = [asyncio.create_task(pool.acquire(5)) for _ in range(50)]
        await _settle()
        picks = 0
        await pool.release(client)
        await _settle()
        assert sum(w.done() for w in waiters) == 1
        assert picks <= 3  # not one per waiter
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    async def test_a_waiter_cancelled_after_its_wake_up_passes_it_on(self) -> None:
        pool, client = _pool(capacity=1)
        assert await pool.acquire(1) is client
        first = asyncio.create_task(pool.acquire(5))
        second = asyncio.create_task(pool.acquire(5))
        await _settle()
        await pool.release(client)  # wakes `first`...
        first.cancel()  # ...which leaves before it runs
        assert await asyncio.wait_for(second, 1) is client
        assert first.cancelled()

    async def test_a_waiter_timed_out_passes_it_on(self) -> None:
        pool, client = _pool(capacity=1)
        assert await pool.acquire(1) is client
        assert await pool.acquire(0.01) is None
        waiter = asyncio.create_task(pool.acquire(5))
        await _settle()
        await pool.release(client)
        assert await asyncio.wait_for(waiter, 1) is client

    async def test_more_room_wakes_more_waiters(self) -> None:
        """A capacity raised by a reload: a release lets every waiter that fits in."""
        pool, client = _pool(capacity=1)
        assert await pool.acquire(1) is client
        waiters = [asyncio.create_task(pool.acquire(5)) for _ in range(3)]
        await _settle()
        pool.capacity = 4
        await pool.release(client)
        assert [await asyncio.wait_for(w, 1) for w in waiters] == [client] * 3
