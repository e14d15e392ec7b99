"""Per-user keys written before user names were normalised, moved to the normalised name.

Before issue 12 a block on ``Alice`` was kept under ``Alice``; requests are now keyed by
``alice``, so such a block would silently stop applying. ``callmfa serve`` runs this once
at start-up (it is idempotent and cheap when there is nothing to move): blocks keep the
later release time, and a PIN moves unless the normalised user already has one. Names that
cannot be normalised (a U+2028 in them) match no request any more and are left as they are.
Throttles, cooldowns, in-flight locks and bypasses expire within hours and are not moved.
"""

from __future__ import annotations

from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..domain.users import UserNameError, normalise_user
from .keys import BLOCKED
from .pins import pin_key

log = structlog.get_logger("ivr.storage.users")

_PIN_PREFIX = pin_key("")

# KEYS: the block set. ARGV: the old name, the normalised one. Keeps the later release.
_MOVE_BLOCK = """
local release = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not release then return 0 end
redis.call('ZADD', KEYS[1], 'GT', release, ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


def _normalised(name: str) -> str | None:
    try:
        normal = normalise_user(name)
    except UserNameError:
        return None
    return normal if normal != name else None


async def normalise_stored_users(redis: Redis) -> int:
    """Move blocks and PINs kept under a non-normalised user name; how many moved.

    Fail-open, logged: when Redis refuses a command (an ACL from before this step, without
    SCAN or RENAMENX), serve still starts, and the error names the fix.
    """
    try:
        return await _move(redis)
    except ResponseError as e:
        log.error("user_keys_not_normalised", error=str(e),
                  fix="give the service's ACL user the commands of docker/redis/callmfa.acl")
        return 0


async def _move(redis: Redis) -> int:
    moved = 0
    members: Any = await redis.zrange(BLOCKED, 0, -1)
    move_block = redis.register_script(_MOVE_BLOCK)
    for raw in members:
        name = raw.decode(errors="replace")
        target = _normalised(name)
        if target is not None:
            moved += int(await move_block(keys=[BLOCKED], args=[name, target]))
    async for raw in redis.scan_iter(match=_PIN_PREFIX + "*", count=1000):
        name = raw.decode(errors="replace").removeprefix(_PIN_PREFIX)
        target = _normalised(name)
        if target is None:
            continue
        if await redis.renamenx(pin_key(name), pin_key(target)):
            moved += 1
        else:
            log.warning("pin_not_moved", reason="the normalised user has a PIN already")
    if moved:
        log.warning("user_keys_normalised", moved=moved)
    return moved
