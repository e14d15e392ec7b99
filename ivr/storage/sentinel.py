"""Redis Sentinel: what the connection factories (``store.connect_for`` and the classic
script's ``SyncStore.connect``) need to find the primary through the Sentinels.

With ``CALLMFA_REDIS_SENTINELS`` set, the primary's address comes from the Sentinels and
``CALLMFA_REDIS_URL`` gives only what every data node shares: the ACL user and password,
the database, and TLS (``rediss://`` and its ``ssl_*`` query options). redis-py's Sentinel
pools ask the Sentinels again on every new connection, and turn a ``READONLY`` reply (an old
primary demoted to replica) into a ``ConnectionError``, so a retried command lands on the new
primary. What is left to us: a retry budget that outlasts a failover, and a pool that waits
for a free connection instead of failing at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..settings import Settings

# The backoff between two retries of one command: full jitter over at most this many
# seconds, so a retried command sees a new primary within about half of it.
RETRY_CAP_S = 0.5
RETRY_BASE_S = 0.05
# Retries a plain (non-Sentinel) client makes: enough for a restart's stale connections.
PLAIN_RETRIES = 5
# What the data nodes' URL may carry that is not the address.
_NODE_KEYS = ("username", "password", "db", "client_name")


@dataclass(frozen=True)
class SentinelPlan:
    """Everything needed to open a Sentinel-managed client; secrets masked in repr."""

    addresses: tuple[tuple[str, int], ...]
    service: str
    node: Mapping[str, Any] = field(repr=False)  # data nodes: user, password, db, ssl_*
    sentinel: Mapping[str, Any] = field(repr=False)  # the Sentinels' own connections
    retries: int
    budget_s: float  # no retry of a command starts later than this after its first try


def retries_for(failover_s: float) -> int:
    """Retries of one command that outlast ``failover_s`` with our backoff (whose mean
    wait, once capped, is half of ``RETRY_CAP_S``)."""
    return PLAIN_RETRIES + math.ceil(failover_s / (RETRY_CAP_S / 2))


def budget_for(failover_s: float) -> float:
    """How long the :func:`retries_for` retries of one command may go on: as long as they
    take when each try fails at once, with a margin; a count alone is no bound when each
    try waits its socket timeout (a frozen primary: 126 tries of 5 s at the defaults)."""
    return failover_s + PLAIN_RETRIES * RETRY_CAP_S


def plan(settings: Settings, url_options: Mapping[str, Any], *, timeout_s: float) -> SentinelPlan:
    """The Sentinel plan for ``settings``; ``url_options`` is redis-py's ``parse_url`` of
    ``CALLMFA_REDIS_URL`` (sync or asyncio: only its TLS connection class differs)."""
    tls = _is_tls(url_options)
    ssl_options = {k: v for k, v in url_options.items() if k.startswith("ssl_")}
    node: dict[str, Any] = {k: url_options[k] for k in _NODE_KEYS if k in url_options}
    if tls:
        node.update(ssl_options, ssl=True)
    sentinel: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
    }
    if settings.redis_sentinel_user:
        sentinel["username"] = settings.redis_sentinel_user
    if settings.redis_sentinel_password:
        sentinel["password"] = settings.redis_sentinel_password
    if settings.redis_sentinel_tls:
        sentinel.update(ssl_options, ssl=True)
    return SentinelPlan(
        addresses=settings.sentinel_addresses,
        service=settings.redis_sentinel_service,
        node=node,
        sentinel=sentinel,
        retries=retries_for(settings.redis_failover_s),
        budget_s=budget_for(settings.redis_failover_s),
    )


def _is_tls(url_options: Mapping[str, Any]) -> bool:
    cls = url_options.get("connection_class")
    return cls is not None and "SSL" in getattr(cls, "__name__", "")
