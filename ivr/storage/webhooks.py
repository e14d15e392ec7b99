"""The delivery queue of webhooks and alert e-mails, in Redis (docs/webhooks.md).

``callmfa:webhooks`` is a stream of deliveries read by the consumer group ``senders``: a new
entry is tried at once by whichever ``callmfa serve`` reads it, and one that a crashed
process held is taken over (XAUTOCLAIM). A failed attempt moves the entry to the retry
schedule, ``callmfa:webhooks:retry`` (entry id -> next attempt in epoch ms), and counts it in
``callmfa:webhooks:failures``; the entry itself stays in the stream until it is delivered
or dead-lettered to ``callmfa:webhooks:dead``. Taking a due entry moves its next attempt a
lease ahead in the same script, so only one process tries it, and a process that dies while
trying gives it back when the lease ends. Everything lives in Redis: a restart loses nothing.

Security events are read from ``callmfa:audit`` by the consumer group ``webhooks`` and
turned into deliveries in one MULTI with the acknowledgement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .keys import (
    ALERT_GROUP,
    AUDIT,
    AUDIT_GROUP,
    WEBHOOK_DEAD,
    WEBHOOK_FAILURES,
    WEBHOOK_GROUP,
    WEBHOOK_RETRY,
    WEBHOOKS,
)

DEAD_MAXLEN = 100_000
_FIELDS = ("channel", "target", "webhook_id", "type", "timestamp", "created_at", "payload")

# KEYS: retry schedule, stream, failures. ARGV: now ms, leased-until ms, count.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(due) do
  local e = redis.call('XRANGE', KEYS[2], id, id)
  if #e == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, {id, e[1][2], redis.call('HGET', KEYS[3], id) or '0'})
  end
end
return out
"""

# KEYS: stream, retry schedule, failures. ARGV: group, entry id.
_DELIVERED = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""

# KEYS: stream, retry schedule, failures. ARGV: group, entry id, next attempt ms, failures.
_RETRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: stream, retry schedule, failures, dead letters. ARGV: group, entry id, maxlen,
# then the dead letter's fields.
_DEAD = """
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Delivery:
    """One webhook or e-mail to send, and how many attempts at it failed so far."""

    entry_id: str
    fields: dict[str, str]
    failures: int = 0

    @property
    def channel(self) -> str:
        """``webhook`` (an HTTP POST) or ``email``."""
        return self.fields.get("channel", "")

    @property
    def target(self) -> str:
        """The URL, or the recipients."""
        return self.fields.get("target", "")

    @property
    def webhook_id(self) -> str:
        """The same on every attempt: receivers deduplicate by it."""
        return self.fields.get("webhook_id", "")

    @property
    def created_at(self) -> float:
        """When the event happened (epoch seconds); the 24 h of retries count from it."""
        try:
            return float(self.fields.get("created_at", ""))
        except ValueError:
            return int(self.entry_id.split("-", 1)[0]) / 1000


def _delivery(entry_id: Any, raw: Any, failures: Any = 0) -> Delivery:
    if isinstance(raw, list):  # a Lua reply: a flat list of names and values
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
    return Delivery(_text(entry_id), fields, int(_text(failures) if failures else 0))


@dataclass(frozen=True)
class QueueFigures:
    """What ``callmfa check`` and the metrics show."""

    pending: int  # not yet delivered nor given up (new, being tried, or waiting to retry)
    scheduled: int  # waiting for a retry
    dead: int  # given up on after CALLMFA_WEBHOOK_GIVE_UP_S


class DeliveryQueue:
    """The deliveries stream, its retry schedule and its dead letters in one Redis."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take_due = redis.register_script(_TAKE_DUE)
        self._delivered = redis.register_script(_DELIVERED)
        self._retry = redis.register_script(_RETRY)
        self._dead = redis.register_script(_DEAD)

    async def ensure_groups(self, audit_groups: Sequence[str] = ()) -> None:
        """Create the senders' group, and these audit readers' groups (from now on: earlier
        audit entries are not sent), if missing."""
        groups = [(WEBHOOKS, WEBHOOK_GROUP, "0")]
        for group in audit_groups:
            groups.append((AUDIT, group, await self._audit_start(group)))
        for stream, group, start in groups:
            try:
                await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def _audit_start(self, group: str) -> str:
        """Where a new audit group starts: now; the e-mails' group where the security
        webhooks' group is, if it exists (it queued the e-mails too before they had a group
        of their own, so an upgrade loses none)."""
        if group != ALERT_GROUP:
            return "$"
        try:
            groups: Any = await self.redis.xinfo_groups(AUDIT)
        except ResponseError:  # no stream yet
            return "$"
        for g in groups:
            if _text(g["name"]) == AUDIT_GROUP:
                return _text(g["last-delivered-id"])
        return "$"

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        """Deliveries no process has tried yet, waiting up to ``block_ms``."""
        reply: Any = await self.redis.xreadgroup(
            WEBHOOK_GROUP, consumer, {WEBHOOKS: ">"}, count=count, block=block_ms)
        return [_delivery(eid, f) for _s, items in reply or () for eid, f in items]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Delivery]:
        """First attempts that a process took and never settled (it died)."""
        reply: Any = await self.redis.xautoclaim(
            WEBHOOKS, WEBHOOK_GROUP, consumer, min_idle_time=min_idle_ms, count=count)
        return [_delivery(eid, f) for eid, f in reply[1] if f]

    async def take_due(self, now_ms: int, lease_ms: int, count: int) -> list[Delivery]:
        """Retries due now, each leased to this process for ``lease_ms``."""
        reply: Any = await self._take_due(
            keys=[WEBHOOK_RETRY, WEBHOOKS, WEBHOOK_FAILURES],
            args=[now_ms, now_ms + lease_ms, count])
        return [_delivery(eid, f, n) for eid, f, n in reply]

    async def delivered(self, d: Delivery) -> None:
        """Sent: forget it."""
        await self._delivered(keys=[WEBHOOKS, WEBHOOK_RETRY, WEBHOOK_FAILURES],
                              args=[WEBHOOK_GROUP, d.entry_id])

    async def retry_at(self, d: Delivery, at_ms: int, failures: int) -> None:
        """Failed again: try it at ``at_ms``."""
        await self._retry(keys=[WEBHOOKS, WEBHOOK_RETRY, WEBHOOK_FAILURES],
                          args=[WEBHOOK_GROUP, d.entry_id, at_ms, failures])

    async def dead(self, d: Delivery, failures: int, error: str, at: str) -> None:
        """Given up on: keep it in the dead letters with why, and forget it."""
        letter: list[str | int] = []
        for name in _FIELDS:
            letter += [name, d.fields.get(name, "")]
        letter += ["entry_id", d.entry_id, "attempts", failures, "error", error, "dead_at", at]
        await self._dead(keys=[WEBHOOKS, WEBHOOK_RETRY, WEBHOOK_FAILURES, WEBHOOK_DEAD],
                         args=[WEBHOOK_GROUP, d.entry_id, DEAD_MAXLEN, *letter])

    async def read_audit(self, group: str, consumer: str, count: int,
                         block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Audit entries ``group`` has not routed yet, waiting up to ``block_ms``."""
        reply: Any = await self.redis.xreadgroup(
            group, consumer, {AUDIT: ">"}, count=count, block=block_ms)
        return [(_text(eid), _delivery(eid, f).fields)
                for _s, items in reply or () for eid, f in items]

    async def reclaim_audit(self, group: str, consumer: str, min_idle_ms: int,
                            count: int) -> list[tuple[str, dict[str, str]]]:
        """Audit entries that a process of ``group`` read and never routed (it died)."""
        reply: Any = await self.redis.xautoclaim(
            AUDIT, group, consumer, min_idle_time=min_idle_ms, count=count)
        return [(_text(eid), _delivery(eid, f).fields) for eid, f in reply[1] if f]

    async def route_audit(self, group: str, audit_id: str,
                          deliveries: Sequence[Mapping[str, str]]) -> None:
        """Queue the deliveries of one audit entry and acknowledge it for ``group``,
        atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for fields in deliveries:
                pipe.xadd(WEBHOOKS, dict(fields))  # type: ignore[arg-type]
            pipe.xack(AUDIT, group, audit_id)
            await pipe.execute()

    async def figures(self) -> QueueFigures:
        """The pending, scheduled and dead-lettered counts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(WEBHOOKS)
            pipe.zcard(WEBHOOK_RETRY)
            pipe.xlen(WEBHOOK_DEAD)
            pending, scheduled, dead = await pipe.execute()
        return QueueFigures(int(pending), int(scheduled), int(dead))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The latest dead letters, newest first."""
        entries: Any = await self.redis.xrevrange(WEBHOOK_DEAD, count=count)
        return [_delivery(eid, f).fields for eid, f in entries]
