"""What the RADIUS front answers, as a decision: accept, challenge or reject, and the words a
person reads on the VPN client or the SSH prompt. No I/O, no packets.

Access-Accept only for ``approved`` and ``bypassed``. Every other outcome, and every refusal
of the front itself, is an Access-Reject whose Reply-Message says what happened in the user's
terms and never names internals (no outcome values, hang-up causes or setting names); the
``reason`` is for the logs and the metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ...domain.outcome import Outcome, OutcomeRecord


class Kind(StrEnum):
    """The three answers to an Access-Request."""

    ACCEPT = "accept"
    CHALLENGE = "challenge"
    REJECT = "reject"


@dataclass(frozen=True)
class Verdict:
    """The answer: its kind, why (an outcome value or a front reason), what the user reads,
    and for a challenge its State."""

    kind: Kind
    reason: str
    message: str | None = None
    state: bytes | None = None


ACCEPTED = frozenset({Outcome.APPROVED, Outcome.BYPASSED})

_HELP_DESK = "contact your help desk"
OUTCOME_MESSAGES: dict[Outcome, str] = {
    Outcome.APPROVED: "Sign-in approved by phone",
    Outcome.BYPASSED: "Sign-in approved without a call (bypass granted by your help desk)",
    Outcome.FRAUD_REPORTED: f"Sign-in reported as fraud: {_HELP_DESK}",
    Outcome.DENIED: "The number or PIN keyed on the phone was wrong: sign in again",
    Outcome.LOCKED_OUT: f"Too many wrong PINs: phone sign-in is locked, {_HELP_DESK}",
    Outcome.MACHINE_ANSWERED: "The call reached a voicemail: answer it yourself, "
                              "say hello, then key #",
    Outcome.NO_INPUT: "No key was pressed during the call: sign in again and key # on the phone",
    Outcome.HUNG_UP: "The call was hung up before the sign-in was approved",
    Outcome.NO_ANSWER: "The call was not answered",
    Outcome.BUSY: "Your phone was busy or declined the call",
    Outcome.UNREACHABLE: "Your phone could not be reached",
    Outcome.REJECTED: f"This sign-in cannot be verified by phone: {_HELP_DESK}",
    Outcome.EXPIRED: "The call could not be placed in time: sign in again",
    Outcome.ERROR: "Phone verification failed: sign in again",
    Outcome.THROTTLED: "Too many sign-in calls: wait a few minutes, then sign in again",
    Outcome.BLOCKED: f"Phone sign-in is blocked for your account: {_HELP_DESK}",
    # Mode otp is never asked for over RADIUS; a reject all the same (no second factor).
    Outcome.DELIVERED: "Phone verification failed: sign in again",
}

# The front's own refusals, before or instead of an outcome.
FRONT_MESSAGES: dict[str, str] = {
    "timeout": "The call was not answered in time",
    "unknown_user": f"This sign-in cannot be verified by phone: {_HELP_DESK}",
    "invalid_user": f"This sign-in cannot be verified by phone: {_HELP_DESK}",
    "wrong_password": "Wrong user name or password",
    "password_required": "Wrong user name or password",
    "unknown_state": "This sign-in has expired: sign in again",
    "unavailable": "Phone verification is unavailable right now: try again later",
    "overloaded": "Phone verification is unavailable right now: try again later",
    "eap_not_supported": "Phone verification needs PAP, not EAP: ask your help desk",
}


def for_outcome(record: OutcomeRecord | None) -> Verdict:
    """The verdict for a verification's outcome; None (no outcome in time) is a timeout."""
    if record is None:
        return reject("timeout")
    message = OUTCOME_MESSAGES[record.outcome]
    if record.outcome is Outcome.THROTTLED and record.retry_after:
        minutes = max(1, -(-record.retry_after // 60))
        message = (f"Too many sign-in calls: sign in again in {minutes} minute"
                   + ("s" if minutes > 1 else ""))
    kind = Kind.ACCEPT if record.outcome in ACCEPTED else Kind.REJECT
    return Verdict(kind, record.outcome.value, message)


def reject(reason: str) -> Verdict:
    """An Access-Reject for one of the front's own reasons (:data:`FRONT_MESSAGES`)."""
    return Verdict(Kind.REJECT, reason, FRONT_MESSAGES[reason])


def challenge(org: str, code: str, state: bytes) -> Verdict:
    """The Access-Challenge of number match: the number to key, and the State to return."""
    return Verdict(Kind.CHALLENGE, "match_challenge",
                   f"Answer the call from {org} and key {code}, then #", state)
