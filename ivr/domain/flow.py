"""The IVR flow, sans-IO: it decides what to play and what the keys mean; drivers do I/O.

A driver starts the flow with :class:`Started` and then feeds it what happened after each
step until the flow returns :class:`Hangup`::

    step = flow.send(Started())
    while not isinstance(step, Hangup):
        event = carry_out(step)          # play, collect, store the outcome
        step = flow.send(event)
"""

from __future__ import annotations

from dataclasses import dataclass

from .outcome import Outcome


# Steps: what the flow asks the driver to do.
@dataclass(frozen=True)
class Collect:
    """Play the prompts (a key cuts them short) and collect keys up to '#'."""

    prompts: tuple[str, ...]
    timeout_ms: int
    max_digits: int


@dataclass(frozen=True)
class Play:
    """Play the prompts to the end; keys are ignored."""

    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """The outcome is known: store and publish it now, before any goodbye prompt."""

    outcome: Outcome
    detail: str | None = None


@dataclass(frozen=True)
class Hangup:
    """The flow is over: hang up (or, if the caller is gone, just stop)."""


Step = Collect | Play | Report | Hangup


# Events: what happened.
@dataclass(frozen=True)
class Started:
    """The call is answered and the IVR runs."""


@dataclass(frozen=True)
class Digits:
    """Keys collected before '#' (not included), the digit limit, or the timeout."""

    digits: str
    timed_out: bool


@dataclass(frozen=True)
class Done:
    """A Play or Report step finished."""


@dataclass(frozen=True)
class HungUp:
    """The caller hung up."""


Event = Started | Digits | Done | HungUp


class StandardFlow:
    """'#' approves, '0#' reports fraud; anything else is asked again, up to max_attempts.

    Running out of attempts is ``no_input``: detail ``invalid_input`` if a wrong key was
    pressed at any point, else ``timeout`` (silence throughout, typical of voicemail).
    """

    def __init__(self, *, input_timeout_ms: int, max_attempts: int) -> None:
        self._timeout_ms = input_timeout_ms
        self._max_attempts = max_attempts
        self._attempts = 0
        self._wrong_key = False
        self._closing: tuple[str, ...] | None = None
        self._state = "new"

    def send(self, event: Event) -> Step:
        """Advance the flow by one event and return the next step."""
        if self._state == "new" and isinstance(event, Started):
            return self._collect(("greeting",))
        if self._state == "collecting":
            if isinstance(event, HungUp):
                return self._report(Outcome.HUNG_UP, None, None)
            if isinstance(event, Digits):
                return self._on_digits(event)
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

    def _collect(self, prompts: tuple[str, ...]) -> Collect:
        self._state = "collecting"
        self._attempts += 1
        return Collect(prompts, self._timeout_ms, max_digits=4)

    def _report(self, outcome: Outcome, detail: str | None, closing: str | None) -> Report:
        self._state = "reporting"
        self._closing = (closing,) if closing else None
        return Report(outcome, detail)

    def _on_digits(self, event: Digits) -> Step:
        if not event.timed_out and event.digits == "":
            return self._report(Outcome.APPROVED, None, "approved")
        if not event.timed_out and event.digits == "0":
            return self._report(Outcome.FRAUD_REPORTED, None, "fraud_reported")
        silent = event.timed_out and event.digits == ""
        self._wrong_key = self._wrong_key or not silent
        if self._attempts < self._max_attempts:
            return self._collect(("greeting",) if silent else ("retry", "greeting"))
        detail = "invalid_input" if self._wrong_key else "timeout"
        return self._report(Outcome.NO_INPUT, detail, "failed")
