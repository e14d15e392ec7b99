"""The IVR flow, sans-IO: it decides what to play and what the keys mean; drivers do I/O.

A driver starts the flow with :class:`Started` and then feeds it what happened after each
step until the flow returns :class:`Hangup`::

    flow = make_flow("pin", input_timeout_ms=6000, max_attempts=3)
    step = flow.send(Started())
    while not isinstance(step, Hangup):
        event = carry_out(step)          # play, collect, check a code, store the outcome
        step = flow.send(event)

One flow serves every mode:

- ``standard``: ``#`` approves.
- ``pin``: the user keys their PIN then ``#``; a wrong PIN is asked again up to
  ``max_attempts`` times, then ``denied``.
- ``match``: the user keys the number the sign-in page shows, then ``#``; a wrong number
  is ``denied`` at once (a guess must not get a second try).
- ``otp``: a voice one-time code. The user presses ``#`` before anything is read (a
  voicemail or a machine gets nothing); the digits are then read twice (:class:`Recite`),
  ``*`` reads them again, and the call ends ``delivered`` once they were read to the end.

In every mode ``0#`` reports fraud, ``*`` throws away what was keyed before it (``*`` last
replays the prompt, not counted as an attempt, a few times at most), any other input counts
as a wrong attempt, and nothing after the outcome changes it. Keys pressed before the
greeting (while answering-machine detection listened; :attr:`Started.early_keys`) count as
if pressed during it: up to the first ``#`` they are the first answer, and without a ``#``
they are the start of it.

The flow never sees a code's hash: it asks the driver to :class:`CheckCode` (a slow hash,
done off the event loop) and is told the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .outcome import Outcome

MODES = ("standard", "pin", "match", "otp")
PIN_MIN_DIGITS = 4
PIN_MAX_DIGITS = 12
MATCH_DIGITS = 2
OTP_MIN_DIGITS = 4
OTP_MAX_DIGITS = 10
FRAUD_KEYS = "0"
REPEAT_KEY = "*"


def keys_are_secret(mode: str) -> bool:
    """The keys of this mode are a code (a PIN, a match number), not just '#' (in otp mode
    the code is read to the user, who keys only '#' and '*')."""
    return mode in ("pin", "match")


def digit_prompts(code: str) -> tuple[str, ...]:
    """The prompt ids that say ``code`` digit by digit (``digit_4``, ``digit_2``, ...)."""
    return tuple(f"digit_{d}" for d in code)


# Steps: what the flow asks the driver to do.
@dataclass(frozen=True)
class Collect:
    """Play the prompts (a key cuts them short) and collect keys up to '#'.

    ``secret``: the keys are a PIN or match code. There is then exactly one prompt, so that
    drivers can use AGI's GET DATA, which (unlike Read()) never writes the keys to
    Asterisk's log.
    """

    prompts: tuple[str, ...]
    timeout_ms: int
    max_digits: int
    secret: bool = False


@dataclass(frozen=True)
class Play:
    """Play the prompts to the end; keys are ignored."""

    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Recite:
    """Play the prompts one file at a time, to the end (``*`` cuts them short when
    ``interruptible``), then wait up to ``wait_ms`` for one key. Answer with
    :class:`Recited`.

    The prompts say a one-time code: drivers play each file on its own (AGI's STREAM FILE),
    so that no log line holds the whole list, and never log them.
    """

    prompts: tuple[str, ...] = field(repr=False)
    interruptible: bool = True
    wait_ms: int = 0


@dataclass(frozen=True)
class CheckCode:
    """Compare these keys with the expected code's hash; answer with :class:`CodeChecked`."""

    digits: str = field(repr=False)  # a PIN: never in a log line


@dataclass(frozen=True)
class Report:
    """The outcome is known: store and publish it now, before any goodbye prompt."""

    outcome: Outcome
    detail: str | None = None


@dataclass(frozen=True)
class Hangup:
    """The flow is over: hang up (or, if the caller is gone, just stop)."""


Step = Collect | Play | Recite | CheckCode | Report | Hangup


# Events: what happened.
@dataclass(frozen=True)
class Started:
    """The call is answered and the IVR runs.

    ``machine``: answering-machine detection said MACHINE (it wins over any key: a
    voicemail greeting may hold a tone). ``silence``: it said so because nobody spoke
    (INITIALSILENCE): with keys pressed, that is a person on mute, asked again for a fresh
    answer (the keys pressed while AMD listened never count then). ``locked``: the user's
    PIN is locked out. ``code_known``: the expected code's hash is there (pin and match
    modes), or the code to read (otp mode: ``otp``). ``early_keys``: keys pressed before the
    IVR ran, in order.
    """

    machine: bool = False
    silence: bool = False
    locked: bool = False
    code_known: bool = True
    early_keys: str = field(default="", repr=False)
    otp: str = field(default="", repr=False)


@dataclass(frozen=True)
class Digits:
    """Keys collected before '#' (not included), the digit limit, or the timeout."""

    digits: str = field(repr=False)
    timed_out: bool


@dataclass(frozen=True)
class Keyed:
    """Every key pressed since the last event, in the order pressed, each '#' included: what
    Asterisk heard (StoreDTMF), not only what the last collection caught, so that keys
    pressed between two AGI commands count too. ``timed_out``: the collection timed out
    (it matters only when no '#' ends an answer)."""

    keys: str = field(repr=False)
    timed_out: bool


@dataclass(frozen=True)
class CodeChecked:
    """The verdict on a :class:`CheckCode`."""

    ok: bool


@dataclass(frozen=True)
class Recited:
    """A :class:`Recite` ended: ``played`` files were played to the end; ``key`` is the key
    that cut it short or came during the wait ('' for none)."""

    key: str
    played: int


@dataclass(frozen=True)
class Done:
    """A Play or Report step finished."""


@dataclass(frozen=True)
class HungUp:
    """The caller hung up."""


Event = Started | Digits | Keyed | CodeChecked | Recited | Done | HungUp

_GREETINGS = {"standard": "greeting", "pin": "pin_greeting", "match": "match_greeting",
              "otp": "otp_greeting"}
# A secret collection plays one file: these say what comes before the prompt and the prompt.
_SECRET_RETRIES: dict[tuple[str, tuple[str, ...]], str] = {
    ("pin", ("wrong_code",)): "pin_wrong_code",
    ("pin", ("retry",)): "pin_retry",
    ("match", ("retry",)): "match_retry",
}
_CLOSINGS = {
    Outcome.APPROVED: "approved",
    Outcome.FRAUD_REPORTED: "fraud_reported",
    Outcome.NO_INPUT: "failed",
    Outcome.DENIED: "denied",
    Outcome.LOCKED_OUT: "locked_out",
}
# What an otp call reads: the code twice; then the menu (``*``: again).
_OTP_BEFORE, _OTP_AGAIN, _OTP_MENU, _OTP_GOODBYE = (
    "otp_code_is", "otp_again", "otp_menu", "otp_goodbye")


class VerificationFlow:
    """The state machine of one verification call; see the module docstring for the rules.

    Running out of attempts is ``no_input`` (detail ``invalid_input`` if a wrong key was
    pressed at any point, else ``timeout``), or ``denied`` (``wrong_code``) if a code was
    checked and found wrong. ``answered_early``: the first answer was keyed before the
    greeting (the driver records its input time).

    In otp mode the answer to the greeting is ``#`` alone: the code is then read twice and
    the outcome ``delivered`` is reported the moment the second reading ends; the menu
    that follows reads it again on ``*`` (``max_attempts`` times in all, cut-short
    readings included). A hang-up before the second reading ends is ``hung_up``.
    """

    __slots__ = ("_attempts", "_closing", "_delivered", "_max_attempts", "_otp", "_pending",
                 "_prefix", "_queued", "_repeats", "_restarts", "_state", "_timeout_ms",
                 "_wrong_code", "_wrong_key", "answered_early", "mode")

    def __init__(self, mode: str, *, input_timeout_ms: int, max_attempts: int) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self._timeout_ms = input_timeout_ms
        self._max_attempts = max_attempts
        self._attempts = 0
        self._restarts = 0
        self._wrong_key = False
        self._wrong_code = False
        self._closing: tuple[str, ...] | None = None
        self._pending: Collect | None = None
        self._prefix = ""  # early keys with no '#': the start of the next answer
        self._queued = ""  # keys heard ahead of the flow: the answers that come next
        self.answered_early = False
        self._otp = ""
        self._repeats = 0  # otp: readings asked for again with '*'
        self._delivered = False
        self._state = "new"

    def __repr__(self) -> str:  # never the otp
        return f"<VerificationFlow mode={self.mode} state={self._state}>"

    @property
    def finished(self) -> bool:
        """The outcome is decided: nothing the caller does changes it any more."""
        return self._state in ("reporting", "menu", "closing", "done")

    def send(self, event: Event) -> Step:
        """Advance the flow by one event and return the next step."""
        if self._state == "new" and isinstance(event, Started):
            return self._start(event)
        if self._state == "preamble" and isinstance(event, Done):
            self._state = "collecting"
            assert self._pending is not None
            return self._pending
        if self._state in ("preamble", "collecting", "checking") and isinstance(event, HungUp):
            return self._report(Outcome.HUNG_UP, None)
        if self._state == "collecting" and isinstance(event, Digits):
            return self._on_digits(event)
        if self._state == "collecting" and isinstance(event, Keyed):
            self._queued += event.keys
            if "#" in self._queued:
                answer, _, self._queued = self._queued.partition("#")
                return self._on_digits(Digits(answer, timed_out=False))
            answer, self._queued = self._queued, ""
            return self._on_digits(Digits(answer, event.timed_out))
        if self._state == "checking" and isinstance(event, CodeChecked):
            return self._on_checked(event.ok)
        if self._state == "reciting" and isinstance(event, Recited):
            return self._on_recited(event)
        if self._state == "reciting" and isinstance(event, HungUp):
            return self._report(Outcome.HUNG_UP, None)
        if self._state == "reporting" and isinstance(event, Done) and self._delivered:
            self._state = "menu"
            return self._otp_menu(())
        if self._state == "menu" and isinstance(event, Recited):
            if event.key == REPEAT_KEY and self._repeats < self._max_attempts:
                self._repeats += 1
                return self._otp_menu(self._reading())
            self._state = "closing"
            return Play((_OTP_GOODBYE,))
        if self._state == "menu" and isinstance(event, HungUp):
            self._state = "done"
            return Hangup()
        if self._state == "reporting" and isinstance(event, Done):
            if self._closing:
                self._state = "closing"
                return Play(self._closing)
            self._state = "done"
            return Hangup()
        if self._state == "closing" and isinstance(event, Done | HungUp):
            self._state = "done"
            return Hangup()
        raise ValueError(f"{type(event).__name__} is not expected in state {self._state}")

    def _start(self, event: Started) -> Step:
        early_keys = event.early_keys
        if event.machine:
            if not (event.silence and early_keys):
                return self._report(Outcome.MACHINE_ANSWERED, None, closing=False)
            # Silent, yet keyed: a person, or a machine's tone. Only keys pressed after our
            # own greeting has started count.
            early_keys = ""
        if self.mode == "pin" and event.locked:
            return self._report(Outcome.LOCKED_OUT, None)
        if self.mode != "standard" and not event.code_known:
            # Nothing to compare the keys with (or to read): never approve, tell the sign-in
            # service why.
            return self._report(Outcome.ERROR, "no_pin" if self.mode == "pin" else "no_code",
                                closing=False, prompt="failed")
        self._otp = event.otp
        if "#" not in early_keys:
            # Unfinished: a '*' asked for the greeting, which comes now anyway.
            self._prefix = early_keys.rsplit("*", 1)[-1]
            return self._collect(())
        # Finished before the greeting: the first answer, and any keyed after it are the
        # next answers, in order (wrong, then right; or wrong, then 0#).
        self._queued = early_keys
        self.answered_early = True
        return self._collect(())

    def _collect(self, before: tuple[str, ...], *, attempt: bool = True) -> Step:
        self._state = "collecting"
        if attempt:
            self._attempts += 1
        if "#" in self._queued:
            # The answer was keyed already (before the greeting): no prompt, no wait.
            answer, _, self._queued = self._queued.partition("#")
            return self._on_digits(Digits(answer, timed_out=False))
        if self._queued:
            self._prefix, self._queued = self._queued.rsplit("*", 1)[-1], ""
        if not keys_are_secret(self.mode):
            return Collect((*before, _GREETINGS[self.mode]), self._timeout_ms, 4)
        prompt = _SECRET_RETRIES.get((self.mode, before), _GREETINGS[self.mode])
        collect = Collect((prompt,), self._timeout_ms, PIN_MAX_DIGITS + 8, secret=True)
        if not before or prompt != _GREETINGS[self.mode]:
            return collect
        # A secret Collect has one prompt: what comes before it is played first (keys pressed
        # meanwhile are lost, as in any Playback).
        self._state = "preamble"
        self._pending = collect
        return Play(before)

    def _report(
        self, outcome: Outcome, detail: str | None, *, closing: bool = True,
        prompt: str | None = None,
    ) -> Report:
        self._state = "reporting"
        name = prompt or (_CLOSINGS.get(outcome) if closing else None)
        self._closing = (name,) if name else None
        return Report(outcome, detail)

    def _on_digits(self, event: Digits) -> Step:
        typed = self._prefix + event.digits
        self._prefix = ""
        keys = typed
        if "*" in keys:
            keys = keys.rsplit("*", 1)[1]
            if not keys:
                if self._restarts < self._max_attempts:
                    self._restarts += 1
                    return self._collect((), attempt=False)
                keys = "*"  # restarted too often: a wrong key like any other
        if not event.timed_out and keys == FRAUD_KEYS:
            return self._report(Outcome.FRAUD_REPORTED, None)
        if not event.timed_out and self._well_formed(keys):
            if self.mode == "standard":
                return self._report(Outcome.APPROVED, None)
            if self.mode == "otp":
                return self._recite()
            self._state = "checking"
            return CheckCode(keys)
        silent = event.timed_out and typed == ""
        self._wrong_key = self._wrong_key or not silent
        return self._retry_or_fail(() if silent else ("retry",))

    def _reading(self) -> tuple[str, ...]:
        digits = digit_prompts(self._otp)
        return (_OTP_BEFORE, *digits, _OTP_AGAIN, *digits)

    def _recite(self) -> Recite:
        self._state = "reciting"
        return Recite(self._reading(), interruptible=self._repeats < self._max_attempts)

    def _on_recited(self, event: Recited) -> Step:
        if event.played >= len(self._reading()):
            # Read twice to the end: delivered, whatever the caller does next.
            self._delivered = True
            return self._report(Outcome.DELIVERED, None, closing=False)
        self._repeats += 1  # '*' cut the reading short: from the start
        return self._recite()

    def _otp_menu(self, before: tuple[str, ...]) -> Recite:
        return Recite((*before, _OTP_MENU), interruptible=self._repeats < self._max_attempts,
                      wait_ms=self._timeout_ms)

    def _well_formed(self, keys: str) -> bool:
        if self.mode in ("standard", "otp"):
            return keys == ""
        if not keys.isdigit() or not keys.isascii():
            return False
        if self.mode == "pin":
            return PIN_MIN_DIGITS <= len(keys) <= PIN_MAX_DIGITS
        return len(keys) == MATCH_DIGITS

    def _on_checked(self, ok: bool) -> Step:
        if ok:
            return self._report(Outcome.APPROVED, None)
        self._wrong_code = True
        if self.mode == "match":
            return self._report(Outcome.DENIED, "wrong_code")
        return self._retry_or_fail(("wrong_code",))

    def _retry_or_fail(self, before: tuple[str, ...]) -> Step:
        if self._attempts < self._max_attempts:
            return self._collect(before)
        if self._wrong_code:
            return self._report(Outcome.DENIED, "wrong_code")
        return self._report(Outcome.NO_INPUT, "invalid_input" if self._wrong_key else "timeout")


class StandardFlow(VerificationFlow):
    """'#' approves, '0#' reports fraud: the ``standard`` mode."""

    __slots__ = ()

    def __init__(self, *, input_timeout_ms: int, max_attempts: int) -> None:
        super().__init__("standard", input_timeout_ms=input_timeout_ms, max_attempts=max_attempts)


def make_flow(mode: str, *, input_timeout_ms: int, max_attempts: int) -> VerificationFlow:
    """The flow for a request's ``mode``."""
    return VerificationFlow(mode, input_timeout_ms=input_timeout_ms, max_attempts=max_attempts)
