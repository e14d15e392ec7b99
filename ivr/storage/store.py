"""The Redis side of the contract (docs/contract.md): requests, calls, outcomes, events.

Two operations are Lua scripts, so that several originators and FastAGI servers agree:
``claim_call`` places a request's call at most once, and ``store_outcome`` stores the
first outcome for an id and publishes it; any later outcome for the same id is dropped.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..domain.outcome import OutcomeRecord, iso
from ..settings import Settings
from . import sentinel
from .guard import PLACE_CALL
from .hotpath import HotPath, HotScript, LeanConnection, RedisTraffic
from .keys import (
    CLAIM_IVR,
    DEADLETTER,
    EVENTS,
    GROUP,
    REQUESTS,
    RESULTS_CHANNEL,
    STORE_OUTCOME,
    call_key,
    consumer_key,
    event_fields,
    outcome_script_args,
    result_key,
)
from .placed import Placed
from .retry import redis_retry
from .sentinel import PLAIN_RETRIES, RETRY_BASE_S, RETRY_CAP_S

log = structlog.get_logger("ivr.store")

# What a dead-lettered request keeps of its payload (its length and hash are kept too).
DEADLETTER_PAYLOAD_BYTES = 1024
_OTP_MEMBER = re.compile(rb'("otp"\s*:\s*)("(?:[^"\\]|\\.)*"|[-+.0-9eE]+)')

__all__ = [
    "DEADLETTER", "DEADLETTER_PAYLOAD_BYTES", "EVENTS", "GROUP", "REQUESTS", "RESULTS_CHANNEL",
    "Claim", "Durability", "Entry", "RedisTraffic", "Store", "call_key", "connect", "connect_for",
    "deadletter_fields", "result_key",
]

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'done' end
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- A retried claim (its reply lost in a failover) finds its own marker: still ours.
  for i = 2, #ARGV - 1, 2 do
    if ARGV[i] == 'token_hash' and redis.call('HGET', KEYS[2], 'token_hash') == ARGV[i + 1] then
      return 'new'
    end
  end
  return 'in_progress'
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 'new'
"""


# The answer, once (nothing when the marker has its answered_at already): the marker's
# answered_at, the 'ringing' event (ARGV[3], when it was seen and not yet written) and the
# 'answered' event, in that order. KEYS[1] the events, KEYS[2] the call marker.
_ANSWER_LUA = """
local function answer()
  if redis.call('HSETNX', KEYS[2], 'answered_at', ARGV[5]) == 0 then return 0 end
  if ARGV[3] ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
               'id', ARGV[2], 'event', 'ringing', 'at', ARGV[3])
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
             'id', ARGV[2], 'event', 'answered', 'at', ARGV[4])
  return 1
end
"""
_ANSWERED = _ANSWER_LUA + "return answer()\n"

# The IVR session's claim (as CLAIM_IVR, at ARGV[6]) with the answer the originator handed
# it, in one step: 0 refused (nothing written), 1 claimed, 2 claimed and the answer written.
_CLAIM_ANSWERED = _ANSWER_LUA + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[2], 'ivr_at', ARGV[6]) == 0
   and redis.call('HGET', KEYS[2], 'ivr_at') ~= ARGV[6] then return 0 end
return 1 + answer()
"""


# Settled requests: acknowledged and deleted, in one step (KEYS[1] the stream, ARGV[1] the
# group, then the entry ids).
_ACK_ALL = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return 1
"""


class Claim(StrEnum):
    """What ``claim_call`` found."""

    NEW = "new"  # ours to dial
    DONE = "done"  # an outcome exists already
    IN_PROGRESS = "in_progress"  # another delivery of the same id is being dialled


@dataclass(frozen=True)
class Pending:
    """A delivered, unacknowledged entry: who holds it and for how long."""

    entry_id: str
    consumer: str
    idle_ms: int


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id (whose first part is the enqueue time in ms) and payload."""

    entry_id: str
    payload: bytes | None = field(repr=False)  # may hold a one-time code

    @property
    def enqueued_at(self) -> float:
        """Epoch seconds at which the sign-in service added the request."""
        return int(self.entry_id.split("-", 1)[0]) / 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field(fields: Any, name: bytes) -> Any:
    """One field of a raw stream entry (a flat list of names and values; None once
    deleted)."""
    for i in range(0, len(fields or ()) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


class _Counting(AbstractConnection):
    """Counts into ``traffic`` (set on the class :func:`counting` makes)."""

    traffic: RedisTraffic

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command (a pipeline packs each of its commands here)."""
        self.traffic.commands += 1
        return super().pack_command(*args)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """One write, whose replies are read before the connection is used again."""
        self.traffic.round_trips += 1
        await super().send_packed_command(command, check_health)


def counting(base: type[AbstractConnection], traffic: RedisTraffic) -> type[AbstractConnection]:
    """``base`` (the connection class a URL or Sentinel calls for), counting into ``traffic``."""
    cls: type[AbstractConnection] = type(f"Counting{base.__name__}", (_Counting, base),
                                         {"traffic": traffic})
    return cls


def lean(base: type[AbstractConnection], traffic: RedisTraffic | None
         ) -> type[AbstractConnection]:
    """``base`` with :class:`~ivr.storage.hotpath.LeanConnection`'s write (and counting into
    ``traffic``, if given)."""
    cls: type[AbstractConnection] = type(f"Lean{base.__name__}", (LeanConnection, base), {})
    return counting(cls, traffic) if traffic is not None else cls


def driver_info() -> dict[str, Any]:
    """The ``driver_info`` argument of a pool's connections, read once for the pool.

    redis-py 8 otherwise reads its own version from the package's metadata (a file read and
    an e-mail-header parse) for every new connection: about 0.5 ms each, paid by every
    connection the pool opens as the calls in flight grow, and again after a failover.
    An older redis-py (no ``DriverInfo``) reads it once, at import: nothing to pass.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}


def connect(url: str, *, max_connections: int, timeout_s: float,
            traffic: RedisTraffic | None = None, socket_timeout_s: float | None = None) -> Redis:
    """A client on a blocking pool: waiting for a free connection beats failing at once.

    A read waits ``socket_timeout_s`` for its reply (by default ``timeout_s`` + 10 s)."""
    base = parse_url(url).get("connection_class", Connection)
    pool = BlockingConnectionPool.from_url(
        url,
        **driver_info(),
        connection_class=lean(base, traffic),
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s + 10 if socket_timeout_s is None else socket_timeout_s,
        health_check_interval=30,
        # After a Redis restart every pooled connection is stale: retry on a fresh one.
        retry=redis_retry(PLAIN_RETRIES, base_s=0.05, cap_s=1.0),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)


class FollowingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the Sentinels again on every reconnect,
    and tries their primary once per retry of the command.

    redis-py 8 reconnects a dropped connection from ``send_packed_command`` through
    ``connect_check_health``, which skips the Sentinel lookup of ``connect()``: a command
    retried after a failover would knock at the dead primary's address until it gave up.
    That reconnect runs inside the command's retry, so it makes one lookup and one try:
    with ``connect()``'s own retry as well, a primary that refused was tried the square of
    the retries (126 squared at the default budget, over an hour), not the retries.
    """

    _resolving = False

    async def connect(self) -> None:
        """Connect as redis-py's Sentinel connection does, retrying (a first connect, from
        the pool, is outside any command's retry)."""
        self._resolving = True
        try:
            await super().connect()  # type: ignore[no-untyped-call]  # redis-py: untyped
        finally:
            self._resolving = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        """Connect to the address the Sentinels give now (``connect_to`` comes back here
        with ``_resolving`` set, for the socket itself)."""
        if self.is_connected:
            return
        if self._resolving:
            await super().connect_check_health(check_health, retry_socket_connect)
            return
        self._resolving = True
        try:
            await self._connect_retry()  # type: ignore[no-untyped-call]  # redis-py: untyped
        finally:
            self._resolving = False


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    """:class:`FollowingConnection` over TLS."""


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (the primary's address asked of the Sentinels) that waits for a
    free connection as :class:`BlockingConnectionPool` does."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the connections; a full close (the client's) closes those to the
        Sentinels too (a failover's closes only the idle connections)."""
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


def connect_for(settings: Settings, *, max_connections: int,
                traffic: RedisTraffic | None = None) -> Redis:
    """The client every callmfa process uses: on ``CALLMFA_REDIS_URL``, or, with
    ``CALLMFA_REDIS_SENTINELS``, on whichever node the Sentinels say is the primary.

    With ``traffic``, its commands and round trips are counted there.
    """
    timeout_s = settings.connect_timeout_s
    if not settings.redis_sentinels:
        return connect(settings.redis_url, max_connections=max_connections, timeout_s=timeout_s,
                       traffic=traffic)
    p = sentinel.plan(settings, parse_url(settings.redis_url), timeout_s=timeout_s)
    manager = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's Sentinel is untyped
        list(p.addresses), sentinel_kwargs=dict(p.sentinel))
    node = dict(p.node)
    tls = node.pop("ssl", False)
    base: type[AbstractConnection] = FollowingSSLConnection if tls else FollowingConnection
    client: Redis = manager.master_for(
        p.service,
        connection_pool_class=BlockingSentinelPool,
        connection_class=lean(base, traffic),
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # A frozen primary (SIGSTOP, a paused VM) answers nothing: give it up as soon as
        # the Sentinels would. No command of callmfa's blocks for more than a second.
        socket_timeout=timeout_s,
        health_check_interval=30,
        # A failover: the old primary refuses (ConnectionError, or READONLY once demoted,
        # which redis-py turns into a ConnectionError) until the Sentinels name the new one.
        retry=redis_retry(p.retries, base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S,
                          budget_s=p.budget_s),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **driver_info(),
        **node,
    )
    return client


@dataclass(frozen=True)
class QueueState:
    """The request queue as Redis sees it (``group``: the consumer group exists)."""

    length: int
    group: bool
    lag: int  # not yet delivered to any originator (the length when Redis cannot tell)
    pending: int  # delivered, not yet acknowledged
    consumers: int


async def queue_state(redis: Redis) -> QueueState:
    """Read the request queue's length and its consumer group's figures."""
    length = await redis.xlen(REQUESTS)
    try:
        groups = await redis.xinfo_groups(REQUESTS)
    except ResponseError:  # no such key: nothing was ever queued
        groups = []
    for group in groups:
        if _text(group.get("name", b"")) == GROUP:
            lag = group.get("lag")  # nil when Redis cannot tell (entries deleted)
            return QueueState(length, True, length if lag is None else int(lag),
                              int(group.get("pending", 0)), int(group.get("consumers", 0)))
    return QueueState(length, False, length, 0, 0)


@dataclass(frozen=True)
class Durability:
    """``WAIT replicas timeout_ms`` after the writes a failover must not lose (the request,
    the call claim, the outcome); ``replicas`` 0: no WAIT. ``on_short`` is told the write's
    name when fewer replicas acknowledged it in time (callmfa goes on: the primary has it)."""

    replicas: int = 0
    timeout_ms: int = 500
    on_short: Callable[[str], None] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, on_short: Callable[[str], None] | None = None
    ) -> Durability:
        """CALLMFA_REDIS_WAIT_REPLICAS and CALLMFA_REDIS_WAIT_TIMEOUT_MS."""
        return cls(settings.redis_wait_replicas, settings.redis_wait_timeout_ms, on_short)

    async def run_script(self, what: str, script: HotScript, keys: list[Any],
                         args: list[Any]) -> Any:
        """Run a Lua script, then WAIT on the same connection (WAIT counts the replicas
        that have this connection's writes); the script's reply."""
        if self.replicas <= 0:
            return await script(keys=keys, args=args)
        # EVAL, not EVALSHA: a newly promoted primary may not have the script cached.
        command = ("EVAL", script.script, len(keys), *keys, *args)
        reply, acked = await script.hot.run((command, ("WAIT", self.replicas, self.timeout_ms)))
        self._check(what, acked)
        return reply

    async def command(self, redis: Redis, what: str, *command: Any) -> Any:
        """Run one command, then WAIT on the same connection; the command's reply."""
        if self.replicas <= 0:
            return await redis.execute_command(*command)  # type: ignore[no-untyped-call]  # redis-py: untyped
        async with redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            reply, acked = await pipe.execute()
        self._check(what, acked)
        return reply

    def _check(self, what: str, acked: Any) -> None:
        if int(acked) < self.replicas:
            log.warning("redis_write_unreplicated", write=what, replicas=int(acked),
                        wanted=self.replicas, timeout_ms=self.timeout_ms)
            if self.on_short is not None:
                self.on_short(what)


class StoreObserver(Protocol):
    """Told of what the store wrote (the metrics)."""

    def event_added(self, name: str) -> None:
        """A progress event was written."""

    def outcome_stored(self, record: OutcomeRecord) -> None:
        """The first outcome for an id was stored."""


class Store:
    """callmfa's keys in one Redis."""

    def __init__(
        self, redis: Redis, *, result_ttl_s: int, events_maxlen: int,
        observer: StoreObserver | None = None, signing_key: bytes = b"",
        webhook_url: str = "",
        durability: Durability | None = None,
    ) -> None:
        self.redis = redis
        self._webhook_url = webhook_url  # where outcomes go without a callback_url
        self._durability = durability or Durability()
        self._observer = observer
        self._signing_key = signing_key  # outcomes carry an HMAC "sig" when set
        self._ttl = result_ttl_s
        self._maxlen = events_maxlen
        # The scripts and the read of requests, which every verification runs, skip the
        # client's layers (hotpath.py); the rest goes through the client.
        self._hot = hot = HotPath(redis)
        self._claim = hot.register_script(_CLAIM)
        self._store_outcome = hot.register_script(STORE_OUTCOME)
        self._claim_ivr = hot.register_script(CLAIM_IVR)
        self._place = hot.register_script(PLACE_CALL)
        # The calls this process placed, while they last: the IVR of such a call reads its
        # marker here, not from Redis, and writes the answer with its claim.
        self._placed: dict[str, Placed] = {}
        self._answered = hot.register_script(_ANSWERED)
        self._claim_answered = hot.register_script(_CLAIM_ANSWERED)
        self._ack_all = hot.register_script(_ACK_ALL)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing (e.g. after a Redis loss)."""
        try:
            await self.redis.xgroup_create(REQUESTS, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read_requests(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer, waiting up to ``block_ms``."""
        reply: Any = await self._hot.execute(
            "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms,
            "STREAMS", REQUESTS, ">")
        streams = reply.items() if isinstance(reply, dict) else reply or ()  # RESP3: a map
        return [Entry(_text(entry_id), _field(fields, b"request"))
                for _stream, items in streams for entry_id, fields in items]

    async def request_payload(self, entry_id: str) -> bytes | None:
        """The request held by the stream entry ``entry_id`` (None once it is settled and
        deleted): how the IVR reads an otp request's code, which is in no other key."""
        if not entry_id:
            return None
        rows: Any = await self.redis.xrange(REQUESTS, min=entry_id, max=entry_id, count=1)
        return (rows[0][1] or {}).get(b"request") if rows else None

    async def heartbeat(self, consumer: str, lease_ms: int) -> None:
        """Renew this originator's lease; others take over its entries once it lapses."""
        await self.redis.set(consumer_key(consumer), "1", px=lease_ms)

    async def retire(self, consumer: str) -> None:
        """Give the lease up at once (clean shutdown): what is left pending is free to take."""
        await self.redis.delete(consumer_key(consumer))

    async def pending(self, min_idle_ms: int, count: int) -> list[Pending]:
        """Entries delivered at least ``min_idle_ms`` ago and not acknowledged."""
        rows: Any = await self.redis.xpending_range(
            REQUESTS, GROUP, min="-", max="+", count=count, idle=min_idle_ms
        )
        return [
            Pending(_text(r["message_id"]), _text(r["consumer"]), int(r["time_since_delivered"]))
            for r in rows
        ]

    async def alive(self, consumers: set[str]) -> set[str]:
        """Which of these originators hold a lease now."""
        names = sorted(consumers)
        if not names:
            return set()
        leases: Any = await self.redis.mget([consumer_key(c) for c in names])
        return {name for name, lease in zip(names, leases, strict=True) if lease is not None}

    async def claim(self, consumer: str, entry_ids: list[str], min_idle_ms: int) -> list[Entry]:
        """Take entries over; an entry another originator claimed first is not returned."""
        if not entry_ids:
            return []
        ids: list[Any] = list(entry_ids)
        reply: Any = await self.redis.xclaim(
            REQUESTS, GROUP, consumer, min_idle_time=min_idle_ms, message_ids=ids
        )
        return [Entry(_text(eid), (fields or {}).get(b"request")) for eid, fields in reply]

    async def ack(self, entry_id: str) -> None:
        """The request is settled (its outcome stored, or it was dead-lettered): acknowledge
        it and delete it from the stream, atomically and in one round trip.

        Nothing keeps a settled request (its number and context) in Redis: the stream holds
        only what waits to be delivered and what is being worked on.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(REQUESTS, GROUP, entry_id)
            pipe.xdel(REQUESTS, entry_id)
            await pipe.execute()

    async def ack_all(self, entry_ids: list[str]) -> None:
        """:meth:`ack` for several settled requests at once: one round trip, one command."""
        await self._ack_all(keys=[REQUESTS], args=[GROUP, *entry_ids])

    async def claim_call(self, rid: str, fields: Mapping[str, str]) -> Claim:
        """Record that ``rid`` is being dialled, unless it was already."""
        args: list[str | int] = [self._ttl]
        for k, v in fields.items():
            args += [k, v]
        keys = [result_key(rid), call_key(rid)]
        found = await self._durability.run_script("call_claim", self._claim, keys, args)
        return Claim(found.decode() if isinstance(found, bytes) else found)

    async def place_call(
        self, rid: str, admission: tuple[list[str], list[str | int]],
        fields: Mapping[str, str], *, dialing: bool,
    ) -> tuple[Any, ...]:
        """Admission (``admission``: :meth:`~ivr.storage.guard.Guard.admission`), the call
        claim and the ``queued`` event (and ``dialing`` with ``dialing``), in one step.

        The reply is ``(found, detail, retry_after)``: ``found`` a :class:`Claim` value
        when admitted (or a duplicate), else admission's verdict (blocked, bypassed,
        throttled) with its detail and retry_after.
        """
        keys, args = admission
        extra: list[str | int] = [self._ttl, self._maxlen, iso(time.time()) or "",
                                  "1" if dialing else ""]
        for k, v in fields.items():
            extra += [k, v]
        reply: Any = await self._durability.run_script(
            "call_claim", self._place, [*keys, EVENTS], [*args, *extra])
        found, detail, retry = (v.decode() if isinstance(v, bytes) else v for v in reply)
        if found == Claim.NEW.value:
            self._placed[rid] = Placed(dict(fields))
        if found == Claim.NEW.value and self._observer is not None:
            self._observer.event_added("queued")
            if dialing:
                self._observer.event_added("dialing")
        return found, detail, retry

    def forget_call(self, rid: str) -> bool:
        """The call placed by :meth:`place_call` is over: its marker is read from Redis.

        True when its outcome was stored by this process while it lasted: the request's
        stream entry is acknowledged already (:meth:`store_outcome`).
        """
        placed = self._placed.pop(rid, None)
        return placed is not None and placed.settled

    async def call_info(self, rid: str) -> dict[str, str]:
        """The call marker's fields (empty if unknown): as this process wrote it while its
        call lasts, else from Redis."""
        if (placed := self._placed.get(rid)) is not None:
            return dict(placed.fields)
        raw: Any = await self.redis.hgetall(call_key(rid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def claim_ivr(self, rid: str, at: float) -> bool:
        """Take the call for this IVR session; False if another session took it first (or
        no such call was placed).

        When this process placed the call and its originator handed the answer over
        (:meth:`mark_answered`), the claim writes the answer too, in the same step; a
        refused session writes nothing.
        """
        placed = self._placed.get(rid)
        answer = placed.claim_starts() if placed is not None else None
        if answer is None:
            return bool(await self._claim_ivr(keys=[call_key(rid)], args=[str(at)]))
        try:
            found = int(await self._claim_answered(
                keys=[EVENTS, call_key(rid)],
                args=[*self._answer_args(rid, answer.at, answer.ringing_at), str(at)]))
        except BaseException:
            answer.resolve(False)  # the originator writes it (at most once: answered_at)
            raise
        if found == 2:
            self._answer_written(answer.ringing_at)
        answer.resolve(found > 0)  # 1: the answer was in already
        return found > 0

    async def mark_answered(self, rid: str, at: float, *, ringing_at: float | None = None,
                            hand_over_s: float = 0.0) -> None:
        """The call was answered: the marker's answered_at, the ``ringing`` event (with
        ``ringing_at``, when the phone was seen ringing) and the ``answered`` event, in one
        step (so the events precede anything the IVR writes next).

        With ``hand_over_s``, a call this process placed waits up to that long for this
        process's IVR session, whose claim then writes the answer in its own step (one
        round trip fewer); when no session claims in time, or it was refused, it is
        written here.
        """
        placed = self._placed.get(rid)
        if placed is not None:
            placed.fields["answered_at"] = str(at)
            if hand_over_s > 0 and await placed.hand_over(at, ringing_at, hand_over_s):
                return
        if await self._answered(keys=[EVENTS, call_key(rid)],
                                args=self._answer_args(rid, at, ringing_at)):
            self._answer_written(ringing_at)

    def _answer_args(self, rid: str, at: float, ringing_at: float | None) -> list[str | int]:
        ringing = iso(ringing_at) or "" if ringing_at is not None else ""
        return [self._maxlen, rid, ringing, iso(at) or "", str(at)]

    def _answer_written(self, ringing_at: float | None) -> None:
        if self._observer is not None:
            if ringing_at is not None:
                self._observer.event_added("ringing")
            self._observer.event_added("answered")

    async def store_outcome(self, record: OutcomeRecord, *, input_at: float | None = None,
                            callback_url: str = "") -> bool:
        """Store and publish the outcome, and queue its webhook; False if ``record.id``
        already had one.

        With ``input_at``, the ``input`` event is appended first, in the same round trip.
        The webhook goes to ``callback_url``, else the call marker's, else the default URL.
        For a call this process placed, the request's stream entry (as its originator
        wrote it) is acknowledged and deleted in the same step, whichever outcome is the
        stored one (:meth:`forget_call` says so).
        """
        placed = self._placed.get(record.id)
        entry_id = placed.fields.get("entry_id", "") if placed is not None else ""
        keys, args = outcome_script_args(
            record, self._ttl, self._maxlen, input_at, signing_key=self._signing_key,
            webhook_url=self._webhook_url, callback_url=callback_url, entry_id=entry_id,
        )
        # Settled from the moment the script is sent: it publishes the outcome, which the
        # originator may learn (and be done with) before this reply (and WAIT's) is read.
        settled = placed is not None and placed.settled
        if placed is not None and entry_id:
            placed.settled = True
        try:
            stored = bool(await self._durability.run_script("outcome", self._store_outcome,
                                                            keys, args))
        except BaseException:
            if placed is not None:
                placed.settled = settled
            raise
        if stored and self._observer is not None:
            self._observer.outcome_stored(record)
        return stored

    def outcome_seen(self, record: OutcomeRecord) -> None:
        """An outcome stored by a process with no metrics of its own (the classic AGI
        script), learnt by the originator that placed the call: tell the observer once."""
        if self._observer is not None:
            self._observer.outcome_stored(record)

    async def get_outcome(self, rid: str) -> OutcomeRecord | None:
        """The stored outcome, if any."""
        raw = await self.redis.get(result_key(rid))
        return OutcomeRecord.from_json(raw) if raw is not None else None

    async def event(self, rid: str, name: str, at: float | None = None, **fields: str) -> None:
        """Append a progress event (queued, dialing, ringing, answered, input)."""
        data: dict[Any, Any] = event_fields(rid, name, at, **fields)
        await self.redis.xadd(EVENTS, data, maxlen=self._maxlen, approximate=True)
        if self._observer is not None:
            self._observer.event_added(name)

    async def deadletter(self, entry_id: str, payload: bytes | None, error: str) -> None:
        """Keep a request that cannot even be answered (no usable id), with the reason.

        At most ``DEADLETTER_PAYLOAD_BYTES`` of it are kept, with its length and SHA-256.
        """
        await self.redis.xadd(
            DEADLETTER, deadletter_fields(entry_id, payload, error),
            maxlen=self._maxlen, approximate=True,
        )


def redact_otp(payload: bytes) -> bytes:
    """The payload with the value of any ``"otp"`` member replaced: a one-time code is kept
    nowhere, not even in a broken request."""
    return _OTP_MEMBER.sub(rb'\1"<redacted>"', payload)


def deadletter_fields(entry_id: str, payload: bytes | None, error: str) -> dict[Any, Any]:
    """One ``callmfa:deadletter`` entry: the payload (its ``otp`` redacted) cut to
    ``DEADLETTER_PAYLOAD_BYTES``, its full length (``request_bytes``) and the SHA-256 of all
    of it (``request_sha256``, after the redaction: a short code's hash is easily reversed)."""
    raw = redact_otp(payload or b"")
    return {
        "entry_id": entry_id,
        "request": raw[:DEADLETTER_PAYLOAD_BYTES],
        "request_bytes": len(raw),
        "request_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": "1" if len(raw) > DEADLETTER_PAYLOAD_BYTES else "0",
        "error": error,
    }
