"""``callmfa report`` against a real Redis: what the guard and the IVR really write."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.ops.report import collect, render_csv, render_text
from ivr.security import Security, limits
from ivr.settings import Settings
from ivr.storage.guard import Guard
from ivr.storage.store import Store

NUMBER = "+12015550100"


class TestAudit:
    async def test_blocks_bypasses_and_fraud_reports_are_in_the_report(
        self, redis: Redis
    ) -> None:
        """The entries really written to callmfa:audit appear; the report read only
        callmfa:events before, and showed none of them."""
        settings = Settings(fraud_block_s=7200)
        security = Security.for_redis(settings, redis)
        guard = Guard(redis, limits(settings))
        rid = str(uuid.uuid4())
        await security.report_fraud(rid=rid, user="mallory", number=NUMBER, context="{}")
        await Store(redis, result_ttl_s=60, events_maxlen=1000).store_outcome(OutcomeRecord(
            id=rid, user="mallory", outcome=Outcome.FRAUD_REPORTED, finished_at=time.time()))
        await guard.block("eve", 3600, actor="cli:ops@host", reason="offboarded")
        await guard.grant_bypass("bob", 600, actor="cli:ops@host", reason="lost phone")
        assert (await guard.admit(str(uuid.uuid4()), "bob", NUMBER)).verdict.value == \
            "bypassed"

        report = await collect(redis)

        assert [(a.event, a.user) for a in report.audit] == [
            ("blocked", "mallory"), ("blocked", "eve"), ("bypass_granted", "bob"),
            ("bypass_used", "bob")]
        assert report.audit[0].reason == "fraud_reported"
        assert report.audit[0].id == rid
        text = render_text(report)
        assert "security audit, callmfa:audit (2 blocked, 1 bypass_granted, 1 bypass_used)" \
            in text
        assert "offboarded" in text
        assert "fraud reports (1)" in text
        csv = render_csv(report).splitlines()
        assert any(row.endswith(",eve,audit:blocked,1") for row in csv)

    async def test_the_bounds_apply_to_the_audit(self, redis: Redis) -> None:
        guard = Guard(redis, limits(Settings()))
        await guard.block("eve", 3600, actor="test", reason="manual")
        future = int((time.time() + 3600) * 1000)
        assert (await collect(redis, since_ms=future)).audit == []
        assert len((await collect(redis, until_ms=future)).audit) == 1
