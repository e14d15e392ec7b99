"""What the Sentinels say about callmfa's primary: for ``callmfa check`` and ``/healthz``.

Each Sentinel is asked on its own (``SENTINEL MASTER``, ``REPLICAS``, ``SENTINELS``,
``CKQUORUM``), with the connect timeout, so that one dead or stopped Sentinel costs a
timeout and nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
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


async def _ask(settings: Settings, host: str, port: int) -> SentinelAnswer:
    options = sentinel.plan(settings, {}, timeout_s=settings.connect_timeout_s).sentinel
    client = Redis(host=host, port=port, **options)
    address = f"{host}:{port}"
    service = settings.redis_sentinel_service
    try:
        # Raw replies: redis-py's parsers of SENTINEL replies differ between RESP versions.
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


async def sentinel_report(settings: Settings) -> SentinelReport:
    """Ask every Sentinel of ``CALLMFA_REDIS_SENTINELS`` at once."""
    answers = await asyncio.gather(
        *(_ask(settings, host, port) for host, port in settings.sentinel_addresses))
    return SentinelReport(tuple(answers))


async def primary_answers(settings: Settings, address: str | None) -> bool:
    """Does the primary the Sentinels name answer a PING at once (no retry, no pool)?"""
    if not address:
        return False
    host, _, port = address.rpartition(":")
    options = dict(parse_url(settings.redis_url))
    node = sentinel.plan(settings, options, timeout_s=1.0).node
    client = Redis(host=host, port=int(port), socket_connect_timeout=1.0, socket_timeout=1.0,
                   retry_on_timeout=False, **node)
    try:
        return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False
    finally:
        await client.aclose()


async def failover_in_progress(settings: Settings) -> bool:
    """For /healthz: the Sentinels see a failover (:attr:`SentinelReport.failover`), or the
    primary they name does not answer (they have not noticed yet)."""
    report = await sentinel_report(settings)
    if report.failover:
        return True
    return not await primary_answers(settings, report.usable[0].primary)
