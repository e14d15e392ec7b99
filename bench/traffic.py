"""What a run cost Redis: every command Redis ran (INFO commandstats, before and after), and
what ``callmfa serve`` sent (its commands and round trips, from its /metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

# The bench's own look at Redis, not the run's.
_OURS = frozenset({"info"})
_SERVICE_COUNTERS = {"callmfa_redis_commands_total": "commands",
                     "callmfa_redis_round_trips_total": "round_trips"}


@dataclass(frozen=True)
class Traffic:
    """One snapshot: calls per Redis command, and the service's own counts."""

    redis: dict[str, int]
    service: dict[str, float]


async def commandstats(redis: Redis) -> dict[str, int]:
    """Calls per command as Redis counts them (a script's own commands included)."""
    info: Any = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()
            if name.removeprefix("cmdstat_") not in _OURS}


async def service_counts(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """callmfa_redis_commands_total and callmfa_redis_round_trips_total from ``url``."""
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        text = await response.text()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _SERVICE_COUNTERS:
            out[_SERVICE_COUNTERS[name]] = float(value)
    return out


async def snapshot(redis: Redis, http: aiohttp.ClientSession, metrics_url: str) -> Traffic:
    """Both counts, now."""
    return Traffic(await commandstats(redis), await service_counts(http, metrics_url))


def per_call(before: Traffic, after: Traffic, calls: int) -> dict[str, Any]:
    """Per verification: every command Redis ran (``commands``, the sign-in side's and the
    scripts' own included, with the busiest by name), and callmfa's commands and round
    trips as it sent them (a script one command)."""
    n = max(calls, 1)
    used = {name: count - before.redis.get(name, 0) for name, count in after.redis.items()}
    used = {name: count for name, count in used.items() if count > 0}
    out: dict[str, Any] = {
        "commands": round(sum(used.values()) / n, 2),
        "by_command": {name: round(count / n, 2) for name, count in
                       sorted(used.items(), key=lambda kv: -kv[1])},
    }
    for key in ("commands", "round_trips"):
        if key in after.service and key in before.service:
            out[f"callmfa_{key}"] = round((after.service[key] - before.service[key]) / n, 2)
    return out
