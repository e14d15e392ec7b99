"""Users' PINs in Redis: ``callmfa:pin:<user>``, a hash of salted-hash, denials, lock time.

Fields: ``hash`` (see :mod:`ivr.domain.codes`; the PIN itself is never stored),
``denials`` (calls denied since the last success or unlock) and ``locked_until`` (epoch
seconds, ``forever`` until an admin unlocks, ``0`` when not locked). Denials are counted by
a Lua script so that two calls that end at once both count.

Every PIN change is audited in the same script: ``pin_set`` and ``pin_unlocked`` (an admin,
``callmfa pin``) and ``pin_locked_out`` (either IVR driver), in ``callmfa:audit`` and on
``callmfa:security``. No audit entry holds the PIN, its hash or its length.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..domain.outcome import iso
from .keys import AUDIT, AUDIT_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..settings import Settings

FOREVER = "forever"

# KEYS: the PIN key, the audit stream. ARGV: lockout after, locked_until, then the
# lockout's audit fields (see denial_script_args): audited and published when it locks.
RECORD_DENIAL = AUDIT_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'denials', 1)
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'locked_until', ARGV[2], 'denials', 0)
  audit(KEYS[2], {unpack(ARGV, 3)})
  return 1
end
return 0
"""

# A success: no denials, no lock (only for a user with a PIN). It may also upgrade the
# hash (ARGV: the hash checked, its peppered form), unless an admin set another PIN
# meanwhile. Not audited.
RESET_PIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'denials', 0, 'locked_until', 0)
if ARGV[2] and ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'hash') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'hash', ARGV[2])
  return 2
end
return 1
"""

# An admin's unlock (KEYS: the PIN key, the audit stream; ARGV: audit fields), audited with
# what it undid: the lock (``locked_until`` as it was) and the count of denials.
UNLOCK_PIN = AUDIT_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local was = redis.call('HMGET', KEYS[1], 'locked_until', 'denials')
redis.call('HSET', KEYS[1], 'denials', 0, 'locked_until', 0)
local fields = {unpack(ARGV)}
for _, v in ipairs({'was_locked_until', was[1] or '0', 'denials', was[2] or '0'}) do
  table.insert(fields, v)
end
audit(KEYS[2], fields)
return 1
"""

# An admin sets or replaces a PIN (KEYS: the PIN key, the audit stream; ARGV: the hash,
# then audit fields); audited with whether a PIN was replaced, never with the PIN or hash.
SET_PIN = AUDIT_LUA + """
local replaced = redis.call('HEXISTS', KEYS[1], 'hash')
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'denials', 0, 'locked_until', 0)
local fields = {unpack(ARGV, 2)}
table.insert(fields, 'replaced')
table.insert(fields, tostring(replaced))
audit(KEYS[2], fields)
return replaced
"""


def _fields(event: str, user: str, actor: str, **facts: str) -> list[str]:
    out = ["event", event, "user", user, "actor", actor, "at", iso(time.time()) or ""]
    for k, v in facts.items():
        out += [k, v]
    return out


def denial_script_args(
    user: str, *, rid: str, lockout_after: int, lockout_s: float
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of RECORD_DENIAL, for both IVR drivers (serve's and the classic one):
    a lockout it causes is audited as ``pin_locked_out`` (actor ``ivr``, the request id,
    until when, after how many denied calls)."""
    now = time.time()
    until = lock_value(now, lockout_s)
    facts = {"id": rid, "until": until if until == FOREVER else iso(float(until)) or "",
             "after": str(lockout_after)}
    return [pin_key(user), AUDIT], [lockout_after, until,
                                    *_fields("pin_locked_out", user, "ivr", **facts)]


def reset_args(upgrade: tuple[str, str] | None) -> list[str]:
    """RESET_PIN's ARGV: the (checked, peppered) hashes of an upgrade, or none."""
    return list(upgrade) if upgrade else []


def pin_key(user: str) -> str:
    """Where ``user``'s PIN hash and lockout state live."""
    return f"callmfa:pin:{user}"


@dataclass(frozen=True)
class PinState:
    """What the IVR needs to know about a user's PIN before the call's prompt."""

    hash: str = field(default="", repr=False)
    locked: bool = False


def parse_pin_state(raw: Mapping[bytes, bytes], now: float) -> PinState:
    """A ``HGETALL`` of :func:`pin_key` as a :class:`PinState` (empty: no PIN set)."""
    until = raw.get(b"locked_until", b"0").decode()
    locked = until == FOREVER or (until.replace(".", "", 1).isdigit() and now < float(until))
    return PinState(hash=raw.get(b"hash", b"").decode(), locked=locked)


def lock_value(now: float, lockout_s: float) -> str:
    """``locked_until`` for a lock that starts now (``lockout_s`` 0: until an admin unlocks)."""
    return FOREVER if lockout_s <= 0 else f"{now + lockout_s:.3f}"


class PinStore:
    """PIN hashes and lockouts, for ``callmfa serve`` and ``callmfa pin``."""

    def __init__(self, redis: Redis, *, lockout_after: int, lockout_s: float) -> None:
        self._redis = redis
        self._lockout_after = lockout_after
        self._lockout_s = lockout_s
        self._record_denial = redis.register_script(RECORD_DENIAL)
        self._reset = redis.register_script(RESET_PIN)
        self._unlock = redis.register_script(UNLOCK_PIN)
        self._set = redis.register_script(SET_PIN)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> PinStore:
        """The PIN store with the configured lockout policy."""
        return cls(redis, lockout_after=settings.pin_lockout_after,
                   lockout_s=settings.pin_lockout_s)

    async def state(self, user: str) -> PinState:
        """The user's PIN hash and whether they are locked out now."""
        raw: Any = await self._redis.hgetall(pin_key(user))
        return parse_pin_state(raw, time.time())

    async def set_hash(self, user: str, code_hash: str, *, actor: str) -> bool:
        """Set (or replace) the user's PIN hash and clear any lockout; audited
        (``pin_set``) and published. True when it replaced a PIN."""
        return bool(await self._set(keys=[pin_key(user), AUDIT],
                                    args=[code_hash, *_fields("pin_set", user, actor)]))

    async def record_denial(self, user: str, *, rid: str = "") -> bool:
        """Count a denied call; True when this denial locked the user out (audited)."""
        keys, args = denial_script_args(user, rid=rid, lockout_after=self._lockout_after,
                                        lockout_s=self._lockout_s)
        return bool(await self._record_denial(keys=keys, args=args))

    async def reset(self, user: str, upgrade: tuple[str, str] | None = None) -> int:
        """Clear the denials and any lockout (a success, or an admin's unlock), and apply a
        hash ``upgrade`` (checked, peppered); 0 when the user has no PIN, 2 when the hash
        was upgraded, else 1."""
        return int(await self._reset(keys=[pin_key(user)], args=reset_args(upgrade)))

    async def unlock(self, user: str, *, actor: str) -> bool:
        """An admin clears the denials and any lockout; audited (``pin_unlocked``) and
        published. False (nothing audited) when the user has no PIN."""
        return bool(await self._unlock(keys=[pin_key(user), AUDIT],
                                       args=_fields("pin_unlocked", user, actor)))
