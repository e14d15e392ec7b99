"""Numbers that are not what +1 promises are never dialled (issue 12, item 5).

Under the default policy (+1, US and CA), the Jamaican 658 overlay (valid, missing from the
deny-list) and +1 011... (no NANP number at all) end rejected / number_not_allowed with
their reason, audited, counted and logged, and Asterisk never places the call.
"""

from __future__ import annotations

import json
import uuid

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.storage.store import EVENTS, call_key, result_key

from ..conftest import Sandbox, wait_until
from .conftest import AsteriskLog, PhoneFactory, audit_of
from .test_operations import run_cli, scrape


@pytest.mark.parametrize(("number", "reason", "region"), [
    ("+16585551234", "region_not_allowed", "JM"),
    ("+1011882123456", "invalid_number", ""),
])
async def test_bad_number_is_rejected_with_its_reason_and_never_dialled(
    sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory, number: str,
    reason: str, region: str,
) -> None:
    """rejected / number_not_allowed with the reason in the outcome; no Originate, no
    INVITE; the refusal is in callmfa:audit, in the refusals metric and in the log."""
    metric = f"callmfa_numbers_refused_total{{reason={reason}}}"
    before = scrape().get(metric, 0)
    asterisk = AsteriskLog(sandbox)
    p = phone(keys="#")
    user = f"bad-number-{uuid.uuid4().hex[:8]}"

    record = await client.verify(user=user, phone=number, timeout_s=30)

    assert record is not None
    assert (record.outcome, record.detail, record.reason) == (
        Outcome.REJECTED, "number_not_allowed", reason)
    redis = Redis.from_url(sandbox.redis_url)
    try:
        stored = json.loads(await redis.get(result_key(record.id)))
        assert not await redis.exists(call_key(record.id))
        events = [f[b"event"] for _, f in await redis.xrange(EVENTS)
                  if f[b"id"].decode() == record.id]
    finally:
        await redis.aclose()
    assert (stored["detail"], stored["reason"]) == ("number_not_allowed", reason)
    assert b"dialing" not in events
    [entry] = await audit_of(sandbox, record.id)
    assert (entry["event"], entry["user"], entry["number"], entry["reason"],
            entry["region"], entry["actor"]) == (
        "number_not_allowed", user, number, reason, region, "originator")
    wait_until(lambda: scrape().get(metric, 0) == before + 1, 5, "the refusal counted")
    logged = [json.loads(line) for line in
              (sandbox.directory / "logs" / "callmfa.log").read_text().splitlines()
              if '"number_refused"' in line and record.id in line]
    assert [(e["number"], e["reason"]) for e in logged] == [(number, reason)]
    assert p.received("INVITE") == 0
    assert not [line for line in asterisk.lines() if number in line]


def test_verify_prints_the_reason(sandbox: Sandbox) -> None:
    """`callmfa verify` says why: rejected (number_not_allowed: region_not_allowed), exit 1."""
    out = run_cli(sandbox, "verify", "--user", f"cli-{uuid.uuid4().hex[:8]}", "--phone",
                  "+16585551234", "--timeout", "20")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "outcome: rejected (number_not_allowed: region_not_allowed)" in out.stdout
