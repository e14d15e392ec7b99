"""One shared subscription to ``callmfa:results`` that any number of waiters use."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..domain.outcome import OutcomeRecord
from ..exceptions import OutcomeSignatureError
from ..tasks import cancel_and_wait
from .retry import retrying
from .store import RESULTS_CHANNEL, result_key

log = structlog.get_logger("ivr.results")


class ResultListener:
    """Waits for outcomes by id over one pub/sub connection, with the key as fallback.

    A waiter registers, then reads the result key: an outcome stored before the
    registration is found by the read, one stored after it arrives by pub/sub.

    ``parse`` turns the stored JSON into a record; a verifying parser (see
    :func:`ivr.domain.signing.verified`) raises OutcomeSignatureError on a forgery: a
    forged key makes :meth:`wait` raise, a forged message is dropped.
    """

    def __init__(
        self, redis: Redis, parse: Callable[[str | bytes], OutcomeRecord] = OutcomeRecord.from_json
    ) -> None:
        self._redis = redis
        self._parse = parse
        self._waiters: dict[str, list[asyncio.Future[OutcomeRecord]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe; returns once the subscription is live."""
        self._task = asyncio.create_task(self._run(), name="result-listener")
        waiter = asyncio.ensure_future(self._subscribed.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not self._subscribed.is_set():
            waiter.cancel()
            await self._task  # raises what made it fail

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            await cancel_and_wait(self._task)

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
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._dispatch(msg["data"])
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
        try:
            rid = json.loads(data)["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("results_message_malformed")
            return
        futures = self._waiters.get(rid)
        if futures:
            try:
                record = self._parse(data)
            except OutcomeSignatureError as e:
                log.warning("outcome_refused", verification_id=rid, error=str(e))
                return
            for f in futures:
                if not f.done():
                    f.set_result(record)

    async def _recheck_all(self) -> None:
        # After a (re)subscription, outcomes published while we were away are in the keys.
        for rid in list(self._waiters):
            raw = await self._redis.get(result_key(rid))
            if raw is not None:
                self._dispatch(raw)

    async def _get(self, rid: str, retry_s: float) -> bytes | str | None:
        return await retrying(lambda: self._redis.get(result_key(rid)),
                              what="get_outcome", for_s=max(retry_s, 1.0))

    async def wait(self, rid: str, timeout_s: float) -> OutcomeRecord | None:
        """The outcome of ``rid``, or None if there is none within ``timeout_s``."""
        future: asyncio.Future[OutcomeRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rid, []).append(future)
        try:
            raw = await self._get(rid, timeout_s)
            if raw is not None:
                return self._parse(raw)
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                raw = await self._get(rid, timeout_s)
                return self._parse(raw) if raw is not None else None
        finally:
            futures = self._waiters.get(rid, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiters.pop(rid, None)
