"""``callmfa serve``: the originator and the FastAGI server (either or both: CALLMFA_ROLES).

Start-up connects Redis and logs in to every Asterisk (a refused login stops it with a
clear error; an unreachable Asterisk is retried in the background), then listens for
FastAGI, /healthz and (if enabled) /metrics. AMI and Redis connections are re-established
with backoff and jitter. SIGHUP re-reads the settings that may change at run time.
SIGTERM/SIGINT shut down in a fixed order: stop taking requests; let calls in flight finish
up to ``shutdown_grace_s``; close the FastAGI server; close AMI; close Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import signal
from collections.abc import Callable, Sequence

import aiohttp
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from .client import VerificationClient
from .exceptions import IvrError, SettingsError
from .fronts.alerts import MailSender
from .fronts.api import ApiParts, build_app
from .fronts.entra import EntraFront, SigningKeys
from .fronts.providers import provider_routes
from .fronts.providers.gateway import OtpGateway
from .fronts.radius import RadiusRole
from .fronts.web import HttpListener, ops_app, tls_context
from .fronts.webhooks import Deliverer, Sender, WebhookSender, http_session
from .log import set_level
from .metrics import Metrics, metrics_route
from .ops.probe import PROBE_ROUTE, AgiProbe
from .originator import Originator
from .security import Security
from .session import VerificationIvr
from .settings import Settings
from .storage.directory import LocalDirectory, open_directory
from .storage.failover import failover_in_progress
from .storage.results import ResultListener
from .storage.store import Durability, RedisTraffic, Store, connect_for
from .storage.users import normalise_stored_users
from .storage.webhooks import DeliveryQueue
from .tasks import cancel_and_wait
from .transport.ami import AmiClient
from .transport.ami_pool import AmiPool
from .transport.fastagi import FastAgiServer

log = structlog.get_logger("ivr.app")


class Service:
    """The parts of one ``callmfa serve`` process and their order of start and stop."""

    def __init__(self, settings: Settings,
                 api_routes: Sequence[web.RouteTableDef] = ()) -> None:
        if (refusal := settings.signing_refusal()) is not None:
            raise SettingsError(refusal)
        if not settings.signing_key:
            log.warning("outcomes_unsigned", setting="CALLMFA_INSECURE_UNSIGNED=1",
                        risk="anyone who can write to Redis can forge an approval")
        self.settings = settings
        roles = settings.role_set
        traffic = RedisTraffic()
        self.redis = connect_for(
            settings, max_connections=settings.max_in_flight * 2 + settings.agi_max_sessions + 20,
            traffic=traffic,
        )
        self.metrics = Metrics()
        self.metrics.count_redis(traffic)
        self.store = Store(
            self.redis, result_ttl_s=settings.result_ttl_s, events_maxlen=settings.events_maxlen,
            observer=self.metrics, signing_key=settings.signing_key.encode(),
            webhook_url=settings.webhook_url,
            durability=Durability.from_settings(settings, self.metrics.write_unreplicated),
        )
        security = Security.for_redis(settings, self.redis, observer=self.metrics)
        self.results = ResultListener(self.redis)
        self.ivr = VerificationIvr(settings, self.store, security=security,
                                   observer=self.metrics)
        self.agi = FastAgiServer(
            {"verify": self.ivr, PROBE_ROUTE: AgiProbe(self.redis)},
            host=settings.agi_host,
            port=settings.agi_port,
            header_timeout_s=settings.agi_header_timeout_s,
            command_timeout_s=settings.agi_command_timeout_s,
            max_sessions=settings.agi_max_sessions,
            allowed_peers=settings.agi_peer_networks(),
            on_refused=self.metrics.fastagi_connection_refused,
        ) if "agi" in roles else None
        self.pool = AmiPool([
            AmiClient(host=host, port=port, user=settings.ami_user, secret=settings.ami_secret,
                      timeout_s=settings.connect_timeout_s,
                      on_reconnect=self.metrics.ami_reconnected)
            for host, port in settings.asterisks
        ], capacity=settings.max_per_asterisk) if "originator" in roles else None
        # Requests without a phone are completed from it; RADIUS checks passwords with
        # ``passwords`` (None without LDAP).
        self.directory, self.passwords = open_directory(settings, self.redis)
        self.originator = (
            Originator(settings, self.store, self.pool, self.results, security, self.directory)
            if self.pool else None
        )
        # Webhooks and alert e-mails go out from every serve with the originator role (or
        # the webhooks role alone), once somewhere to send them is set.
        self.deliveries = (
            DeliveryQueue(self.redis)
            if (settings.webhooks_configured or settings.alert_recipients)
            and roles & {"originator", "webhooks"} else None
        )
        self.deliverer: Deliverer | None = None
        self.radius = (RadiusRole(settings, self.directory, self.passwords,
                                  self.metrics.registry)
                       if "radius" in roles else None)
        originator, agi = self.originator, self.agi
        self.metrics.in_flight.set_function(lambda: originator.in_flight if originator else 0)
        self.metrics.agi_sessions.set_function(lambda: agi.active_sessions if agi else 0)
        cap, refused = settings.http_max_connections, self.metrics.http_connection_refused
        scrape = metrics_route(self.metrics, lambda: self.metrics.refresh_queue(self.redis))
        # /healthz and /metrics keep their own listeners, whatever the roles; the API (role
        # api) listens on its own address, with the same /healthz for load balancers.
        self.http = [
            HttpListener(ops_app({"/healthz": self.healthz}), host=settings.health_host,
                         port=settings.health_port, name="health", max_connections=cap,
                         on_refused=refused)
            if settings.health_port else None,
            HttpListener(ops_app({"/healthz": self.healthz, "/metrics": scrape}),
                         host=settings.metrics_host, port=settings.metrics_port,
                         name="metrics", max_connections=cap, on_refused=refused)
            if settings.metrics_port else None,
        ]
        self.providers: VerificationClient | None = None
        self.entra: EntraFront | None = None
        if "api" in roles:
            # /v1/admin/users writes callmfa's own entries (`callmfa user`), not LDAP's.
            parts = ApiParts.for_redis(settings, self.redis, security.guard,
                                       observer=self.metrics,
                                       users=LocalDirectory(self.redis))
            # The identity providers' endpoints (/providers/<vendor>, mode otp) carry each
            # vendor's own auth, not the API's tokens (docs/integrations.md).
            self.providers = VerificationClient.from_settings(settings)
            gateway = OtpGateway(settings, self.providers,
                                 on_refused=self.metrics.provider_request_refused)
            # Entra's EAM (CALLMFA_ENTRA_ISSUER): its endpoints under the issuer's path.
            self.entra = (EntraFront(settings, SigningKeys.from_file(
                settings.entra_signing_key_file), self.directory, self.redis,
                on_refused=self.metrics.entra_request_refused)
                if settings.entra_issuer else None)
            entra_routes = [self.entra.routes()] if self.entra is not None else []
            api = build_app(parts,
                            extra=[*api_routes, *provider_routes(gateway), *entra_routes],
                            with_demo=settings.api_demo == "on")
            if self.entra is not None:
                api.on_startup.append(self.entra.start)
                api.on_cleanup.append(self.entra.close)
            api.router.add_get("/healthz", self.healthz)
            tls = (tls_context(settings.api_tls_cert, settings.api_tls_key)
                   if settings.api_tls_cert else None)
            self.http.append(HttpListener(
                api, host=settings.api_host, port=settings.api_port, name="api",
                max_connections=settings.api_max_connections, on_refused=refused,
                idle_timeout_s=75.0, tls=tls))

    async def healthz(self, request: web.Request | None = None) -> web.Response:
        """200 and a JSON status when every part works, 503 and the same JSON otherwise."""
        # With Sentinel, asked first: the PING below may wait out the switch.
        failover = await redis_failover(self.settings) if self.settings.redis_sentinels else None
        try:
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 2))
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        status: dict[str, object] = {"redis": redis_ok, "consumer": self.settings.consumer}
        ok = redis_ok
        if failover is not None:
            status["redis_failover"] = failover
            ok = ok and not failover
        if self.pool is not None and self.originator is not None:
            asterisks = self.pool.status()
            status["asterisk"] = asterisks
            status["in_flight"] = self.originator.in_flight
            ok = ok and any(a["logged_in"] for a in asterisks.values())
        if self.agi is not None:
            status["fastagi"] = {"listening": True, "sessions": self.agi.active_sessions}
        if self.radius is not None:
            status["radius"] = {"listening": True, "held": self.radius.front.held}
        status["ok"] = ok
        return web.Response(status=200 if ok else 503, content_type="application/json",
                            body=json.dumps(status).encode() + b"\n")

    def reload(self) -> None:
        """SIGHUP: apply the settings that may change at run time; warn about the others."""
        try:
            fresh = Settings.load()
        except IvrError as e:
            log.error("reload_failed", error=str(e))
            return
        changed = self.settings.changed_fields(fresh)
        needs_restart = sorted(changed - Settings.RELOADABLE)
        if needs_restart:
            log.warning("reload_needs_restart", settings=needs_restart)
        applied = sorted(changed & Settings.RELOADABLE)
        fresh = dataclasses.replace(self.settings, **{n: getattr(fresh, n) for n in applied})
        self.settings = fresh
        self.ivr.reload(fresh)
        if self.originator is not None and self.pool is not None:
            self.originator.reload(fresh)
            self.pool.capacity = fresh.max_per_asterisk
        set_level(fresh.log_level)
        log.info("settings_reloaded", changed=applied)

    async def run(self, stop: asyncio.Event) -> None:
        """Start every part, serve until ``stop``, then shut down in order."""
        s = self.settings
        running: asyncio.Task[None] | None = None
        stopped: asyncio.Task[bool] | None = None
        session: aiohttp.ClientSession | None = None
        http = [h for h in self.http if h is not None]
        drained = False
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # of the drain, once the stop has come

        def left() -> float:
            """What is left of the shutdown grace (all of it before the stop)."""
            if deadline is None:
                return self.settings.shutdown_grace_s
            return max(0.0, deadline - loop.time())

        try:
            await asyncio.wait_for(self.redis.ping(), s.connect_timeout_s)
            await normalise_stored_users(self.redis)  # blocks and PINs from before issue 12
            await self.results.start()
            if self.pool is not None:
                await self.pool.start()
            if self.agi is not None:
                await self.agi.start()
            if self.radius is not None:
                await self.radius.start()
            for server in http:
                await server.start()
            # Start-up objects (modules, settings, clients) live as long as the process: keep
            # them out of the collector's full passes, which otherwise stall calls for ~30 ms.
            gc.freeze()
            if self.deliveries is not None:
                session = http_session(s)
                senders: dict[str, Sender] = {"email": MailSender(s)} if s.alert_recipients else {}
                if s.webhook_secret:
                    senders["webhook"] = WebhookSender(session, s.webhook_secret)
                self.deliverer = Deliverer(s, self.deliveries, senders, observer=self.metrics)
                await self.deliverer.start()
            if self.originator is not None:
                running = asyncio.create_task(self.originator.run(), name="originator")
            if self.agi is not None and not s.pin_pepper:
                log.warning("pin_pepper_missing", setting="CALLMFA_PIN_PEPPER",
                            effect="PIN hashes are not peppered")
            log.info("service_ready", consumer=s.consumer, roles=sorted(s.role_set),
                     event_loop=loop_name(asyncio.get_running_loop()),
                     agi_port=self.agi.port if self.agi else None,
                     radius_port=self.radius.server.port if self.radius else None)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({t for t in (running, stopped) if t},
                               return_when=asyncio.FIRST_COMPLETED)
            log.info("service_stopping",
                     in_flight=self.originator.in_flight if self.originator else 0)
            # One deadline for the whole stop: each part gets what is left of the grace
            # (the grace given to each in turn made a stop last up to four graces).
            deadline = loop.time() + self.settings.shutdown_grace_s
            if self.radius is not None:  # its held requests wait for the calls in flight
                await self.radius.close(left())
            if self.originator is not None:
                await self.originator.stop(left())
            if self.agi is not None:
                await self.agi.close(grace_s=left())
            drained = True
            if running is not None and running.done():
                running.result()  # the originator failed: raise why
        finally:
            if stopped is not None:
                await cancel_and_wait(stopped)
            if running is not None:
                await cancel_and_wait(running)
            if not drained:  # a part failed to start, or run() itself was cancelled
                if running is not None and self.originator is not None:
                    await self.originator.stop(0)
                if self.agi is not None:
                    await self.agi.close(grace_s=0)
            if self.deliverer is not None:
                await self.deliverer.stop(min(left(), s.webhook_timeout_s))
            if session is not None:
                await session.close()
            if self.radius is not None:
                await self.radius.close(0)
            for server in http:
                await server.close()
            if self.providers is not None:
                await self.providers.aclose()
            if self.pool is not None:
                await self.pool.close()
            await self.results.close()
            await self.redis.aclose()
            log.info("service_stopped")


async def redis_failover(settings: Settings) -> bool:
    """For /healthz with Sentinel: is a failover in progress (the Sentinels see the primary
    down, are switching, disagree, or none answers; or the primary they name does not
    answer a PING: they have not noticed yet)?"""
    try:
        # The Sentinels, then the primary, within 0.9 s each: one Sentinel down (refused
        # or silent) is not a failover while the others answer.
        return await asyncio.wait_for(failover_in_progress(settings, timeout_s=0.9), 2)
    except TimeoutError:
        return True


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the event loop CALLMFA_EVENT_LOOP names; None is asyncio's own.

    ``auto`` takes uvloop when it imports, and asyncio's loop when it does not; ``uvloop``
    without uvloop is a clear error at start-up.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SettingsError(
                "CALLMFA_EVENT_LOOP=uvloop needs uvloop: pip install uvloop (or set auto)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which loop runs (service_ready says it)."""
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def run(settings: Settings) -> None:
    """``callmfa serve`` until it stops, on the event loop that the settings choose."""
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings))


async def serve(settings: Settings, stop: asyncio.Event | None = None,
                api_routes: Sequence[web.RouteTableDef] = ()) -> None:
    """Run until ``stop`` is set or a SIGTERM/SIGINT arrives; ``api_routes`` are mounted on
    the HTTP API (role api)."""
    stop = stop or asyncio.Event()
    service = Service(settings, api_routes)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    try:
        await service.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
