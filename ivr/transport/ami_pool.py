"""Several Asterisk servers behind one originator: pick a logged-in one with free capacity."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from ..exceptions import AmiLoginError
from ..tasks import cancel_and_wait
from .ami import AmiClient

log = structlog.get_logger("ivr.ami_pool")


class AmiPool:
    """Keeps every AMI endpoint logged in and hands out the least busy one."""

    def __init__(self, clients: Sequence[AmiClient], *, capacity: int) -> None:
        self.clients = list(clients)
        self.capacity = capacity  # calls at once per Asterisk
        self._busy = {id(c): 0 for c in self.clients}
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Log in to every endpoint once, then keep them logged in in the background.

        A refused login is a configuration error and raises; an unreachable Asterisk is
        only logged: calls go to the others until it is back.
        """
        results = await asyncio.gather(*(c.connect() for c in self.clients),
                                       return_exceptions=True)
        for client, result in zip(self.clients, results, strict=True):
            if isinstance(result, AmiLoginError):
                raise result
            if isinstance(result, Exception):
                log.error("ami_unreachable", endpoint=client.endpoint, error=str(result))
        for client in self.clients:
            self._tasks.append(asyncio.create_task(client.maintain()))
            self._tasks.append(asyncio.create_task(self._watch(client)))

    async def _watch(self, client: AmiClient) -> None:
        while True:
            await client.connected.wait()
            await self._notify()
            await client.lost.wait()
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _pick(self) -> AmiClient | None:
        ready = [c for c in self.clients
                 if c.connected.is_set() and self._busy[id(c)] < self.capacity]
        return min(ready, key=lambda c: self._busy[id(c)], default=None)

    async def acquire(self, timeout_s: float) -> AmiClient | None:
        """A logged-in Asterisk with a free slot, waiting up to ``timeout_s``; None if none.

        A freed slot wakes one waiter, not all of them (hundreds of calls may wait);
        a waiter that leaves, with or without a slot, wakes the next while room is left,
        so that no wake-up is lost (asyncio's Condition drops the one a cancelled
        waiter got)."""
        async with self._changed:
            try:
                async with asyncio.timeout(max(timeout_s, 0)):
                    client = await self._changed.wait_for(self._pick)
            except TimeoutError:
                self._pass_on()
                return None
            except asyncio.CancelledError:
                self._pass_on()
                raise
            self._busy[id(client)] += 1
            self._pass_on()
            return client

    def _pass_on(self) -> None:
        if self._pick() is not None:
            self._changed.notify(1)

    async def release(self, client: AmiClient) -> None:
        """A call placed through ``client`` is over."""
        async with self._changed:
            self._busy[id(client)] -= 1
            self._changed.notify(1)

    def status(self) -> dict[str, dict[str, object]]:
        """Per endpoint: logged in, calls in flight, reconnects (for /healthz)."""
        return {c.endpoint: {"logged_in": c.connected.is_set(), "in_flight": self._busy[id(c)],
                             "reconnects": max(c.reconnects, 0)} for c in self.clients}

    async def close(self) -> None:
        """Stop reconnecting and close every connection."""
        await cancel_and_wait(*self._tasks)
        for client in self.clients:
            await client.close()
