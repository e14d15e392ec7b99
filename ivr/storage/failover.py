"""What the Sentinels say about callmfa's primary: for ``callmfa check`` and ``/healthz``.

Each Sentinel is asked on its own (``SENTINEL MASTER``, ``REPLICAS``, ``SENTINELS``,
``CKQUORUM``), once (no retry) and within one timeout for the whole exchange (the connect
timeout, or less for /healthz), so that one dead or stopped Sentinel costs that timeout and
nothing else. (redis-py's default client retried ten times: a refused Sentinel cost 3.3 s,
a silent one ten socket timeouts.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..settings import Settings
from . import sentinel

# Flags of the primary, in SENTINEL MASTER, that mean a failover is under way.
_SWITCHING = ("s_down", "o_down", "failover_in_progress", "promoted")


@dataclass(frozen=True)
class SentinelAnswer:
    """One Sentinel's view: the primary, its replicas, its peers and the quorum."""

    address: str  # the Sentinel's own host:port
    error: str | None = None
    primary: str | None = None  # host:port
    flags: tuple[str, ...] = ()
    failover_state: str = ""
    replicas: tuple[str, ...] = ()  # host:port (link status) for each replica
    sentinels: int = 0  # the others this one knows
    quorum: int = 0
    ckquorum: str = ""  # CKQUORUM's answer, or its refusal

    @property
    def switching(self) -> bool:
        """This Sentinel sees the primary down, or a failover going on."""
        return any(f in self.flags for f in _SWITCHING) or self.failover_state not in (
            "", "none")


@dataclass(frozen=True)
class SentinelReport:
    """Every Sentinel's answer."""

    answers: tuple[SentinelAnswer, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> list[SentinelAnswer]:
        """The Sentinels that answered."""
        return [a for a in self.answers if a.error is None]

    @property
    def failover(self) -> bool:
        """A failover is in progress: no Sentinel answers, one sees the primary down or
        switching, or they name different primaries."""
        usable = self.usable
        return (not usable or any(a.switching for a in usable)
                or len({a.primary for a in usable}) > 1)


def _pairs(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    items = [_s(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _once() -> Retry:
    """No retry: a Sentinel or a primary asked here answers at once or not at all."""
    return Retry(NoBackoff(), 0)


async def _ask(settings: Settings, host: str, port: int, timeout_s: float) -> SentinelAnswer:
    options = sentinel.plan(settings, {}, timeout_s=timeout_s).sentinel
    client = Redis(host=host, port=port, retry=_once(), **options)
    address = f"{host}:{port}"
    service = settings.redis_sentinel_service
    try:
        async with asyncio.timeout(timeout_s):
            # Raw replies: redis-py's parsers of SENTINEL replies differ between RESP
            # versions.
            master = _pairs(await client.execute_command("SENTINEL", "MASTER", service))  # type: ignore[no-untyped-call]  # redis-py: untyped
            replicas = await client.execute_command("SENTINEL", "REPLICAS", service)  # type: ignore[no-untyped-call]  # redis-py: untyped
            try:
                ckquorum = _s(await client.execute_command("SENTINEL", "CKQUORUM", service))  # type: ignore[no-untyped-call]  # redis-py: untyped
            except RedisError as e:  # NOQUORUM and the like
                ckquorum = str(e)
    except (RedisError, OSError, TimeoutError) as e:
        return SentinelAnswer(address, error=str(e) or type(e).__name__)
    finally:
        await client.aclose()
    links = []
    for raw in replicas or ():
        r = _pairs(raw)
        down = " down" if "s_down" in r.get("flags", "") else ""
        links.append(f"{r.get('ip')}:{r.get('port')} (link {r.get('master-link-status')}{down})")
    return SentinelAnswer(
        address,
        primary=f"{master.get('ip')}:{master.get('port')}",
        flags=tuple(master.get("flags", "").split(",")),
        failover_state=master.get("failover-state", ""),
        replicas=tuple(links),
        sentinels=int(master.get("num-other-sentinels", 0)),
        quorum=int(master.get("quorum", 0)),
        ckquorum=ckquorum,
    )


async def sentinel_report(settings: Settings, timeout_s: float | None = None
                          ) -> SentinelReport:
    """Ask every Sentinel of ``CALLMFA_REDIS_SENTINELS`` at once, each within ``timeout_s``
    (default: the connect timeout)."""
    wait_s = settings.connect_timeout_s if timeout_s is None else timeout_s
    answers = await asyncio.gather(
        *(_ask(settings, host, port, wait_s) for host, port in settings.sentinel_addresses))
    return SentinelReport(tuple(answers))


async def primary_answers(settings: Settings, address: str | None,
                          timeout_s: float = 1.0) -> bool:
    """Does the primary the Sentinels name answer a PING within ``timeout_s`` (no retry, no
    pool)?"""
    if not address:
        return False
    host, _, port = address.rpartition(":")
    options = dict(parse_url(settings.redis_url))
    node = sentinel.plan(settings, options, timeout_s=timeout_s).node
    client = Redis(host=host, port=int(port), socket_connect_timeout=timeout_s,
                   socket_timeout=timeout_s, retry=_once(), **node)
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        await client.aclose()


async def failover_in_progress(settings: Settings, timeout_s: float = 1.0) -> bool:
    """For /healthz: the Sentinels see a failover (:attr:`SentinelReport.failover`), or the
    primary they name does not answer (they have not noticed yet). Each Sentinel, then the
    primary, is given ``timeout_s``: a Sentinel that does not answer in time is one that
    does not answer, as a refused one is."""
    report = await sentinel_report(settings, timeout_s)
    if report.failover:
        return True
    return not await primary_answers(settings, report.usable[0].primary, timeout_s)
