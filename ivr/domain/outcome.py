"""Outcome values, the outcome record the sign-in service reads, and the AMI mapping."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .users import UserNameError, normalise_user

# requested_at is the request's stream entry time in ms; allow for its rounding.
CLOCK_SLACK_S = 0.001


class Outcome(StrEnum):
    """How a verification ended. Exactly one per request id."""

    APPROVED = "approved"
    DELIVERED = "delivered"  # mode otp: the code was read to the user, twice
    FRAUD_REPORTED = "fraud_reported"
    DENIED = "denied"
    LOCKED_OUT = "locked_out"
    MACHINE_ANSWERED = "machine_answered"
    NO_INPUT = "no_input"
    HUNG_UP = "hung_up"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    EXPIRED = "expired"
    ERROR = "error"
    THROTTLED = "throttled"
    BLOCKED = "blocked"
    BYPASSED = "bypassed"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as UTC ISO 8601 with milliseconds (``2026-11-28T01:05:40.997Z``).

    As ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` writes it
    (microseconds rounded half to even, then cut to milliseconds), a third of its cost:
    a verification writes about a dozen of these, most within the same second.
    """
    if ts is None:
        return None
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    return f"{_second(int(whole))}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=16)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_iso(text: str) -> float:
    """ISO 8601 with an offset (or ``Z``) to epoch seconds; naive times are refused."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


@dataclass(frozen=True, kw_only=True)
class OutcomeRecord:
    """The JSON object stored at ``callmfa:result:<id>`` and published on ``callmfa:results``.

    Times are epoch seconds here and ISO 8601 strings on the wire.
    """

    id: str
    user: str | None
    outcome: Outcome
    detail: str | None = None
    hangup_cause: int | None = None
    requested_at: float | None = None
    call_started_at: float | None = None
    answered_at: float | None = None
    input_at: float | None = None
    finished_at: float | None = None
    retry_after: int | None = None  # seconds; set on ``throttled`` only
    reason: str | None = None  # why, for ``number_not_allowed`` (``invalid_number``, ...)

    _TIMES = ("requested_at", "call_started_at", "answered_at", "input_at", "finished_at")
    _OMITTED_WHEN_NULL = ("reason",)  # added later: outcomes without one stay as they were

    def to_wire(self) -> dict[str, Any]:
        """The wire form as a dict: ISO times, the outcome as its string."""
        data: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        data["outcome"] = self.outcome.value
        for name in self._OMITTED_WHEN_NULL:
            if data[name] is None:
                del data[name]
        for name in self._TIMES:
            data[name] = iso(data[name])
        return data

    def to_json(self) -> str:
        """The wire form (public API, see docs/contract.md)."""
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> OutcomeRecord:
        """Parse the wire form back (what the client does)."""
        return cls.from_wire(json.loads(text))

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> OutcomeRecord:
        """The record from a parsed wire object; fields it does not know (``sig``) are ignored.

        Raise ValueError for anything that is not an outcome object (whatever is wrong).
        """
        try:
            data = dict(data)
            for name in cls._TIMES:
                if data.get(name) is not None:
                    data[name] = parse_iso(data[name])
            data["outcome"] = Outcome(data["outcome"])
            known: dict[str, Any] = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            record = cls(**known)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"not an outcome object: {e!r}") from None
        if not isinstance(record.id, str) or not isinstance(record.user, str | None):
            raise ValueError("not an outcome object: id and user must be strings")
        return record

    def mismatch(
        self, rid: str, *, user: str | None = None, submitted_at: float | None = None
    ) -> str | None:
        """Why this outcome does not answer the request ``rid`` (of ``user``, submitted at
        epoch ``submitted_at``), or None when it does.

        A genuine signed outcome copied from another request, or from an earlier request
        that reused the id, is still not this request's (docs/contract.md, "Checking an
        outcome"). A ``rejected`` outcome may have no user: its request could not be read.
        """
        if self.id.lower() != rid.lower():
            return f"the outcome is for id {self.id!r}"
        if user is not None and not _same_user(self.user, user) and not (
            self.user is None and self.outcome is Outcome.REJECTED
        ):
            return "the outcome is for another user"
        if submitted_at is not None and (
            self.requested_at is None or self.requested_at < submitted_at - CLOCK_SLACK_S
        ):
            return "the outcome is older than the request"
        return None


_FIELDS = tuple(f.name for f in fields(OutcomeRecord))  # to_wire's keys, in order


def _same_user(outcome_user: str | None, asked: str) -> bool:
    """Whether the outcome's user is the one asked about: outcomes carry the normalised
    name, so ``Alice`` asked is ``alice`` answered."""
    if outcome_user is None or outcome_user == asked:
        return outcome_user is not None
    try:
        return normalise_user(asked) == normalise_user(outcome_user)
    except UserNameError:
        return False


# OriginateResponse "Reason" values (Asterisk's AST_CONTROL_* codes).
REASON_HANGUP = 1
REASON_RING_TIMEOUT = 3
REASON_ANSWERED = 4
REASON_BUSY = 5
REASON_CONGESTION = 8

# Q.850 hang-up causes that say "the person did not take the call".
_BUSY_CAUSES = {17: "user_busy", 21: "call_rejected"}
_NO_ANSWER_CAUSES = {18: "no_user_response", 19: "no_answer"}
# The common "cannot reach that phone" causes, by name; others read "cause_<n>".
_UNREACHABLE_CAUSES = {
    1: "unallocated_number", 3: "no_route", 20: "subscriber_absent",
    27: "destination_out_of_order", 28: "invalid_number_format", 34: "congestion",
    38: "network_out_of_order", 41: "temporary_failure", 42: "switch_congestion",
    58: "bearer_not_available",
}


def failed_call_outcome(reason: int | None, cause: int | None) -> tuple[Outcome, str]:
    """Map a failed Originate (Reason) and the channel's Hangup cause to an outcome.

    Asterisk 22 reports a 486 Busy as Reason 0 with cause 17, so the cause decides when
    there is one; the Reason only breaks ties when no Hangup event came.
    """
    if cause in _BUSY_CAUSES:
        return Outcome.BUSY, _BUSY_CAUSES[cause]
    if cause in _NO_ANSWER_CAUSES:
        return Outcome.NO_ANSWER, _NO_ANSWER_CAUSES[cause]
    if reason == REASON_BUSY:
        return Outcome.BUSY, "user_busy"
    if reason == REASON_RING_TIMEOUT:
        return Outcome.NO_ANSWER, "no_answer"
    if cause is not None and cause > 0:
        return Outcome.UNREACHABLE, _UNREACHABLE_CAUSES.get(cause, f"cause_{cause}")
    if reason == REASON_CONGESTION:
        return Outcome.UNREACHABLE, "congestion"
    return Outcome.UNREACHABLE, "no_cause"
