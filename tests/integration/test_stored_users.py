"""Blocks and PINs kept under a user name from before normalisation are moved (issue 12)."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis
from structlog.testing import capture_logs

from ivr.domain.outcome import Outcome
from ivr.domain.request import parse_request
from ivr.security import Security
from ivr.settings import Settings
from ivr.storage.keys import BLOCKED
from ivr.storage.pins import pin_key
from ivr.storage.users import normalise_stored_users

RID = "0b6d1e2a-1234-4abc-8def-0123456789ab"


async def _members(redis: Redis) -> dict[str, float]:
    entries: Any = await redis.zrange(BLOCKED, 0, -1, withscores=True)
    return {m.decode(): score for m, score in entries}


async def test_an_old_block_on_alice_still_blocks_after_the_upgrade(redis: Redis) -> None:
    """A block written as `Alice` before normalisation blocks `alice` (and `ALICE`) after
    start-up's move; the later of two releases wins; nothing else is touched."""
    soon, later = (time.time() + 600) * 1000, (time.time() + 7200) * 1000
    await redis.zadd(BLOCKED, {"Alice": later, "alice": soon, "bob": soon,
                               "bad\u2028name": soon})
    assert await normalise_stored_users(redis) == 1
    members = await _members(redis)
    assert members == {"alice": later, "bob": soon, "bad\u2028name": soon}
    security = Security.for_redis(Settings(allowed_prefixes="+"), redis)
    raw = json.dumps({"id": RID, "user": "ALICE", "phone": "+12015550100"})
    req = parse_request(raw, requested_at=time.time(), default_ttl_s=60)
    refusal = await security.screen(req)
    assert refusal is not None
    assert refusal.outcome is Outcome.BLOCKED
    assert await normalise_stored_users(redis) == 0  # idempotent


async def test_pins_move_unless_the_normalised_user_has_one(redis: Redis) -> None:
    """`callmfa:pin:Bob` becomes `callmfa:pin:bob`; `Carol`'s stays where it is when `carol`
    already has a PIN (never overwritten)."""
    await redis.hset(pin_key("Bob"), mapping={"hash": "old-bob", "denials": 1})
    await redis.hset(pin_key("Carol"), mapping={"hash": "old-carol"})
    await redis.hset(pin_key("carol"), mapping={"hash": "new-carol"})
    assert await normalise_stored_users(redis) == 1
    assert not await redis.exists(pin_key("Bob"))
    assert await redis.hget(pin_key("bob"), "hash") == b"old-bob"
    assert await redis.hget(pin_key("carol"), "hash") == b"new-carol"
    assert await redis.exists(pin_key("Carol"))


async def test_refused_by_an_old_acl_serve_still_starts(redis: Redis) -> None:
    """An ACL without SCAN (written before this step): the move is skipped with an error
    that names the fix, and start-up goes on (fail-open, logged)."""
    await redis.execute_command("ACL", "SETUSER", "old-service", "on", ">pw", "~callmfa:*",
                                "+@all", "-scan")
    kwargs = redis.connection_pool.connection_kwargs
    old = Redis(host=kwargs["host"], port=kwargs["port"], username="old-service",
                password="pw")
    try:
        await redis.hset(pin_key("Dave"), mapping={"hash": "x"})
        with capture_logs() as logs:
            assert await normalise_stored_users(old) == 0
        [error] = [e for e in logs if e["event"] == "user_keys_not_normalised"]
        assert "callmfa.acl" in error["fix"]
    finally:
        await old.aclose()
        await redis.execute_command("ACL", "DELUSER", "old-service")
