"""The delivery worker: signed webhooks (Standard Webhooks) and alert e-mails, at least once.

It runs inside ``callmfa serve`` beside the originator (or alone, ``CALLMFA_ROLES=webhooks``)
whenever a webhook URL or alert recipients are set. Any number of processes share the work
through the Redis queue (:mod:`ivr.storage.webhooks`); what to send, where and when to
retry is decided in :mod:`ivr.domain.webhooks`. docs/webhooks.md has the payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import structlog
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from .. import __version__
from ..domain.outcome import iso
from ..domain.webhooks import Backoff, envelope, security_deliveries
from ..redaction import redacted_url
from ..settings import Settings
from ..storage.keys import ALERT_GROUP, AUDIT_GROUP
from ..storage.retry import TRANSIENT, backoff, retrying
from ..storage.webhooks import Delivery, DeliveryQueue
from ..tasks import cancel_and_wait, drain

log = structlog.get_logger("ivr.webhooks")

BOOKKEEPING_RETRY_S = 30.0
RESPONSE_READ_BYTES = 4096
POLL_S = 1.0
BLOCK_MS = 1000


class DeliveryError(Exception):
    """One attempt failed; the message says why (``http_503``, ``timeout``...)."""


class Sender(Protocol):
    """Sends one delivery of its channel, or raises :class:`DeliveryError`."""

    async def send(self, d: Delivery) -> None:
        """One attempt."""


class DeliveryObserver(Protocol):
    """Told of each attempt's end (the metrics)."""

    def delivery_settled(self, channel: str, result: str) -> None:
        """``delivered``, ``failed`` (to be retried) or ``dead_lettered``."""


def signed_headers(signer: Webhook, webhook_id: str, when: datetime,
                   data: str) -> dict[str, str]:
    """The headers of one POST of ``data``: Standard Webhooks' three, and the content type."""
    return {
        "content-type": "application/json",
        "user-agent": f"callmfa/{__version__}",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signer.sign(webhook_id, when, data),
    }


class WebhookSender:
    """POSTs a delivery's body to its URL, signed; 2xx is success, anything else a failure.

    Redirects are not followed (the allow-list checked the URL, not where it sends us).
    """

    def __init__(self, session: aiohttp.ClientSession, secret: str) -> None:
        self._session = session
        self._signer = Webhook(secret)

    def __repr__(self) -> str:
        return "WebhookSender(secret=***)"

    async def send(self, d: Delivery) -> None:
        """One signed POST, with a fresh timestamp (receivers refuse old ones)."""
        data = envelope(d.fields.get("type", ""), d.fields.get("timestamp", ""),
                        d.fields.get("payload", "null"))
        headers = signed_headers(self._signer, d.webhook_id, datetime.now(UTC), data)
        try:
            async with self._session.post(d.target, data=data.encode(), headers=headers,
                                          allow_redirects=False) as resp:
                await resp.content.read(RESPONSE_READ_BYTES)
                if not 200 <= resp.status < 300:
                    raise DeliveryError(f"http_{resp.status}")
        except TimeoutError:
            raise DeliveryError("timeout") from None
        except aiohttp.ClientError as e:
            raise DeliveryError(f"{type(e).__name__}: {e}"[:200]) from None


class Deliverer:
    """Reads the queue, sends, and settles each attempt: delivered, retried or dead-lettered."""

    def __init__(self, settings: Settings, queue: DeliveryQueue,
                 senders: Mapping[str, Sender], *,
                 observer: DeliveryObserver | None = None,
                 clock: Callable[[], float] = time.time,
                 reclaim_idle_s: float | None = None) -> None:
        self._s = settings
        self._queue = queue
        self._senders = senders
        self._observer = observer
        self._clock = clock
        self._backoff = Backoff(base_s=settings.webhook_backoff_base_s,
                                max_s=settings.webhook_backoff_max_s,
                                give_up_s=settings.webhook_give_up_s)
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        # E-mails get a quarter of them: a stalled relay holds up no webhook.
        self._mail_slots = asyncio.Semaphore(max(1, settings.webhook_concurrency // 4))
        self._attempts: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        # A first attempt (or an audit entry) still unsettled after this long was lost with
        # its process: another takes it over.
        if reclaim_idle_s is None:
            reclaim_idle_s = settings.webhook_timeout_s * 2 + 30
        self._reclaim_idle_ms = int(reclaim_idle_s * 1000)

    @property
    def audit_groups(self) -> tuple[str, ...]:
        """The audit readers' groups this process is in: security webhooks with a URL for
        them, alert e-mails with recipients (each group routes its own channel only)."""
        s = self._s
        return ((AUDIT_GROUP,) if s.security_url else ()) + (
            (ALERT_GROUP,) if s.alert_recipients else ())

    async def start(self) -> None:
        """Create the consumer groups and start reading."""
        groups = self.audit_groups
        await retrying(lambda: self._queue.ensure_groups(groups),
                       what="webhook_groups", for_s=BOOKKEEPING_RETRY_S)
        self._loops = [asyncio.create_task(self._guarded(self._read_new), name="webhooks_new"),
                       asyncio.create_task(self._guarded(self._read_due), name="webhooks_due")]
        for group in groups:
            self._loops.append(asyncio.create_task(
                self._guarded(functools.partial(self._read_audit, group)),
                name=f"webhooks_audit_{group}"))
        log.info("webhooks_started", security_events=list(groups),
                 concurrency=self._s.webhook_concurrency)

    async def stop(self, grace_s: float) -> None:
        """Stop reading; let attempts in flight end for ``grace_s``, then cancel them (a
        cancelled attempt is tried again: after its lease, or by another process)."""
        await cancel_and_wait(*self._loops)
        cancelled = await drain(self._attempts, grace_s)
        log.info("webhooks_stopped", cancelled=cancelled)

    async def _guarded(self, loop: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            try:
                await loop()
            except (*TRANSIENT, RedisError) as e:
                # A lost Redis, or one restarted empty (NOGROUP): wait, recreate, go on.
                wait = backoff(failures, base_s=0.1, cap_s=5.0)
                failures += 1
                log.warning("webhooks_redis_failed", error=str(e) or type(e).__name__,
                            retry_in_s=round(wait, 2))
                await asyncio.sleep(wait)
                if "NOGROUP" in str(e):
                    with contextlib.suppress(*TRANSIENT, RedisError):
                        await self._queue.ensure_groups(self.audit_groups)
            except Exception:  # a bug must not stop deliveries for good: logged, retried
                wait = backoff(failures, base_s=0.5, cap_s=30.0)
                failures += 1
                log.exception("webhooks_loop_failed", retry_in_s=round(wait, 2))
                await asyncio.sleep(wait)

    async def _free_slots(self) -> int:
        await self._slots.acquire()
        self._slots.release()
        return self._s.webhook_concurrency - len(self._attempts)

    async def _read_new(self) -> None:
        consumer = self._s.consumer
        next_reclaim = 0.0
        while True:
            free = max(1, await self._free_slots())
            if time.monotonic() >= next_reclaim:
                for d in await self._queue.reclaim(consumer, self._reclaim_idle_ms, free):
                    log.info("webhook_taken_over", webhook_id=d.webhook_id)
                    await self._spawn(d)
                next_reclaim = time.monotonic() + self._reclaim_idle_ms / 2000
            for d in await self._queue.read_new(consumer, free, BLOCK_MS):
                await self._spawn(d)

    async def _read_due(self) -> None:
        tick = min(POLL_S, max(0.05, self._s.webhook_backoff_base_s / 4))
        lease_ms = int((self._s.webhook_timeout_s * 2 + 10) * 1000)
        while True:
            free = await self._free_slots()
            due = await self._queue.take_due(int(self._clock() * 1000), lease_ms, max(1, free))
            for d in due:
                await self._spawn(d)
            if not due:
                await asyncio.sleep(tick)

    async def _read_audit(self, group: str) -> None:
        s = self._s
        consumer = s.consumer
        mail = group == ALERT_GROUP
        next_reclaim = 0.0
        while True:
            entries = []
            if time.monotonic() >= next_reclaim:
                entries = await self._queue.reclaim_audit(group, consumer,
                                                          self._reclaim_idle_ms, 100)
                next_reclaim = time.monotonic() + self._reclaim_idle_ms / 2000
            if not entries:
                entries = await self._queue.read_audit(group, consumer, 100, BLOCK_MS)
            for audit_id, entry in entries:
                routed = security_deliveries(
                    audit_id, entry, url="" if mail else s.security_url,
                    recipients=s.alert_recipients if mail else (),
                    mail_events=s.alert_event_set)
                age = self._clock() - int(audit_id.split("-", 1)[0]) / 1000
                if routed and age > s.webhook_give_up_s:
                    log.warning("security_event_too_old", audit_id=audit_id,
                                audit_event=entry.get("event"), age_s=round(age))
                    routed = []
                await self._queue.route_audit(group, audit_id, routed)
                if routed:
                    log.info("security_event_queued", audit_id=audit_id,
                             audit_event=entry.get("event"), deliveries=len(routed))

    async def _spawn(self, d: Delivery) -> None:
        if d.channel not in self._senders:
            # Another process's to send (its settings have this channel, these do not): put
            # back for it, no failure counted, until it is too old.
            if self._clock() > d.created_at + self._s.webhook_give_up_s:
                await self._dead(d, d.failures, f"no process sent its {d.channel}")
            else:
                await self._defer(d)
            return
        await self._slots.acquire()
        mail = d.channel == "email"
        if mail and self._mail_slots.locked():
            # Every e-mail slot is taken (a slow relay): tried again once one may be free,
            # with no failure counted, rather than waited for in the way of the webhooks.
            self._slots.release()
            await self._defer(d)
            return
        if mail:
            await self._mail_slots.acquire()  # at once: not locked
        task = asyncio.create_task(self._attempt(d), name=f"webhook-{d.entry_id}")
        self._attempts.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._attempts.discard(t)
            self._slots.release()
            if mail:
                self._mail_slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("webhook_attempt_crashed", error=repr(t.exception()))

        task.add_done_callback(done)

    async def _defer(self, d: Delivery) -> None:
        """Back in the schedule for one timeout, its failures as they were."""
        at_ms = int((self._clock() + self._s.webhook_timeout_s) * 1000)
        await retrying(lambda: self._queue.retry_at(d, at_ms, d.failures),
                       what="webhook_deferred", for_s=BOOKKEEPING_RETRY_S)

    async def _attempt(self, d: Delivery) -> None:
        bound = structlog.contextvars.bound_contextvars(
            webhook_id=d.webhook_id, channel=d.channel)
        with bound:
            sender = self._senders[d.channel]
            started = time.monotonic()
            try:
                await asyncio.wait_for(sender.send(d), self._s.webhook_timeout_s)
            except (DeliveryError, TimeoutError) as e:
                await self._failed(d, str(e) or "timeout")
                return
            except Exception as e:  # a bad entry must fail, retry and dead-letter, not stick
                log.exception("webhook_attempt_crashed")
                await self._failed(d, f"{type(e).__name__}: {e}"[:200])
                return
            await retrying(lambda: self._queue.delivered(d), what="webhook_delivered",
                           for_s=BOOKKEEPING_RETRY_S)
            log.info("webhook_delivered", attempts=d.failures + 1, type=d.fields.get("type"),
                     ms=round((time.monotonic() - started) * 1000, 1))
            self._settled(d.channel, "delivered")

    async def _failed(self, d: Delivery, error: str) -> None:
        failures = d.failures + 1
        now = self._clock()
        at = self._backoff.next_attempt(failures, d.created_at, now)
        if at is None:
            await self._dead(d, failures, error)
            return
        await retrying(lambda: self._queue.retry_at(d, int(at * 1000), failures),
                       what="webhook_retry", for_s=BOOKKEEPING_RETRY_S)
        log.warning("webhook_attempt_failed", attempts=failures, error=error,
                    retry_in_s=round(at - now, 2))
        self._settled(d.channel, "failed")

    async def _dead(self, d: Delivery, attempts: int, error: str) -> None:
        now = iso(self._clock()) or ""
        await retrying(lambda: self._queue.dead(d, attempts, error, now),
                       what="webhook_dead", for_s=BOOKKEEPING_RETRY_S)
        log.error("webhook_dead_lettered", attempts=attempts, error=error, target=_redacted(d))
        self._settled(d.channel, "dead_lettered")

    def _settled(self, channel: str, result: str) -> None:
        if self._observer is not None:
            self._observer.delivery_settled(channel, result)


def _redacted(d: Delivery) -> str:
    """The target for the logs: a URL without its query (it may hold a token) or password."""
    return redacted_url(d.target, query=False) if d.channel == "webhook" else d.target


def http_session(settings: Settings) -> aiohttp.ClientSession:
    """The one client session (close it), with a timeout on every part of each request."""
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s,
                                    connect=settings.webhook_timeout_s,
                                    sock_read=settings.webhook_timeout_s)
    return aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
