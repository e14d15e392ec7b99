"""`callmfa check`'s Redis checks against a real redis-server with ACL users."""

from __future__ import annotations

import shlex

from redis.asyncio import Redis

from ivr.doctor import Status, check_redis
from ivr.settings import Settings

from ..conftest import REPO, RedisServer


def documented_acl() -> list[str]:
    """The ACL rules docs/operations.md tells operators to give callmfa."""
    for line in (REPO / "docs" / "operations.md").read_text().splitlines():
        if line.startswith("ACL SETUSER callmfa "):
            return shlex.split(line)[3:]
    raise AssertionError("docs/operations.md has no ACL SETUSER callmfa line")


async def _check(server: RedisServer, user: str) -> list[tuple[str, Status, str]]:
    settings = Settings(redis_url=f"redis://{user}:pw@127.0.0.1:{server.port}/0",
                        connect_timeout_s=2)
    return [(r.name, r.status, r.message) async for r in check_redis(settings)]


class TestRedisAcl:
    async def test_the_documented_acl_passes(self, redis: Redis, redis_server: RedisServer
                                             ) -> None:
        """A user with exactly the documented rules passes every Redis check."""
        rules = [r for r in documented_acl() if not r.startswith(">")]
        await redis.execute_command("ACL", "SETUSER", "cm-doc", "reset", ">pw", *rules)
        results = await _check(redis_server, "cm-doc")
        assert results[0][:2] == ("redis", Status.OK), results
        assert results[1][:2] == ("queue", Status.WARN)  # no consumer group: serve not started

    async def test_a_missing_command_is_named(self, redis: Redis, redis_server: RedisServer
                                              ) -> None:
        """Without XADD and SUBSCRIBE, the check fails and names them."""
        rules = [r for r in documented_acl() if not r.startswith(">")]
        await redis.execute_command("ACL", "SETUSER", "cm-less", "reset", ">pw", *rules,
                                    "-xadd", "-subscribe")
        results = await _check(redis_server, "cm-less")
        name, status, message = results[0]
        assert (name, status) == ("redis-acl", Status.FAIL)
        assert "XADD" in message
        assert "SUBSCRIBE callmfa:results" in message

    async def test_unreachable_redis_fails_with_a_fix(self) -> None:
        """Nothing listening: one FAIL with the fix, and nothing else is tried."""
        settings = Settings(redis_url="redis://127.0.0.1:1/0", connect_timeout_s=1)
        results = [r async for r in check_redis(settings)]
        assert [(r.name, r.status) for r in results] == [("redis", Status.FAIL)]
        assert "CALLMFA_REDIS_URL" in (results[0].fix or "")
