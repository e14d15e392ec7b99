"""`callmfa check`'s Redis checks against a real redis-server with ACL users."""

from __future__ import annotations

import asyncio
import json
import shlex
import time

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.ops.doctor import OUTCOME_FIXES, Status, check_call, check_redis
from ivr.settings import Settings
from ivr.storage.store import REQUESTS, Store

from ..conftest import REPO, RedisServer
from .conftest import eventually


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
        """Without XADD and SUBSCRIBE, the check fails and names them (ACL DRYRUN)."""
        rules = [r for r in documented_acl() if not r.startswith(">")]
        await redis.execute_command("ACL", "SETUSER", "cm-less", "reset", ">pw", *rules,
                                    "-xadd", "-subscribe")
        results = await _check(redis_server, "cm-less")
        name, status, message = results[0]
        assert (name, status) == ("redis-acl", Status.FAIL)
        assert message == "the Redis ACL refuses: SUBSCRIBE, XADD"

    @pytest.mark.parametrize("missing", ["xpending", "xclaim", "del", "getdel", "time",
                                         "zadd", "hincrby", "eval", "xgroup|create"])
    async def test_each_command_is_asked_for(self, redis: Redis, redis_server: RedisServer,
                                             missing: str) -> None:
        """The old check tried a subset and said "the ACL allows every command" without
        XPENDING, XCLAIM, DEL or what the Lua scripts call; ACL DRYRUN asks for each."""
        rules = [r for r in documented_acl() if not r.startswith(">")]
        await redis.execute_command("ACL", "SETUSER", "cm-one", "reset", ">pw", *rules,
                                    f"-{missing}")
        results = await _check(redis_server, "cm-one")
        assert results[0][:2] == ("redis-acl", Status.FAIL), results
        assert results[0][2] == "the Redis ACL refuses: " + missing.replace("|", " ").upper()

    async def test_a_key_outside_the_pattern_is_refused(self, redis: Redis,
                                                        redis_server: RedisServer) -> None:
        """DRYRUN checks the keys and channels too, not only the command names."""
        rules = [r for r in documented_acl()
                 if not r.startswith(">") and r not in ("~callmfa:*", "&callmfa:*")]
        await redis.execute_command("ACL", "SETUSER", "cm-keys", "reset", ">pw", *rules,
                                    "~callmfa:result:*", "&callmfa:*")
        results = await _check(redis_server, "cm-keys")
        assert results[0][:2] == ("redis-acl", Status.FAIL), results
        refused = results[0][2].split(": ", 1)[1].split(", ")
        assert "XADD" in refused
        assert "GET" not in refused  # its sample key, callmfa:result:x, is allowed

    async def test_without_dryrun_it_warns_and_tries_a_subset(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        rules = [r for r in documented_acl() if not r.startswith(">")]
        await redis.execute_command("ACL", "SETUSER", "cm-nodry", "reset", ">pw", *rules,
                                    "-acl|dryrun")
        results = await _check(redis_server, "cm-nodry")
        assert results[0][:2] == ("redis-acl", Status.WARN), results
        assert results[1][:2] == ("redis", Status.OK), results

    async def test_unreachable_redis_fails_with_a_fix(self) -> None:
        """Nothing listening: one FAIL with the fix, and nothing else is tried."""
        settings = Settings(redis_url="redis://127.0.0.1:1/0", connect_timeout_s=1)
        results = [r async for r in check_redis(settings)]
        assert [(r.name, r.status) for r in results] == [("redis", Status.FAIL)]
        assert "CALLMFA_REDIS_URL" in (results[0].fix or "")


async def _answer_next_request(redis: Redis, outcome: Outcome, *, key: bytes = b"",
                               **fields: object) -> dict[str, object]:
    """Play `callmfa serve`: take the next request and store ``outcome`` for it."""
    async def queued() -> bool:
        return bool(await redis.xlen(REQUESTS))

    await eventually(queued, what="a request from check --call")
    [(entry_id, raw)] = await redis.xrange(REQUESTS, count=1)
    await redis.xdel(REQUESTS, entry_id)
    request = json.loads(raw[b"request"])
    record = OutcomeRecord(id=request["id"], user=request["user"], outcome=outcome,
                           requested_at=time.time(), finished_at=time.time(),
                           **fields)  # type: ignore[arg-type]
    store = Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=key)
    await store.store_outcome(record)
    return dict(request)


class TestCheckCall:
    @pytest.mark.parametrize("outcome", list(Outcome))
    async def test_every_outcome_has_a_fix(self, redis: Redis, redis_server: RedisServer,
                                           outcome: Outcome) -> None:
        """check --call raised KeyError on throttled, blocked, bypassed, machine_answered,
        denied and locked_out: every outcome now gives a result with a fix."""
        settings = Settings(redis_url=redis_server.url, insecure_unsigned=1)
        task = asyncio.create_task(check_call(settings, "+12015550100", 10))
        await _answer_next_request(redis, outcome)
        result = await task
        assert result.status is (Status.OK if outcome is Outcome.APPROVED else Status.FAIL)
        assert result.fix == (None if outcome is Outcome.APPROVED else OUTCOME_FIXES[outcome])

    async def test_a_user_per_run_so_a_second_check_is_not_under_the_cooldown(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        settings = Settings(redis_url=redis_server.url, insecure_unsigned=1)
        users = []
        for _ in range(2):
            task = asyncio.create_task(check_call(settings, "+12015550100", 10))
            users.append((await _answer_next_request(redis, Outcome.APPROVED))["user"])
            await task
        assert users[0] != users[1]
        assert all(str(u).startswith("callmfa-check-") for u in users)

    async def test_throttled_says_when_to_retry(self, redis: Redis, redis_server: RedisServer
                                                ) -> None:
        settings = Settings(redis_url=redis_server.url, insecure_unsigned=1)
        task = asyncio.create_task(check_call(settings, "+12015550100", 10))
        await _answer_next_request(redis, Outcome.THROTTLED, detail="number_cooldown",
                                   retry_after=42)
        result = await task
        assert "throttled (number_cooldown), retry after 42s" in result.message

    async def test_with_a_signing_key_a_forged_outcome_fails(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """The check used to ignore the signing key: an unsigned or wrongly signed
        'approved' passed."""
        settings = Settings(redis_url=redis_server.url, signing_key="the-real-key")
        for key in (b"", b"another-key"):
            # The client ignores the forged publication and finds the forged stored outcome
            # when its wait ends.
            task = asyncio.create_task(check_call(settings, "+12015550100", 1))
            await _answer_next_request(redis, Outcome.APPROVED, key=key)
            result = await task
            assert result.status is Status.FAIL, result
            assert "signature" in result.message
        task = asyncio.create_task(check_call(settings, "+12015550100", 10))
        await _answer_next_request(redis, Outcome.APPROVED, key=b"the-real-key")
        result = await task
        assert result.status is Status.OK
        assert "signature verified" in result.message

    async def test_without_a_signing_key_nothing_is_placed(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """With no CALLMFA_SIGNING_KEY and no CALLMFA_INSECURE_UNSIGNED=1 the check's
        client would believe any outcome: it fails at once, with the fix, and queues
        nothing."""
        result = await check_call(Settings(redis_url=redis_server.url), "+12015550100", 1)
        assert result.status is Status.FAIL
        assert "CALLMFA_SIGNING_KEY" in (result.fix or "")
        assert await redis.xlen(REQUESTS) == 0
