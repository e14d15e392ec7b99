"""Admission, blocks, bypasses and the audit stream against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.domain.request import VerificationRequest
from ivr.security import Security, limits
from ivr.settings import Settings
from ivr.storage.guard import Guard, Limits, Verdict
from ivr.storage.keys import AUDIT, SECURITY_CHANNEL
from ivr.storage.store import Store
from ivr.storage.sync import SyncStore

from ..conftest import RedisServer
from .conftest import Alerts

NUMBER = "+12015550100"


def _limits(**overrides: int) -> Limits:
    base = {"user_cooldown_s": 0, "number_cooldown_s": 0, "user_per_hour": 0,
            "number_per_hour": 0, "global_per_hour": 0, "lock_ttl_s": 300}
    return Limits(**{**base, **overrides})


def _rid() -> str:
    return str(uuid.uuid4())


async def _finish(redis: Redis, rid: str, user: str = "alice") -> None:
    store = Store(redis, result_ttl_s=60, events_maxlen=100)
    await store.store_outcome(OutcomeRecord(id=rid, user=user, outcome=Outcome.BUSY))


class TestInFlight:
    async def test_second_request_while_a_call_is_in_flight_is_throttled(
        self, redis: Redis
    ) -> None:
        """One call in flight per user: a second request gets call_in_progress."""
        guard = Guard(redis, _limits())
        first = await guard.admit(_rid(), "alice", NUMBER)
        second = await guard.admit(_rid(), "alice", "+12015550111")
        assert first.verdict is Verdict.ADMITTED
        assert (second.verdict, second.detail) == (Verdict.THROTTLED, "call_in_progress")
        assert second.retry_after is not None
        assert second.retry_after >= 1

    async def test_lock_is_free_the_moment_the_outcome_is_stored(self, redis: Redis) -> None:
        """The lock names its request: once that request has an outcome, the user is free."""
        guard = Guard(redis, _limits())
        rid = _rid()
        assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.ADMITTED
        await _finish(redis, rid)
        assert (await guard.admit(_rid(), "alice", NUMBER)).verdict is Verdict.ADMITTED

    async def test_same_id_delivered_twice_is_a_duplicate_not_a_throttle(
        self, redis: Redis
    ) -> None:
        """A request delivered twice is deduplicated later, never throttled or counted."""
        guard = Guard(redis, _limits(user_per_hour=1))
        rid = _rid()
        assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.ADMITTED
        assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.DUPLICATE
        await _finish(redis, rid)
        assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.DUPLICATE

    async def test_several_originators_agree(self, redis: Redis) -> None:
        """20 requests for one user through 4 guards at once: exactly one is admitted."""
        guards = [Guard(redis, _limits()) for _ in range(4)]
        results = await asyncio.gather(*(
            guards[i % 4].admit(_rid(), "alice", NUMBER) for i in range(20)))
        verdicts = [r.verdict for r in results]
        assert verdicts.count(Verdict.ADMITTED) == 1
        assert verdicts.count(Verdict.THROTTLED) == 19


class TestCooldownsAndCaps:
    async def test_user_cooldown(self, redis: Redis) -> None:
        """A second call to a user inside the cooldown is throttled, retry_after its rest."""
        guard = Guard(redis, _limits(user_cooldown_s=60))
        rid = _rid()
        await guard.admit(rid, "alice", NUMBER)
        await _finish(redis, rid)
        again = await guard.admit(_rid(), "alice", "+12015550111")
        assert (again.verdict, again.detail) == (Verdict.THROTTLED, "user_cooldown")
        assert again.retry_after is not None
        assert 55 <= again.retry_after <= 60

    async def test_number_cooldown_across_users(self, redis: Redis) -> None:
        """Two users sharing a number are still one number: the number's cooldown holds."""
        guard = Guard(redis, _limits(number_cooldown_s=30))
        await guard.admit(_rid(), "alice", NUMBER)
        again = await guard.admit(_rid(), "bob", NUMBER)
        assert (again.verdict, again.detail) == (Verdict.THROTTLED, "number_cooldown")
        assert again.retry_after is not None
        assert 25 <= again.retry_after <= 30

    @pytest.mark.parametrize(("cap", "detail"), [
        ("user_per_hour", "user_hourly_cap"),
        ("number_per_hour", "number_hourly_cap"),
        ("global_per_hour", "global_hourly_cap"),
    ])
    async def test_sixth_call_in_an_hour_is_throttled(
        self, redis: Redis, cap: str, detail: str
    ) -> None:
        """Five calls pass; the sixth is throttled with retry_after near an hour."""
        guard = Guard(redis, _limits(**{cap: 5}))
        for _ in range(5):
            rid = _rid()
            assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.ADMITTED
            await _finish(redis, rid)
        sixth = await guard.admit(_rid(), "alice", NUMBER)
        assert (sixth.verdict, sixth.detail) == (Verdict.THROTTLED, detail)
        assert sixth.retry_after is not None
        assert 3590 <= sixth.retry_after <= 3600

    async def test_refused_requests_are_not_counted(self, redis: Redis) -> None:
        """Throttled requests do not count toward the caps (a flood cannot extend them)."""
        guard = Guard(redis, _limits(user_per_hour=2))
        rid = _rid()
        await guard.admit(rid, "alice", NUMBER)
        for _ in range(10):
            await guard.admit(_rid(), "alice", NUMBER)  # in progress: throttled
        await _finish(redis, rid)
        assert (await guard.admit(_rid(), "alice", NUMBER)).verdict is Verdict.ADMITTED


class TestBlocks:
    async def test_block_unblock_and_list(self, redis: Redis) -> None:
        """A blocked user is refused; the list shows them; unblocking lets them in again."""
        guard = Guard(redis, _limits())
        await guard.block("mallory", 3600, actor="test", reason="manual")
        assert (await guard.admit(_rid(), "mallory", NUMBER)).verdict is Verdict.BLOCKED
        assert [b.user for b in await guard.blocked()] == ["mallory"]
        assert await guard.unblock("mallory", actor="test")
        assert not await guard.unblock("mallory", actor="test")
        assert await guard.blocked() == []
        assert (await guard.admit(_rid(), "mallory", NUMBER)).verdict is Verdict.ADMITTED
        events = [e["event"] for e in await guard.audit()]
        assert events == ["unblocked", "request_refused", "blocked"]

    async def test_expired_block_is_gone(self, redis: Redis) -> None:
        """A block lasts its duration only."""
        guard = Guard(redis, _limits())
        await guard.block("mallory", 0.05, actor="test", reason="manual")
        await asyncio.sleep(0.1)  # the block's own duration, not a readiness wait
        assert (await guard.admit(_rid(), "mallory", NUMBER)).verdict is Verdict.ADMITTED
        assert await guard.blocked() == []


class TestBypass:
    async def test_bypass_is_used_once_and_audited(self, redis: Redis) -> None:
        """The next request is bypassed, uncalled and uncounted; the one after is a call."""
        guard = Guard(redis, _limits(user_per_hour=1))
        await guard.grant_bypass("alice", 600, actor="cli:ops", reason="lost phone")
        rid = _rid()
        assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.BYPASSED
        assert (await guard.admit(_rid(), "alice", NUMBER)).verdict is Verdict.ADMITTED
        audit = await guard.audit()
        assert [e["event"] for e in audit] == ["bypass_used", "bypass_granted"]
        assert (audit[0]["id"], audit[1]["actor"]) == (rid, "cli:ops")

    async def test_block_wins_over_bypass(self, redis: Redis) -> None:
        """A blocked user stays blocked even with a bypass; the bypass is kept."""
        guard = Guard(redis, _limits())
        await guard.grant_bypass("mallory", 600, actor="test")
        await guard.block("mallory", 3600, actor="test", reason="manual")
        assert (await guard.admit(_rid(), "mallory", NUMBER)).verdict is Verdict.BLOCKED


def _request(user: str, number: str) -> VerificationRequest:
    return VerificationRequest(id=_rid(), user=user, number=number, extension="",
                               mode="standard", lang="en", requested_at=0, expires_at=1e12,
                               context={"ip": "198.51.100.7"})


class Counted:
    """A SecurityObserver that remembers."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def number_refused(self, reason: str) -> None:
        self.reasons.append(reason)


class TestSecurity:
    @pytest.mark.parametrize(("number", "reason"), [
        ("+8816123456", "invalid_number"), ("+88212345678", "invalid_number"),
        ("+8831234567", "invalid_number"), ("+8816123456789", "outside_allowed_prefixes"),
        ("+19005550100", "denied_prefix"), ("+18765550100", "denied_prefix"),
        ("+447011112222", "outside_allowed_prefixes"),
        ("+33123456789", "outside_allowed_prefixes"),
        ("+16585551234", "region_not_allowed"), ("+1011882123456", "invalid_number"),
        ("+112015550100", "not_e164"),
    ])
    async def test_numbers_outside_the_policy_are_rejected_uncounted(
        self, redis: Redis, number: str, reason: str
    ) -> None:
        """Satellite, international-network, premium, foreign and malformed numbers:
        number_not_allowed with the reason; no throttle counted, no lock taken."""
        security = Security.for_redis(Settings(), redis)
        refusal = await security.screen(_request("alice", number))
        assert refusal is not None
        assert (refusal.outcome, refusal.detail) == (Outcome.REJECTED, "number_not_allowed")
        assert refusal.reason == reason
        assert await redis.exists("callmfa:inflight:alice") == 0

    async def test_number_refusal_is_audited_published_and_counted(
        self, redis: Redis
    ) -> None:
        """The refusal goes to callmfa:audit and callmfa:security, with the number, the
        reason and the request's context, and the observer counts it."""
        counted = Counted()
        security = Security.for_redis(Settings(), redis, observer=counted)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(SECURITY_CHANNEL)
        req = _request("mallory", "+16585551234")
        try:
            await security.screen(req)
            message = None
            for _ in range(50):
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    break
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert message is not None
        alert = json.loads(message["data"])
        assert (alert["event"], alert["user"], alert["reason"]) == (
            "number_not_allowed", "mallory", "region_not_allowed")
        [entry] = await security.guard.audit()
        assert entry == {**entry, "event": "number_not_allowed", "user": "mallory",
                         "actor": "originator", "id": req.id, "number": "+16585551234",
                         "reason": "region_not_allowed", "region": "JM",
                         "number_type": "fixed_line"}
        assert json.loads(entry["context"]) == {"ip": "198.51.100.7"}
        assert counted.reasons == ["region_not_allowed"]
        assert await security.guard.blocked() == []

    async def test_allowed_number_passes(self, redis: Redis) -> None:
        """A US number under the default policy may be called."""
        security = Security.for_redis(Settings(), redis)
        assert await security.screen(_request("alice", NUMBER)) is None

    async def test_throttle_refusal_carries_retry_after(self, redis: Redis) -> None:
        """The refusal of a throttled request names the detail and retry_after."""
        security = Security.for_redis(Settings(), redis)
        await security.screen(_request("alice", NUMBER))
        refusal = await security.screen(_request("alice", NUMBER))
        assert refusal is not None
        assert (refusal.outcome, refusal.detail) == (Outcome.THROTTLED, "call_in_progress")
        assert refusal.retry_after == 60

    async def test_fraud_report_blocks_audits_and_publishes(self, redis: Redis) -> None:
        """0#: the user is blocked for fraud_block_s, audited with the call, published."""
        security = Security.for_redis(Settings(fraud_block_s=7200), redis)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(SECURITY_CHANNEL)
        try:
            await security.report_fraud(rid="r1", user="alice", number=NUMBER,
                                        context='{"ip":"198.51.100.7"}')
            message = None
            for _ in range(50):  # the first read returns the subscribe confirmation
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    break
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert message is not None
        alert = json.loads(message["data"])
        assert (alert["event"], alert["user"], alert["number"]) == ("blocked", "alice", NUMBER)
        [entry] = await security.guard.audit()
        assert entry["reason"] == "fraud_reported"
        assert entry["actor"] == "ivr"
        assert json.loads(entry["context"]) == {"ip": "198.51.100.7"}
        [blocked] = await security.guard.blocked()
        assert blocked.user == "alice"
        assert await redis.xlen(AUDIT) == 1
        refusal = await security.screen(_request("alice", NUMBER))
        assert refusal is not None
        assert refusal.outcome is Outcome.BLOCKED

    async def test_fraud_report_with_blocking_off_is_only_audited(self, redis: Redis) -> None:
        """fraud_block_s=0: no block, but the report is still in the audit stream."""
        security = Security.for_redis(Settings(fraud_block_s=0), redis)
        await security.report_fraud(rid="r1", user="alice", number=NUMBER, context="{}")
        assert [e["event"] for e in await security.guard.audit()] == ["fraud_reported"]
        assert await security.guard.blocked() == []

    def test_lock_ttl_covers_the_longest_call(self) -> None:
        """The in-flight lock outlives ring time + call time, so it never frees mid-call."""
        s = Settings()
        assert limits(s).lock_ttl_s > s.ring_timeout_s + s.max_call_s


class TestBlockLength:
    async def test_a_shorter_block_does_not_cut_a_longer_one(self, redis: Redis) -> None:
        """ZADD replaced a 90-day fraud block with a 12 h one; now the longer one stands."""
        guard = Guard(redis, _limits())
        assert await guard.block("mallory", 90 * 86400, actor="ivr", reason="fraud_reported")
        assert not await guard.block("mallory", 12 * 3600, actor="cli:ops", reason="manual")
        until = await guard.blocked_until("mallory")
        assert until is not None
        assert until > time.time() + 89 * 86400
        # Nothing changed, so nothing is audited or published.
        assert [e["reason"] for e in await guard.audit()] == ["fraud_reported"]

    async def test_a_longer_block_lengthens(self, redis: Redis) -> None:
        guard = Guard(redis, _limits())
        await guard.block("mallory", 3600, actor="test", reason="manual")
        assert await guard.block("mallory", 7200, actor="test", reason="manual")
        until = await guard.blocked_until("mallory")
        assert until is not None
        assert until > time.time() + 7000
        assert len(await guard.audit()) == 2

    async def test_replace_shortens_and_says_so(self, redis: Redis) -> None:
        guard = Guard(redis, _limits())
        await guard.block("mallory", 90 * 86400, actor="ivr", reason="fraud_reported")
        assert await guard.block("mallory", 3600, actor="cli:ops", reason="cleared",
                                 replace=True)
        until = await guard.blocked_until("mallory")
        assert until is not None
        assert until < time.time() + 3700
        [latest, _] = await guard.audit()
        assert (latest["event"], latest["replace"], latest["reason"]) == (
            "blocked", "yes", "cleared")

    async def test_fraud_report_under_a_longer_block_is_still_audited(
        self, redis: Redis
    ) -> None:
        """The longer block stands and the 0# is not lost from the audit stream."""
        security = Security.for_redis(Settings(fraud_block_s=3600), redis)
        await security.guard.block("mallory", 365 * 86400, actor="cli:ops", reason="manual")
        await security.report_fraud(rid="r1", user="mallory", number=NUMBER, context="{}")
        until = await security.guard.blocked_until("mallory")
        assert until is not None
        assert until > time.time() + 364 * 86400
        assert [e["event"] for e in await security.guard.audit()] == [
            "fraud_reported", "blocked"]


class TestFraudReportOnce:
    """A 0# report run again (its reply lost with the connection, and retried) is done
    already: one audit entry, so one security webhook and one alert e-mail."""

    @pytest.mark.parametrize("block_s", [3600, 0])
    async def test_a_retried_report_is_audited_once(self, redis: Redis, block_s: int) -> None:
        security = Security.for_redis(Settings(fraud_block_s=block_s), redis)
        for _ in range(2):
            await security.report_fraud(rid="r1", user="alice", number=NUMBER, context="{}")
        assert await redis.xlen(AUDIT) == 1

    async def test_a_retried_report_under_a_longer_block_is_audited_once(
        self, redis: Redis
    ) -> None:
        security = Security.for_redis(Settings(fraud_block_s=3600), redis)
        await security.guard.block("mallory", 365 * 86400, actor="cli:ops", reason="manual")
        for _ in range(2):
            await security.report_fraud(rid="r1", user="mallory", number=NUMBER, context="{}")
        assert [e["event"] for e in await security.guard.audit()] == [
            "fraud_reported", "blocked"]

    async def test_the_classic_driver_s_retried_report_is_audited_once(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        sync = SyncStore.connect(Settings(redis_url=redis_server.url, fraud_block_s=60))
        try:
            for _ in range(2):
                sync.report_fraud(rid="r2", user="bob", number=NUMBER, context="{}")
        finally:
            sync.close()
        assert await redis.xlen(AUDIT) == 1

    async def test_another_call_s_report_is_audited(self, redis: Redis) -> None:
        security = Security.for_redis(Settings(fraud_block_s=3600), redis)
        await security.report_fraud(rid="r1", user="alice", number=NUMBER, context="{}")
        await security.report_fraud(rid="r2", user="alice", number=NUMBER, context="{}")
        assert await redis.xlen(AUDIT) == 2


class TestEveryAuditEntryPublished:
    """Each admission verdict that is audited is also published, as the same entry."""

    async def test_bypass_used_is_published(self, redis: Redis) -> None:
        """The bypass used: in callmfa:audit and on callmfa:security, with actor, user, at."""
        guard = Guard(redis, _limits())
        async with Alerts(redis) as alerts:
            await guard.grant_bypass("alice", 600, actor="cli:ops")
            rid = _rid()
            assert (await guard.admit(rid, "alice", NUMBER)).verdict is Verdict.BYPASSED
            granted, used = await alerts.take(2)
        assert granted["event"] == "bypass_granted"
        assert used == (await guard.audit())[0]
        assert (used["event"], used["user"], used["id"], used["number"], used["actor"]) == (
            "bypass_used", "alice", rid, NUMBER, "originator")
        assert used["at"].endswith("Z")

    async def test_blocked_and_throttled_refusals_are_audited_and_published(
        self, redis: Redis
    ) -> None:
        """A request of a blocked user and a throttled one: request_refused with the
        outcome, the reason and retry_after; an admitted request audits nothing."""
        guard = Guard(redis, _limits(user_cooldown_s=60))
        await guard.block("mallory", 3600, actor="test", reason="manual")
        async with Alerts(redis) as alerts:
            blocked, first, second = _rid(), _rid(), _rid()
            assert (await guard.admit(blocked, "mallory", NUMBER)).verdict is Verdict.BLOCKED
            assert (await guard.admit(first, "alice", NUMBER)).verdict is Verdict.ADMITTED
            await _finish(redis, first)
            throttled = await guard.admit(second, "alice", NUMBER)
            published = await alerts.take(2)
        assert (throttled.verdict, throttled.detail) == (Verdict.THROTTLED, "user_cooldown")
        audit = (await guard.audit())[:2]
        assert published == audit[::-1]
        refused_blocked, refused_throttled = published
        assert {k: refused_blocked[k] for k in ("event", "outcome", "user", "id", "actor")} == {
            "event": "request_refused", "outcome": "blocked", "user": "mallory", "id": blocked,
            "actor": "originator"}
        assert {k: refused_throttled[k] for k in ("outcome", "reason", "retry_after", "id")} == {
            "outcome": "throttled", "reason": "user_cooldown",
            "retry_after": str(throttled.retry_after), "id": second}
        assert await redis.xlen(AUDIT) == 3  # the block, two refusals; not the admission
