"""Throttles, blocks, bypasses and the audit stream, in Redis (docs/security.md).

Admission is one Lua script, so that any number of originators agree: it finds duplicate
deliveries, blocked users, one-time bypasses, a call already in flight for the user,
cooldowns and hourly caps (sliding windows on Redis' own clock), and on success takes the
user's in-flight lock and counts the call, all in one step. The lock names the request
that holds it and counts as released once that request has an outcome, so it is free the
moment the outcome is stored, with a TTL for a holder that never gets one.

Every change of a block or a bypass, every bypass used and every request refused here
(``blocked``, ``throttled``) is written to ``callmfa:audit`` and published on
``callmfa:security`` in the same script.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from ..domain.outcome import iso
from .keys import (
    AUDIT,
    AUDIT_LUA,
    AUDIT_MAXLEN,
    BLOCKED,
    RECORD_AUDIT,
    audit_script_args,
    bypass_key,
    call_key,
    result_key,
)


def inflight_key(user: str) -> str:
    """The id of the request whose call to ``user`` is in flight."""
    return f"callmfa:inflight:{user}"


# The admission decision as a Lua function, ``admit()`` (KEYS 1-11, ARGV 1-12 as
# :meth:`Guard.admission` gives them): the admission script alone, and the start of the
# place-call script (admission, the call claim and the first events in one step).
ADMISSION_LUA = AUDIT_LUA + """
local function admit()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, user, number = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return {'duplicate', '', 0}
end
local holder = redis.call('GET', KEYS[5])
if holder == rid then return {'duplicate', '', 0} end
-- Every verdict but admitted (and duplicate) is audited and published.
local function audited(event, ...)
  local fields = {'event', event, 'user', user, 'id', rid, 'number', number,
                  'actor', 'originator', 'at', ARGV[12], ...}
  audit(KEYS[11], fields)
end
local function refused(verdict, detail, wait)
  if verdict == 'blocked' then
    audited('request_refused', 'outcome', 'blocked')
  else
    audited('request_refused', 'outcome', verdict, 'reason', detail,
            'retry_after', tostring(wait))
  end
  return {verdict, detail, wait}
end
local blocked_until = redis.call('ZSCORE', KEYS[3], user)
if blocked_until and tonumber(blocked_until) > now then return refused('blocked', '', 0) end
if redis.call('GETDEL', KEYS[4]) then
  audited('bypass_used')
  return {'bypassed', '', 0}
end
local function left(key)
  local ms = redis.call('PTTL', key)
  if ms > 0 then return math.ceil(ms / 1000) end
  return 0
end
if holder and redis.call('EXISTS', ARGV[11] .. holder) == 0 then
  return refused('throttled', 'call_in_progress', math.max(1, left(KEYS[6])))
end
local wait = left(KEYS[6])
if wait > 0 then return refused('throttled', 'user_cooldown', wait) end
wait = left(KEYS[7])
if wait > 0 then return refused('throttled', 'number_cooldown', wait) end
local function full(key, cap)
  if cap <= 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 3600000)
  local n = redis.call('ZCARD', key)
  if n < cap then return 0 end
  local oldest = redis.call('ZRANGE', key, n - cap, n - cap, 'WITHSCORES')
  return math.max(1, math.ceil((tonumber(oldest[2]) + 3600000 - now) / 1000))
end
local caps = {{KEYS[8], tonumber(ARGV[7]), 'user_hourly_cap'},
              {KEYS[9], tonumber(ARGV[8]), 'number_hourly_cap'},
              {KEYS[10], tonumber(ARGV[9]), 'global_hourly_cap'}}
for _, c in ipairs(caps) do
  wait = full(c[1], c[2])
  if wait > 0 then return refused('throttled', c[3], wait) end
end
redis.call('SET', KEYS[5], rid, 'EX', ARGV[4])
if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[6], rid, 'EX', ARGV[5]) end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[7], rid, 'EX', ARGV[6]) end
for _, c in ipairs(caps) do
  if c[2] > 0 then
    redis.call('ZADD', c[1], now, rid)
    redis.call('PEXPIRE', c[1], 3600000)
  end
end
return {'admitted', '', 0}
end
"""

_ADMIT = ADMISSION_LUA + "return admit()\n"

# Admission, then the call claim and the 'queued' (and 'dialing') events, in one step.
# KEYS 1-11: admission's (1: the result, 2: the call marker); 12: the events stream.
# ARGV 1-12: admission's; 13: the marker's TTL; 14: the events' maxlen; 15: the events'
# time; 16: '1' to write 'dialing' too; 17...: the marker's fields and values.
PLACE_CALL = ADMISSION_LUA + """
local verdict = admit()
if verdict[1] == 'duplicate' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', '', 0} end
  if redis.call('EXISTS', KEYS[2]) == 1 then
    -- A retried step (its reply lost in a failover) finds its own marker: still ours,
    -- and its events are written already.
    for i = 17, #ARGV - 1, 2 do
      if ARGV[i] == 'token_hash' and redis.call('HGET', KEYS[2], 'token_hash') == ARGV[i + 1] then
        return {'new', '', 0}
      end
    end
    return {'in_progress', '', 0}
  end
elseif verdict[1] ~= 'admitted' then
  return verdict
end
redis.call('HSET', KEYS[2], unpack(ARGV, 17))
redis.call('EXPIRE', KEYS[2], ARGV[13])
redis.call('XADD', KEYS[12], 'MAXLEN', '~', ARGV[14], '*',
           'id', ARGV[1], 'event', 'queued', 'at', ARGV[15])
if ARGV[16] == '1' then
  redis.call('XADD', KEYS[12], 'MAXLEN', '~', ARGV[14], '*',
             'id', ARGV[1], 'event', 'dialing', 'at', ARGV[15])
end
return {'new', '', 0}
"""



class Verdict(StrEnum):
    """What admission decided."""

    ADMITTED = "admitted"  # the call may be placed; the lock is taken and the call counted
    DUPLICATE = "duplicate"  # the same id again: let the call claim deduplicate it
    BLOCKED = "blocked"
    BYPASSED = "bypassed"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class Admission:
    """The verdict, with ``detail`` and ``retry_after`` (seconds) for ``throttled``."""

    verdict: Verdict
    detail: str | None = None
    retry_after: int | None = None


def admission_of(reply: Any) -> Admission:
    """The admission script's reply, ``{verdict, detail, retry_after}``."""
    verdict, detail, retry = (v.decode() if isinstance(v, bytes) else v for v in reply)
    return Admission(Verdict(verdict), detail or None, int(retry) or None)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Throttling limits; 0 turns one off. ``lock_ttl_s`` bounds a lost in-flight lock."""

    user_cooldown_s: int
    number_cooldown_s: int
    user_per_hour: int
    number_per_hour: int
    global_per_hour: int
    lock_ttl_s: int


@dataclass(frozen=True)
class BlockedUser:
    """One entry of the block list."""

    user: str
    until: float


class Guard:
    """Admission, the block list, bypasses and the audit stream in one Redis."""

    def __init__(self, redis: Redis, limits: Limits) -> None:
        self.redis = redis
        self._limits = limits
        self._admit = redis.register_script(_ADMIT)
        self._record = redis.register_script(RECORD_AUDIT)

    @property
    def lock_ttl_s(self) -> int:
        """How long a user's in-flight lock lasts (a call's longest time and a margin)."""
        return self._limits.lock_ttl_s

    def admission(self, rid: str, user: str, number: str, *, wait_s: float = 0.0
                  ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of the admission of ``rid`` (its script, or the place-call one);
        ``wait_s``: how long its call may wait for an Asterisk with room, which its in-flight
        lock outlasts as well."""
        lim = self._limits
        lock_ttl_s = lim.lock_ttl_s + math.ceil(max(0.0, wait_s))
        return [
            result_key(rid), call_key(rid), BLOCKED, bypass_key(user),
            inflight_key(user), f"callmfa:cooldown:user:{user}",
            f"callmfa:cooldown:number:{number}", f"callmfa:rate:user:{user}",
            f"callmfa:rate:number:{number}", "callmfa:rate:global", AUDIT,
        ], [
            rid, user, number, lock_ttl_s, lim.user_cooldown_s, lim.number_cooldown_s,
            lim.user_per_hour, lim.number_per_hour, lim.global_per_hour, AUDIT_MAXLEN,
            result_key(""), iso(time.time()) or "",
        ]

    async def admit(self, rid: str, user: str, number: str) -> Admission:
        """Decide, atomically, whether a call to ``user`` at ``number`` may be placed now."""
        keys, args = self.admission(rid, user, number)
        reply: Any = await self._admit(keys=keys, args=args)
        return admission_of(reply)

    async def block(self, user: str, duration_s: float, *, actor: str, reason: str,
                    replace: bool = False, **facts: str) -> bool:
        """Block ``user`` for ``duration_s``; audited and published.

        A block that ends later stands (False, nothing audited) unless ``replace``.
        """
        until = time.time() + duration_s
        if replace:
            facts = {**facts, "replace": "yes"}
        return await self.record("blocked", user, value=int(until * 1000), actor=actor,
                                 reason=reason, until=iso(until) or "", **facts)

    async def blocked_until(self, user: str) -> float | None:
        """When ``user``'s block ends (epoch seconds), or None."""
        score = await self.redis.zscore(BLOCKED, user)
        return score / 1000 if score is not None and score > time.time() * 1000 else None

    async def unblock(self, user: str, *, actor: str, reason: str = "") -> bool:
        """Lift a block; False if ``user`` was not blocked (nothing is audited then)."""
        await self._prune()
        return await self.record("unblocked", user, actor=actor, reason=reason)

    async def grant_bypass(self, user: str, duration_s: int, *, actor: str,
                           reason: str = "") -> None:
        """The next request for ``user`` within ``duration_s`` ends ``bypassed``, uncalled."""
        await self.record("bypass_granted", user, value=duration_s, actor=actor, reason=reason,
                          until=iso(time.time() + duration_s) or "")

    async def blocked(self) -> list[BlockedUser]:
        """Users blocked now, soonest release first."""
        await self._prune()
        entries: Any = await self.redis.zrange(BLOCKED, 0, -1, withscores=True)
        return [BlockedUser(u.decode(), score / 1000) for u, score in entries]

    async def is_blocked(self, user: str) -> bool:
        """Whether ``user`` is blocked now."""
        score = await self.redis.zscore(BLOCKED, user)
        return score is not None and score > time.time() * 1000

    async def audit(self, count: int = 100) -> list[dict[str, str]]:
        """The latest audit entries, newest first."""
        entries: Any = await self.redis.xrevrange(AUDIT, count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    async def _prune(self) -> None:
        await self.redis.zremrangebyscore(BLOCKED, "-inf", time.time() * 1000)

    async def record(self, event: str, user: str, *, value: int = 0, **facts: str) -> bool:
        """Apply ``blocked`` (until ``value`` ms), ``unblocked`` or ``bypass_granted``
        (``value`` seconds), or only audit any other ``event``; audited and published at once.

        False when nothing changed (unblocking a user who was not blocked).
        """
        return await self.apply(*audit_script_args(event, user, value, facts))

    async def apply(self, keys: list[str], args: list[str | int]) -> bool:
        """Run the audit script with prepared arguments (see ``ivr.storage.keys``)."""
        return bool(await self._record(keys=keys, args=args))
