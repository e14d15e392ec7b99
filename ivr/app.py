"""``callmfa serve``: the originator and the FastAGI server in one process.

Start-up connects Redis, logs in to AMI and listens for FastAGI, failing fast with a clear
error. Shutdown (SIGTERM/SIGINT) runs in a fixed order: stop taking requests; let calls in
flight finish up to ``shutdown_grace_s``; close the FastAGI server; close AMI; close Redis.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from .exceptions import AmiConnectError
from .originator import Originator
from .security import Security
from .session import VerificationIvr
from .settings import Settings
from .storage.results import ResultListener
from .storage.store import Store, connect
from .tasks import cancel_and_wait
from .transport.ami import AmiClient
from .transport.fastagi import FastAgiServer

log = structlog.get_logger("ivr.app")


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
    store = Store(redis, result_ttl_s=settings.result_ttl_s, events_maxlen=settings.events_maxlen,
                  signing_key=settings.signing_key.encode())
    security = Security.for_redis(settings, redis)
    results = ResultListener(redis)
    ami = AmiClient(
        host=settings.ami_host, port=settings.ami_port, user=settings.ami_user,
        secret=settings.ami_secret, timeout_s=settings.connect_timeout_s,
    )
    agi = FastAgiServer(
        {"verify": VerificationIvr(settings, store, security)},
        host=settings.agi_host,
        port=settings.agi_port,
        header_timeout_s=settings.agi_header_timeout_s,
        command_timeout_s=settings.agi_command_timeout_s,
        max_sessions=settings.agi_max_sessions,
        allowed_peers=settings.agi_peer_networks(),
    )
    originator = Originator(settings, store, ami, results, security)
    try:
        await asyncio.wait_for(redis.ping(), settings.connect_timeout_s)
        await results.start()
        await ami.connect()
        await agi.start()
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
        await ami.close()
        await results.close()
        await redis.aclose()
        log.info("service_stopped")
