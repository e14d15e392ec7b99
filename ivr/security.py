"""The security policy a request meets before its call is placed (docs/security.md).

Number policy first (pure, no Redis), then admission in Redis (blocks, bypasses,
throttles). Every refusal is an outcome with a reason, never a silent drop. The IVR
reports a ``0#`` here, which blocks the user before the outcome is published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.asyncio import Redis

from .domain.numbers import DialPolicy
from .domain.outcome import Outcome
from .domain.policy import NumberPolicy, parse_prefixes, shipped_denied_prefixes
from .domain.request import VerificationRequest
from .exceptions import SettingsError
from .settings import Settings
from .storage.guard import Admission, Guard, Limits, Verdict
from .storage.keys import fraud_report_args

log = structlog.get_logger("ivr.security")

LOCK_MARGIN_S = 60
_REFUSED = {Verdict.BLOCKED: Outcome.BLOCKED, Verdict.BYPASSED: Outcome.BYPASSED,
            Verdict.THROTTLED: Outcome.THROTTLED}


@dataclass(frozen=True)
class Refusal:
    """A request that gets an outcome without a call."""

    outcome: Outcome
    detail: str | None = None
    retry_after: int | None = None
    reason: str | None = None  # why a number is not allowed (invalid_number, ...)


class SecurityObserver(Protocol):
    """Told of the refusals (the metrics)."""

    def number_refused(self, reason: str) -> None:
        """A request's number was not dialled, for ``reason``."""


def number_policy(settings: Settings) -> DialPolicy:
    """The number's structure (regions, types), the allow-list from the settings, and the
    shipped deny-list plus the settings' own; SettingsError when they contradict."""
    prefixes = NumberPolicy(
        allowed=parse_prefixes(settings.allowed_prefixes),
        denied=shipped_denied_prefixes() + parse_prefixes(settings.denied_prefixes),
    )
    try:
        return DialPolicy(prefixes, allowed_regions=settings.allowed_regions,
                          denied_types=settings.denied_number_types)
    except ValueError as e:
        raise SettingsError(f"CALLMFA_ALLOWED_REGIONS: {e}") from None


def limits(settings: Settings) -> Limits:
    """Throttling limits from the settings."""
    return Limits(
        user_cooldown_s=settings.throttle_user_cooldown_s,
        number_cooldown_s=settings.throttle_number_cooldown_s,
        user_per_hour=settings.throttle_user_per_hour,
        number_per_hour=settings.throttle_number_per_hour,
        global_per_hour=settings.throttle_global_per_hour,
        lock_ttl_s=int(settings.ring_timeout_s + settings.max_call_s + settings.outcome_grace_s)
        + LOCK_MARGIN_S,
    )


class Security:
    """Screens requests before a call; turns a fraud report into a block."""

    def __init__(self, settings: Settings, guard: Guard,
                 observer: SecurityObserver | None = None) -> None:
        self._settings = settings
        self._policy = number_policy(settings)
        self._observer = observer
        self.guard = guard

    @classmethod
    def for_redis(cls, settings: Settings, redis: Redis,
                  observer: SecurityObserver | None = None) -> Security:
        """The policy of ``settings`` over the guard in ``redis``."""
        return cls(settings, Guard(redis, limits(settings)), observer)

    async def screen(self, req: VerificationRequest) -> Refusal | None:
        """None if the call may be placed (or is a duplicate delivery), else the refusal."""
        refusal = await self.check_number(req)
        if refusal is not None:
            return refusal
        return self.refusal(await self.guard.admit(req.id, req.user, req.number))

    async def check_number(self, req: VerificationRequest) -> Refusal | None:
        """The number policy alone (no Redis unless refused): None if it may be dialled."""
        verdict = self._policy.assess(req.number)
        if verdict.reason is not None:
            await self._refuse_number(req, verdict.reason, verdict.facts.region,
                                      verdict.facts.kind)
            return Refusal(Outcome.REJECTED, "number_not_allowed", reason=verdict.reason)
        return None

    def refusal(self, admission: Admission) -> Refusal | None:
        """What admission's verdict means for the request (logged when refused)."""
        outcome = _REFUSED.get(admission.verdict)
        if outcome is None:
            return None
        log.warning("request_refused", outcome=outcome.value, detail=admission.detail,
                    retry_after=admission.retry_after)
        return Refusal(outcome, admission.detail, admission.retry_after)

    async def _refuse_number(self, req: VerificationRequest, reason: str, region: str | None,
                             kind: str) -> None:
        """Log, count and audit (``callmfa:audit``, published) a number that is not dialled."""
        log.warning("number_refused", number=req.number, reason=reason, region=region,
                    number_type=kind)
        if self._observer is not None:
            self._observer.number_refused(reason)
        await self.guard.record("number_not_allowed", req.user, actor="originator", id=req.id,
                                number=req.number, reason=reason, region=region or "",
                                number_type=kind, context=json.dumps(req.context))

    async def report_fraud(self, *, rid: str, user: str, number: str, context: str) -> None:
        """The user pressed 0#: block them (unless blocking is off), audit, notify."""
        block_s = self._settings.fraud_block_s
        if not await self.guard.apply(*fraud_report_args(
                rid=rid, user=user, number=number, context=context, block_s=block_s)):
            # A longer block stands: the report itself is still audited.
            await self.guard.apply(*fraud_report_args(
                rid=rid, user=user, number=number, context=context, block_s=0))
        log.warning("fraud_reported", user=user, blocked_for_s=block_s)
