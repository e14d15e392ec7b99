"""What an IVR driver knows about one verification call, shared by the FastAGI and classic drivers.

Everything here is I/O free: the drivers load the call marker, the PIN state and the
channel's facts, and this module turns them into the flow, its :class:`Started` event, the
files to play and the outcome record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from .domain.calltoken import token_matches
from .domain.codes import check_code, check_pin, hash_pin
from .domain.flow import (
    CodeChecked,
    Digits,
    Keyed,
    Report,
    Started,
    Step,
    VerificationFlow,
    keys_are_secret,
    make_flow,
)
from .domain.outcome import Outcome, OutcomeRecord
from .domain.prompts import PROMPTS, prompt_language, sound_files
from .settings import Settings

# Dialplan variables the drivers read (set by AMD(), by our dialplan's StoreDTMF() and by
# the originator's Originate).
COLLECT_SUB = "CALLMFA_COLLECT"  # '1': the dialplan has the callmfa-collect subroutine
AMD_STATUS = "AMDSTATUS"
AMD_CAUSE = "AMDCAUSE"
EARLY_KEYS = "CALLMFA_EARLY_KEYS"
TOKEN = "CALLMFA_TOKEN"  # noqa: S105 - a variable name, not a secret

# How long both drivers retry the outcome's write (and a fraud report's) through a Redis
# restart: the caller is on the line, and an outcome stored a little late beats none.
STORE_RETRY_S = 30.0


class PinEffect(Enum):
    """What an outcome does to the user's PIN denial count."""

    NONE = "none"
    COUNT_DENIAL = "count_denial"
    RESET = "reset"


@dataclass(slots=True)
class CallContext:
    """One call: its request's facts, the code it expects and the times of its timeline."""

    id: str
    user: str | None
    mode: str
    lang: str
    requested_at: float | None
    call_started_at: float | None
    answered_at: float
    number: str = ""
    context: str = "{}"
    match_hash: str = field(default="", repr=False)
    input_at: float | None = None
    input_pending: bool = False  # keys collected, 'input' event not yet written
    wrong_codes: int = 0
    overridden: frozenset[str] = frozenset()
    amd_status: str = ""
    amd_cause: str = ""
    early_keys: str = field(default="", repr=False)
    token_hash: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    entry_id: str = ""  # otp: the request's stream entry, where the IVR reads the code
    otp: str = field(default="", repr=False)  # otp: the code to read; never logged
    heard_seen: int = 0  # how many of the keys StoreDTMF kept the flow was given
    collect_sub: bool = False  # the dialplan has the callmfa-collect subroutine
    pin_upgrade: tuple[str, str] | None = field(default=None, repr=False)  # (old, new) hash

    @classmethod
    def from_marker(cls, rid: str, info: dict[str, str], answered: float) -> CallContext:
        """From the call marker (``callmfa:call:<id>``) the originator wrote."""
        return cls(
            id=rid,
            user=info.get("user"),
            mode=info.get("mode", "standard"),
            lang=prompt_language(info.get("lang", "en")),
            requested_at=_float(info.get("requested_at")),
            call_started_at=_float(info.get("call_started_at")),
            # The originator records the answer; if its note is not in yet, ours is as good.
            answered_at=_float(info.get("answered_at")) or answered,
            number=info.get("number", ""),
            context=info.get("context", "{}"),
            match_hash=info.get("match_hash", ""),
            token_hash=info.get("token_hash", ""),
            entry_id=info.get("entry_id", ""),
        )

    @property
    def token_proven(self) -> bool:
        """Whether the channel gave the token whose hash the originator stored."""
        return token_matches(self.token, self.token_hash)

    def flow(self, settings: Settings) -> VerificationFlow:
        """The flow for this call's mode."""
        return make_flow(
            self.mode,
            input_timeout_ms=int(settings.input_timeout_s * 1000),
            max_attempts=settings.max_attempts,
        )

    def started(self, *, pin_hash: str, pin_locked: bool) -> Started:
        """The flow's first event; remembers the code the keys will be checked against."""
        if self.mode == "pin":
            self.match_hash = pin_hash
        return Started(
            machine=self.amd_status.strip().upper() == "MACHINE",
            silence=self.amd_cause.strip().upper().startswith("INITIALSILENCE"),
            locked=self.mode == "pin" and pin_locked,
            code_known=self.mode == "standard" or bool(
                self.otp if self.mode == "otp" else self.match_hash),
            early_keys=self.early_keys,
            otp=self.otp,
        )

    def note_input(self) -> None:
        """Keys were collected now: their 'input' event is pending."""
        self.input_at = time.time()
        self.input_pending = True

    def input_due(self, step: Step) -> float | None:
        """The pending 'input' event's time, if it is to be written before ``step``.

        Before a :class:`Report` it is not: it goes with the outcome, in one round trip
        (:meth:`take_input`).
        """
        return None if isinstance(step, Report) else self.take_input()

    def take_input(self) -> float | None:
        """The pending 'input' event's time, once (None when none is pending)."""
        if not self.input_pending:
            return None
        self.input_pending = False
        return self.input_at

    @property
    def expected_hash(self) -> str:
        """The hash a :class:`~ivr.domain.flow.CheckCode` is checked against."""
        return self.match_hash

    def files(self, prompts: tuple[str, ...], settings: Settings) -> tuple[str, ...]:
        """The sound files for these prompts (the admin's override, else ours)."""
        return sound_files(
            prompts, self.lang, override_dir=settings.prompt_override_dir,
            overridden=self.overridden,
        )

    def channel_probe(self, settings: Settings) -> str:
        """One dialplan expression for all the IVR reads from the channel, in one round trip.

        It gives the call's token, AMD's verdict and its cause, the keys pressed before the
        IVR ran, and,
        with an override directory, one '1' or '0' per prompt id in catalogue order
        (func_env's STAT): does the admin's recording exist; last, whether the dialplan has
        the ``callmfa-collect`` subroutine. See :meth:`apply_channel_probe`.
        """
        bits = ""
        if settings.prompt_override_dir:
            base = f"{settings.prompt_override_dir}/{self.lang}"
            bits = "".join(f"${{STAT(e,{base}/{pid}.wav)}}" for pid in PROMPTS)
        return (f"${{{TOKEN}}}|${{{AMD_STATUS}}}|${{{AMD_CAUSE}}}|${{{EARLY_KEYS}}}|{bits}"
                f"|${{{COLLECT_SUB}}}")

    def apply_channel_probe(self, answer: str) -> None:
        """Remember what :meth:`channel_probe`'s expression evaluated to."""
        self.token, _, rest = answer.partition("|")
        self.amd_status, _, rest = rest.partition("|")
        self.amd_cause, _, rest = rest.partition("|")
        self.early_keys, _, rest = rest.partition("|")
        bits, _, sub = rest.partition("|")
        self.collect_sub = sub == "1"
        self.heard_seen = len(self.early_keys)
        self.overridden = frozenset(
            pid for pid, bit in zip(PROMPTS, bits, strict=False) if bit == "1"
        )

    @property
    def heard_expression(self) -> str:
        """What a driver reads with each collection's result: the keys StoreDTMF kept (only
        in standard mode: in pin and match modes the keys are a code, never kept)."""
        return "" if keys_are_secret(self.mode) else f"${{{EARLY_KEYS}}}"

    @property
    def collect_seen(self) -> int | None:
        """What a driver passes to the ``callmfa-collect`` subroutine (how many kept keys
        the flow was given), or None to run Read() itself: a secret mode keeps no keys, and
        a dialplan installed before the subroutine existed lacks it."""
        return self.heard_seen if self.collect_sub and not keys_are_secret(self.mode) else None

    def collected(self, keys: str, timed_out: bool, heard: str, max_digits: int) -> Digits | Keyed:
        """The flow's event for a collection (and its input time, if anything was keyed):
        every key heard since the last one, keys that came between two AGI commands
        included; or, when what StoreDTMF kept does not hold what the collection caught (not
        loaded, full, a secret mode), the collection's own keys.
        """
        ended = "" if timed_out or len(keys) >= max_digits else "#"
        new = heard[self.heard_seen:]
        event: Digits | Keyed = Digits(keys, timed_out)
        if heard and keys + ended in new:
            self.heard_seen = len(heard)
            event = Keyed(new, timed_out)
        if keys or not timed_out or (isinstance(event, Keyed) and event.keys):
            self.note_input()
        return event

    def record(self, outcome: Outcome, detail: str | None) -> OutcomeRecord:
        """The outcome record, with the timeline so far."""
        return OutcomeRecord(
            id=self.id, user=self.user, outcome=outcome, detail=detail,
            requested_at=self.requested_at, call_started_at=self.call_started_at,
            answered_at=self.answered_at, input_at=self.input_at, finished_at=time.time(),
        )

    def check_code(self, digits: str, pepper: bytes) -> bool:
        """Whether ``digits`` are the expected code (slow: scrypt; drivers run it off the
        event loop). A right PIN whose hash is not peppered yet gets a peppered one, stored
        by the driver with the success (:attr:`pin_upgrade`)."""
        if self.mode != "pin":
            return check_code(digits, self.match_hash)
        verdict = check_pin(digits, self.match_hash, pepper)
        if verdict.upgrade:
            self.pin_upgrade = (self.match_hash, hash_pin(digits, pepper))
        return verdict.ok

    def code_checked(self, ok: bool) -> CodeChecked:
        """The flow's event for a checked code; a wrong one is remembered for the lockout."""
        if not ok:
            self.wrong_codes += 1
        return CodeChecked(ok)

    def pin_effect(self, outcome: Outcome) -> PinEffect:
        """A PIN call with a wrong PIN counts toward the lockout, however it ended (hanging
        up after wrong guesses must not give free guesses); an approved one clears it."""
        if self.mode != "pin" or not self.user:
            return PinEffect.NONE
        if outcome is Outcome.APPROVED:
            return PinEffect.RESET
        if outcome is Outcome.DENIED or self.wrong_codes:
            return PinEffect.COUNT_DENIAL
        return PinEffect.NONE


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
