"""Prometheus metrics: one registry per service, passed explicitly, served over HTTP.

prometheus-client's default ``REGISTRY`` is a module global; callmfa never uses it. A
:class:`Metrics` owns its own ``CollectorRegistry``, so two services in one process (tests)
count apart. The store reports every stored outcome and progress event to it
(:meth:`Metrics.outcome_stored`, :meth:`Metrics.event_added`); gauges that mirror live
state read it at scrape time; the queue depth is read from Redis at scrape time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import __version__
from .domain.outcome import Outcome, OutcomeRecord
from .storage.keys import WEBHOOK_DEAD, WEBHOOKS
from .storage.store import RedisTraffic, queue_state

log = structlog.get_logger("ivr.metrics")

REFRESH_TIMEOUT_S = 2.0


class _RedisTrafficCollector(Collector):
    """callmfa_redis_commands_total and callmfa_redis_round_trips_total, read at scrape
    time from the client's plain counts (nothing is locked per command)."""

    def __init__(self, traffic: RedisTraffic) -> None:
        self._traffic = traffic

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The two counters, as they stand."""
        yield CounterMetricFamily("callmfa_redis_commands", "Redis commands sent (a script "
                                  "is one).", value=self._traffic.commands)
        yield CounterMetricFamily("callmfa_redis_round_trips", "Redis round trips (a "
                                  "pipeline is one).", value=self._traffic.round_trips)


class Metrics:
    """Every metric callmfa exports, in one private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("callmfa", "callmfa build information.", registry=r).info({"version": __version__})
        self.calls_placed = Counter(
            "callmfa_calls_placed", "Calls sent to Asterisk (AMI Originate).", registry=r
        )
        self.progress_events = Counter(
            "callmfa_progress_events", "Progress events written, by event.", ["event"],
            registry=r,
        )
        self.outcomes = Counter(
            "callmfa_outcomes", "Outcomes stored (one per verification), by outcome value.",
            ["outcome"], registry=r,
        )
        # Every value exported from the start, at 0; a child kept per label value (labels()
        # takes a lock and builds the key on every call, twice a child's inc).
        self._outcome_counts = {o.value: self.outcomes.labels(o.value) for o in Outcome}
        self._event_counts: dict[str, Counter] = {}
        self.request_to_call = Histogram(
            "callmfa_request_to_call_seconds",
            "From the request entering the queue to the Originate being sent.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.input_to_outcome = Histogram(
            "callmfa_input_to_outcome_seconds",
            "From the key press ('#') reaching callmfa to the outcome stored in Redis.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.verification = Histogram(
            "callmfa_verification_seconds",
            "A whole verification: from the request entering the queue to its outcome.",
            buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180),
            registry=r,
        )
        self.in_flight = Gauge(
            "callmfa_calls_in_flight", "Requests this originator is working on now.", registry=r
        )
        self.agi_sessions = Gauge(
            "callmfa_agi_sessions", "FastAGI sessions (answered calls in the IVR) now.",
            registry=r,
        )
        self.queue_length = Gauge(
            "callmfa_queue_length", "Entries in callmfa:requests (XLEN).", registry=r
        )
        self.queue_lag = Gauge(
            "callmfa_queue_lag",
            "Requests not yet delivered to any originator (consumer group lag).", registry=r,
        )
        self.queue_pending = Gauge(
            "callmfa_queue_pending",
            "Requests delivered but not yet acknowledged (being worked on, or orphaned).",
            registry=r,
        )
        self.ami_reconnects = Counter(
            "callmfa_ami_reconnects", "AMI connections re-established after a loss.", registry=r
        )
        self.http_refused = Counter(
            "callmfa_http_connections_refused",
            "Connections to /healthz or /metrics refused: CALLMFA_HTTP_MAX_CONNECTIONS reached.",
            registry=r,
        )
        self.ivr_sessions_refused = Counter(
            "callmfa_ivr_sessions_refused",
            "AGI sessions refused: not the call they name (no or wrong token), or not the "
            "first session of that call, by reason.", ["reason"], registry=r,
        )
        self.fastagi_refused = Counter(
            "callmfa_fastagi_connections_refused",
            "FastAGI connections closed unserved: a peer outside CALLMFA_AGI_ALLOWED_PEERS "
            "(peer_not_allowed), or over CALLMFA_AGI_MAX_SESSIONS (max_sessions), by reason.",
            ["reason"], registry=r,
        )
        self.provider_refused = Counter(
            "callmfa_provider_requests_refused",
            "Identity providers' voice-code requests refused (bad credential, unreadable "
            "payload, no call), by vendor and reason.", ["vendor", "reason"], registry=r,
        )
        self.api_refused = Counter(
            "callmfa_api_requests_refused",
            "HTTP API requests refused: unauthorized (no, bad, expired or revoked token), "
            "forbidden (scope), rate_limited, by reason.", ["reason"], registry=r,
        )
        self.api_submitted = Counter(
            "callmfa_api_verifications_submitted",
            "Verifications queued through the HTTP API (an Idempotency-Key replay not "
            "counted).", registry=r,
        )
        self.entra_refused = Counter(
            "callmfa_entra_requests_refused",
            "Entra EAM sign-ins refused (before a call: bad hint, wrong issuer, audience or "
            "tenant, stale, unknown user, redirect_uri not allowed; after: an outcome that "
            "cannot be trusted), by reason.", ["reason"], registry=r,
        )
        self.scrape_errors = Counter(
            "callmfa_scrape_errors", "Scrapes whose Redis figures could not be read.", registry=r
        )
        self.writes_unreplicated = Counter(
            "callmfa_redis_writes_unreplicated",
            "Durable writes (call_claim, outcome) that fewer replicas than "
            "CALLMFA_REDIS_WAIT_REPLICAS acknowledged in time, by write.", ["write"],
            registry=r,
        )
        self.numbers_refused = Counter(
            "callmfa_numbers_refused",
            "Requests ended rejected / number_not_allowed, uncalled, by reason.", ["reason"],
            registry=r,
        )

        self.deliveries = Counter(
            "callmfa_webhook_attempts",
            "Webhook and alert e-mail attempts, by channel (webhook, email) and result "
            "(delivered; failed, to be retried; dead_lettered, given up).",
            ["channel", "result"], registry=r,
        )
        for channel in ("webhook", "email"):
            for result in ("delivered", "failed", "dead_lettered"):
                self.deliveries.labels(channel, result)
        self.deliveries_pending = Gauge(
            "callmfa_webhooks_pending",
            "Webhooks and alert e-mails not yet delivered nor given up (XLEN callmfa:webhooks).",
            registry=r,
        )
        self.deliveries_dead = Gauge(
            "callmfa_webhooks_dead_letters",
            "Webhooks and alert e-mails given up on (XLEN callmfa:webhooks:dead).", registry=r,
        )

    def delivery_settled(self, channel: str, result: str) -> None:
        """A webhook or e-mail attempt ended: delivered, failed or dead_lettered."""
        self.deliveries.labels(channel, result).inc()

    def count_redis(self, traffic: RedisTraffic) -> None:
        """Export ``traffic`` (the service client's commands and round trips)."""
        self.registry.register(_RedisTrafficCollector(traffic))

    def write_unreplicated(self, what: str) -> None:
        """A durable write (request, call claim, outcome) had fewer replicas than
        CALLMFA_REDIS_WAIT_REPLICAS within CALLMFA_REDIS_WAIT_TIMEOUT_MS."""
        self.writes_unreplicated.labels(what).inc()

    def event_added(self, name: str) -> None:
        """A progress event was written; ``dialing`` means a call was placed."""
        if (count := self._event_counts.get(name)) is None:
            count = self._event_counts[name] = self.progress_events.labels(name)
        count.inc()
        if name == "dialing":
            self.calls_placed.inc()

    def outcome_stored(self, record: OutcomeRecord) -> None:
        """The (first and only) outcome of a verification was stored."""
        self._outcome_counts[record.outcome.value].inc()
        _observe(self.request_to_call, record.requested_at, record.call_started_at)
        _observe(self.input_to_outcome, record.input_at, record.finished_at)
        _observe(self.verification, record.requested_at, record.finished_at)

    def http_connection_refused(self) -> None:
        """For the HTTP servers: a connection over the cap was refused."""
        self.http_refused.inc()

    def fastagi_connection_refused(self, reason: str) -> None:
        """The FastAGI server closed a connection unserved, for ``reason``."""
        self.fastagi_refused.labels(reason).inc()

    def provider_request_refused(self, vendor: str, reason: str) -> None:
        """An identity provider's request was refused, for ``reason``."""
        self.provider_refused.labels(vendor, reason).inc()

    def api_request_refused(self, reason: str) -> None:
        """The HTTP API refused a request (auth, scope or rate limit), for ``reason``."""
        self.api_refused.labels(reason).inc()

    def entra_request_refused(self, reason: str) -> None:
        """The Entra EAM refused a sign-in, for ``reason``."""
        self.entra_refused.labels(reason).inc()

    def api_verification_submitted(self) -> None:
        """The HTTP API queued a verification."""
        self.api_submitted.inc()

    def session_refused(self, reason: str) -> None:
        """An AGI session was refused (see :class:`ivr.session.IvrObserver`)."""
        self.ivr_sessions_refused.labels(reason).inc()

    def number_refused(self, reason: str) -> None:
        """A request's number was not dialled (the security policy), for ``reason``."""
        self.numbers_refused.labels(reason).inc()

    def ami_reconnected(self) -> None:
        """For the AMI connection's owner: a lost connection was re-established."""
        self.ami_reconnects.inc()

    async def refresh_queue(self, redis: Redis) -> None:
        """Read the request queue's length, lag and pending count from Redis."""
        state = await queue_state(redis)
        self.queue_length.set(state.length)
        self.queue_lag.set(state.lag)
        self.queue_pending.set(state.pending)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(WEBHOOKS)
            pipe.xlen(WEBHOOK_DEAD)
            pending, dead = await pipe.execute()
        self.deliveries_pending.set(pending)
        self.deliveries_dead.set(dead)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _observe(histogram: Histogram, start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end >= start:
        histogram.observe(end - start)


def metrics_route(
    metrics: Metrics, refresh: Callable[[], Awaitable[None]] | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /metrics`` handler (aiohttp; :mod:`ivr.fronts.web`).

    ``refresh`` updates the figures read from Redis (queue depth) before each scrape; if
    Redis does not answer in time, the scrape still answers and counts the error.
    """
    async def route(request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await asyncio.wait_for(refresh(), REFRESH_TIMEOUT_S)
            except (RedisError, OSError, TimeoutError) as e:
                metrics.scrape_errors.inc()
                log.warning("metrics_refresh_failed", error=str(e))
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return route
