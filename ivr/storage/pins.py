"""Users' PINs in Redis: ``callmfa:pin:<user>``, a hash of salted-hash, denials, lock time.

Fields: ``hash`` (see :mod:`ivr.domain.codes`; the PIN itself is never stored),
``denials`` (calls denied since the last success or unlock) and ``locked_until`` (epoch
seconds, ``forever`` until an admin unlocks, ``0`` when not locked). Denials are counted by
a Lua script so that two calls that end at once both count.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..settings import Settings

FOREVER = "forever"

RECORD_DENIAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'denials', 1)
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'locked_until', ARGV[2], 'denials', 0)
  return 1
end
return 0
"""

# A success or an admin's unlock: no denials, no lock (only for a user with a PIN). A
# success may also upgrade the hash (ARGV: the hash checked, its peppered form), unless an
# admin set another PIN meanwhile.
RESET_PIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'denials', 0, 'locked_until', 0)
if ARGV[2] and ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'hash') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'hash', ARGV[2])
  return 2
end
return 1
"""


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

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> PinStore:
        """The PIN store with the configured lockout policy."""
        return cls(redis, lockout_after=settings.pin_lockout_after,
                   lockout_s=settings.pin_lockout_s)

    async def state(self, user: str) -> PinState:
        """The user's PIN hash and whether they are locked out now."""
        raw: Any = await self._redis.hgetall(pin_key(user))
        return parse_pin_state(raw, time.time())

    async def set_hash(self, user: str, code_hash: str) -> None:
        """Set (or replace) the user's PIN hash; clears any lockout."""
        await self._redis.hset(
            pin_key(user), mapping={"hash": code_hash, "denials": 0, "locked_until": 0}
        )

    async def record_denial(self, user: str) -> bool:
        """Count a denied call; True when this denial locked the user out."""
        locked = await self._record_denial(
            keys=[pin_key(user)],
            args=[self._lockout_after, lock_value(time.time(), self._lockout_s)],
        )
        return bool(locked)

    async def reset(self, user: str, upgrade: tuple[str, str] | None = None) -> int:
        """Clear the denials and any lockout (a success, or an admin's unlock), and apply a
        hash ``upgrade`` (checked, peppered); 0 when the user has no PIN, 2 when the hash
        was upgraded, else 1."""
        return int(await self._reset(keys=[pin_key(user)], args=reset_args(upgrade)))
