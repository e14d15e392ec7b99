"""One shared subscription to ``callmfa:results`` that any number of waiters use."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..domain.outcome import OutcomeRecord
from ..exceptions import OutcomeBindingError, OutcomeSignatureError
from ..tasks import cancel_and_wait
from .hotpath import next_published
from .retry import retrying
from .store import RESULTS_CHANNEL, result_key

log = structlog.get_logger("ivr.results")


@dataclass(frozen=True)
class _Waiter:
    """One wait: the future it resolves and what its request was (for the binding check)."""

    future: asyncio.Future[OutcomeRecord]
    user: str | None
    submitted_at: float | None

    def mismatch(self, rid: str, record: OutcomeRecord) -> str | None:
        return record.mismatch(rid, user=self.user, submitted_at=self.submitted_at)


def _peek_id(data: bytes | str) -> str | None:
    try:
        rid = json.loads(data)["id"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return rid if isinstance(rid, str) else None


class ResultListener:
    """Waits for outcomes by id over one pub/sub connection, with the key as fallback.

    A waiter registers, then reads the result key: an outcome stored before the
    registration is found by the read, one stored after it arrives by pub/sub.

    ``parse`` turns the stored JSON into a record; a verifying parser (see
    :func:`ivr.domain.signing.verified`) raises OutcomeSignatureError on a forgery. Every
    record must also answer the request waited for (:meth:`OutcomeRecord.mismatch`): a
    forged or foreign result key makes :meth:`wait` raise, while a forged, foreign or
    malformed message is logged and dropped, and the waiter keeps waiting.
    """

    def __init__(
        self, redis: Redis, parse: Callable[[str | bytes], OutcomeRecord] = OutcomeRecord.from_json
    ) -> None:
        self._redis = redis
        self._parse = parse
        self._waiters: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe; returns once the subscription is live. A call while another's
        subscription is still starting waits for that one: there is one listener."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="result-listener")
        task = self._task
        waiter = asyncio.ensure_future(self._subscribed.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()  # done already, or this start was cancelled
        if not self._subscribed.is_set():
            await task  # raises what made it fail

    async def close(self) -> None:
        """Stop listening (:meth:`start` may subscribe again)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        self._subscribed.clear()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(RESULTS_CHANNEL)
                self._subscribed.set()
                backoff = 0.1
                await self._recheck_all()
                while True:
                    data = await next_published(pubsub, 1.0)
                    if data is not None:
                        self._dispatch(data)
            except (RedisError, OSError) as e:
                if not self._subscribed.is_set():
                    raise  # start() reports it: Redis is not reachable at all
                log.warning("results_subscription_lost", error=str(e), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, data: bytes | str) -> None:
        if not self._waiters:
            return
        rid = _peek_id(data)
        if rid is None:
            log.warning("results_message_malformed")
            return
        waiters = self._waiters.get(rid)
        if not waiters:
            return
        try:
            record = self._parse(data)
        except (OutcomeSignatureError, ValueError) as e:
            log.warning("outcome_refused", verification_id=rid, error=str(e))
            return
        for waiter in waiters:
            if waiter.future.done():
                continue
            if (why := waiter.mismatch(rid, record)) is not None:
                log.warning("outcome_refused", verification_id=rid, error=why)
                continue
            waiter.future.set_result(record)

    async def _recheck_all(self) -> None:
        # After a (re)subscription, outcomes published while we were away are in the keys.
        for rid in list(self._waiters):
            raw = await self._redis.get(result_key(rid))
            if raw is not None:
                self._dispatch(raw)

    async def _get(self, rid: str, retry_s: float) -> bytes | str | None:
        return await retrying(lambda: self._redis.get(result_key(rid)),
                              what="get_outcome", for_s=max(retry_s, 1.0))

    def _accept(self, rid: str, raw: bytes | str, waiter: _Waiter) -> OutcomeRecord:
        """The record stored at the result key, if it answers this wait; else raise."""
        record = self._parse(raw)
        if (why := waiter.mismatch(rid, record)) is not None:
            raise OutcomeBindingError(f"refused the outcome stored for {rid}: {why}")
        return record

    @contextlib.contextmanager
    def expecting(
        self, rid: str, *, user: str | None = None, submitted_at: float | None = None
    ) -> Iterator[Expected]:
        """Wait for the outcome of ``rid`` from now on, for a caller that knows it has none
        yet (the originator, before it places the call): the outcome arrives by pub/sub
        (after a lost subscription, the listener reads the key again), so nothing is read
        now. :meth:`Expected.read` reads the key, for when nothing came in time or for
        one stored before. ``user`` and ``submitted_at`` are checked as by :meth:`wait`."""
        waiter = _Waiter(asyncio.get_running_loop().create_future(), user, submitted_at)
        self._waiters.setdefault(rid, []).append(waiter)
        try:
            yield Expected(self, rid, waiter)
        finally:
            self._forget(rid, waiter)

    def _forget(self, rid: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(rid, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(rid, None)

    async def wait(
        self, rid: str, timeout_s: float, *, user: str | None = None,
        submitted_at: float | None = None,
    ) -> OutcomeRecord | None:
        """The outcome of ``rid``, or None if there is none within ``timeout_s``.

        With ``user`` and ``submitted_at`` (epoch seconds, the request's stream entry time or
        earlier), an outcome of another user, or older than the request, is refused too.
        """
        waiter = _Waiter(asyncio.get_running_loop().create_future(), user, submitted_at)
        self._waiters.setdefault(rid, []).append(waiter)
        try:
            raw = await self._get(rid, timeout_s)
            if raw is not None:
                return self._accept(rid, raw, waiter)
            try:
                return await asyncio.wait_for(waiter.future, timeout_s)
            except TimeoutError:
                raw = await self._get(rid, timeout_s)
                return self._accept(rid, raw, waiter) if raw is not None else None
        finally:
            self._forget(rid, waiter)


@dataclass(frozen=True)
class Expected:
    """An outcome waited for since :meth:`ResultListener.expecting`."""

    listener: ResultListener
    rid: str
    waiter: _Waiter

    @property
    def arrived(self) -> asyncio.Future[OutcomeRecord]:
        """Done once the outcome came by pub/sub (never cancel it: it is shared)."""
        return self.waiter.future

    async def read(self, retry_s: float) -> OutcomeRecord | None:
        """The outcome stored at the result key now, if any (Redis retried for ``retry_s``)."""
        raw = await self.listener._get(self.rid, retry_s)
        return self.listener._accept(self.rid, raw, self.waiter) if raw is not None else None
