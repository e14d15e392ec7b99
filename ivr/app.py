"""``callmfa serve``: the originator and the FastAGI server in one process.

Start-up connects Redis, logs in to AMI and listens for FastAGI, failing fast with a clear
error. Shutdown (SIGTERM/SIGINT) runs in a fixed order: stop taking requests; let calls in
flight finish up to ``shutdown_grace_s``; close the FastAGI server; close AMI; close Redis.
"""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
from redis.asyncio import Redis

from .exceptions import AmiConnectError
from .metrics import Metrics, MetricsServer
from .originator import Originator
from .probe import PROBE_ROUTE, AgiProbe
from .security import Security
from .session import VerificationIvr
from .settings import Settings
from .storage.pins import PinStore
from .storage.results import ResultListener
from .storage.store import Store, connect
from .tasks import cancel_and_wait
from .transport.ami import AmiClient
from .transport.fastagi import FastAgiServer

log = structlog.get_logger("ivr.app")


def pin_store(redis: Redis, settings: Settings) -> PinStore:
    """The PIN store with the configured lockout policy."""
    return PinStore(
        redis, lockout_after=settings.pin_lockout_after, lockout_s=settings.pin_lockout_s
    )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or a SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(
        settings.redis_url,
        max_connections=settings.max_in_flight * 2 + 20,
        timeout_s=settings.connect_timeout_s,
    )
    metrics = Metrics()
    store = Store(redis, result_ttl_s=settings.result_ttl_s, events_maxlen=settings.events_maxlen,
                  observer=metrics, signing_key=settings.signing_key.encode())
    security = Security.for_redis(settings, redis)
    results = ResultListener(redis)
    ami = AmiClient(
        host=settings.ami_host, port=settings.ami_port, user=settings.ami_user,
        secret=settings.ami_secret, timeout_s=settings.connect_timeout_s,
    )
    agi = FastAgiServer(
        {"verify": VerificationIvr(settings, store, security=security),
         PROBE_ROUTE: AgiProbe(redis)},
        host=settings.agi_host,
        port=settings.agi_port,
        header_timeout_s=settings.agi_header_timeout_s,
        command_timeout_s=settings.agi_command_timeout_s,
        max_sessions=settings.agi_max_sessions,
        allowed_peers=settings.agi_peer_networks(),
    )
    originator = Originator(settings, store, ami, results, security)
    metrics.in_flight.set_function(lambda: originator.in_flight)
    metrics.agi_sessions.set_function(lambda: agi.active_sessions)
    exporter = MetricsServer(metrics, host=settings.metrics_host, port=settings.metrics_port,
                             refresh=lambda: metrics.refresh_queue(redis),
                             healthy=ami.connected.is_set) if settings.metrics_port else None
    try:
        await asyncio.wait_for(redis.ping(), settings.connect_timeout_s)
        await results.start()
        await ami.connect()
        await agi.start()
        # Start-up objects (modules, settings, clients) live as long as the process: keep
        # them out of the collector's full passes, which otherwise stall calls for ~30 ms.
        gc.freeze()
        if exporter is not None:
            await exporter.start()
        running = asyncio.create_task(originator.run(), name="originator")
        log.info("service_ready", consumer=settings.consumer, agi_port=agi.port)
        stopped = asyncio.create_task(stop.wait())
        lost = asyncio.create_task(ami.lost.wait())
        await asyncio.wait({running, stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
        log.info("service_stopping", in_flight=originator.in_flight)
        await originator.stop(settings.shutdown_grace_s)
        await cancel_and_wait(stopped, lost)
        if running.done():
            running.result()  # the originator failed: raise why
        await cancel_and_wait(running)
        await agi.close(grace_s=settings.shutdown_grace_s)
        if lost.done() and not stop.is_set():
            raise AmiConnectError("lost the AMI connection; stopped (restart to reconnect)")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if exporter is not None:
            await exporter.close()
        await ami.close()
        await results.close()
        await redis.aclose()
        log.info("service_stopped")
