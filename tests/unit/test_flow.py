"""Tests for ivr.domain.flow: the sans-IO IVR state machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.domain.flow import (
    Collect,
    Digits,
    Done,
    Event,
    Hangup,
    HungUp,
    Play,
    Report,
    StandardFlow,
    Started,
    Step,
)
from ivr.domain.outcome import Outcome

TIMEOUT_MS = 6000
GREETING = Collect(("greeting",), TIMEOUT_MS, max_digits=4)
RETRY = Collect(("retry", "greeting"), TIMEOUT_MS, max_digits=4)

# Keys that are neither '#' alone nor '0#'.
WRONG_KEYS = [
    Digits("5", timed_out=False),
    Digits("00", timed_out=False),
    Digits("0", timed_out=True),
    Digits("1234", timed_out=False),
    Digits("*5", timed_out=False),
]


def make_flow(max_attempts: int = 3) -> StandardFlow:
    return StandardFlow(input_timeout_ms=TIMEOUT_MS, max_attempts=max_attempts)


def started(max_attempts: int = 3) -> StandardFlow:
    """A flow that has been started and is waiting for the first keys."""
    flow = make_flow(max_attempts)
    assert flow.send(Started()) == GREETING
    return flow


def run_to_end(flow: StandardFlow, first: Step) -> list[Step]:
    """Feed Done to every Report/Play step until Hangup; return the steps seen."""
    steps = [first]
    while not isinstance(steps[-1], Hangup):
        steps.append(flow.send(Done()))
    return steps


class TestStart:
    def test_started_collects_greeting(self) -> None:
        """Started asks to play the greeting and collect keys with the configured timeout."""
        flow = make_flow()

        step = flow.send(Started())

        assert step == Collect(("greeting",), TIMEOUT_MS, max_digits=4)

    def test_timeout_is_passed_through(self) -> None:
        """The Collect step carries the flow's input timeout unchanged."""
        flow = StandardFlow(input_timeout_ms=1500, max_attempts=2)

        step = flow.send(Started())

        assert isinstance(step, Collect)
        assert step.timeout_ms == 1500


class TestApproved:
    def test_pound_approves(self) -> None:
        """'#' alone (no keys, not timed out) reports APPROVED, then plays 'approved'."""
        flow = started()

        steps = run_to_end(flow, flow.send(Digits("", timed_out=False)))

        assert steps == [Report(Outcome.APPROVED, None), Play(("approved",)), Hangup()]

    def test_pound_after_retries_approves(self) -> None:
        """'#' on the last allowed attempt still approves."""
        flow = started(max_attempts=3)
        assert flow.send(Digits("", timed_out=True)) == GREETING
        assert flow.send(Digits("7", timed_out=False)) == RETRY

        step = flow.send(Digits("", timed_out=False))

        assert step == Report(Outcome.APPROVED)


class TestFraudReported:
    def test_zero_pound_reports_fraud(self) -> None:
        """'0#' reports FRAUD_REPORTED, then plays 'fraud_reported'."""
        flow = started()

        steps = run_to_end(flow, flow.send(Digits("0", timed_out=False)))

        assert steps == [
            Report(Outcome.FRAUD_REPORTED, None),
            Play(("fraud_reported",)),
            Hangup(),
        ]


class TestSilence:
    @pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
    def test_silence_retried_then_no_input_timeout(self, max_attempts: int) -> None:
        """Silence replays the greeting (no 'retry') until max_attempts, then NO_INPUT/timeout."""
        flow = started(max_attempts)
        for _ in range(max_attempts - 1):
            assert flow.send(Digits("", timed_out=True)) == GREETING

        steps = run_to_end(flow, flow.send(Digits("", timed_out=True)))

        assert steps == [Report(Outcome.NO_INPUT, "timeout"), Play(("failed",)), Hangup()]


class TestWrongKeys:
    @pytest.mark.parametrize("wrong", WRONG_KEYS, ids=repr)
    def test_wrong_keys_get_retry_prompt(self, wrong: Digits) -> None:
        """Wrong keys (including '0' that timed out without '#') play 'retry' then 'greeting'."""
        flow = started()

        assert flow.send(wrong) == RETRY

    @pytest.mark.parametrize("wrong", WRONG_KEYS, ids=repr)
    def test_wrong_keys_exhaust_attempts_as_invalid_input(self, wrong: Digits) -> None:
        """Wrong keys on every attempt end in NO_INPUT with detail 'invalid_input'."""
        flow = started(max_attempts=3)
        assert flow.send(wrong) == RETRY
        assert flow.send(wrong) == RETRY

        steps = run_to_end(flow, flow.send(wrong))

        assert steps == [
            Report(Outcome.NO_INPUT, "invalid_input"),
            Play(("failed",)),
            Hangup(),
        ]

    def test_any_wrong_key_makes_the_detail_invalid_input(self) -> None:
        """A wrong key on any attempt makes the detail 'invalid_input', even if silence ends it."""
        flow = started(max_attempts=3)
        assert flow.send(Digits("5", timed_out=False)) == RETRY
        assert flow.send(Digits("", timed_out=True)) == GREETING

        assert flow.send(Digits("", timed_out=True)) == Report(Outcome.NO_INPUT, "invalid_input")

    def test_wrong_key_last_after_silence_is_invalid_input(self) -> None:
        """Silence first and a wrong key last is 'invalid_input' too."""
        flow = started(max_attempts=2)
        assert flow.send(Digits("", timed_out=True)) == GREETING

        assert flow.send(Digits("9", timed_out=False)) == Report(Outcome.NO_INPUT, "invalid_input")

    def test_silence_after_wrong_keys_gets_plain_greeting(self) -> None:
        """After a wrong key then silence, the prompt is the greeting alone."""
        flow = started(max_attempts=3)
        assert flow.send(Digits("5", timed_out=False)) == RETRY

        assert flow.send(Digits("", timed_out=True)) == GREETING


class TestHungUp:
    def test_hang_up_while_collecting_reports_and_hangs_up(self) -> None:
        """HungUp during Collect reports HUNG_UP and then hangs up without a goodbye Play."""
        flow = started()

        steps = run_to_end(flow, flow.send(HungUp()))

        assert steps == [Report(Outcome.HUNG_UP, None), Hangup()]

    def test_hang_up_on_a_retry_reports_hung_up(self) -> None:
        """HungUp on a later attempt is still HUNG_UP, not NO_INPUT."""
        flow = started()
        assert flow.send(Digits("5", timed_out=False)) == RETRY

        assert flow.send(HungUp()) == Report(Outcome.HUNG_UP, None)

    @pytest.mark.parametrize(
        "keys",
        [Digits("", timed_out=False), Digits("0", timed_out=False), Digits("", timed_out=True)],
    )
    def test_hang_up_during_closing_play_hangs_up(self, keys: Digits) -> None:
        """HungUp while the closing prompt plays ends the flow with Hangup."""
        flow = started(max_attempts=1)
        assert isinstance(flow.send(keys), Report)
        assert isinstance(flow.send(Done()), Play)

        assert flow.send(HungUp()) == Hangup()


class TestUnexpectedEvents:
    @pytest.mark.parametrize("event", [Digits("", timed_out=False), Done(), HungUp()], ids=repr)
    def test_before_started(self, event: Event) -> None:
        """Only Started may begin the flow."""
        flow = make_flow()

        with pytest.raises(ValueError, match="not expected in state new"):
            flow.send(event)

    @pytest.mark.parametrize("event", [Started(), Done()], ids=repr)
    def test_while_collecting(self, event: Event) -> None:
        """While collecting, only Digits and HungUp are valid."""
        flow = started()

        with pytest.raises(ValueError, match="not expected in state collecting"):
            flow.send(event)

    @pytest.mark.parametrize("event", [Started(), Digits("", timed_out=False), HungUp()], ids=repr)
    def test_while_reporting(self, event: Event) -> None:
        """A Report step must be answered with Done."""
        flow = started()
        assert isinstance(flow.send(Digits("", timed_out=False)), Report)

        with pytest.raises(ValueError, match="not expected in state reporting"):
            flow.send(event)

    @pytest.mark.parametrize("event", [Started(), Digits("", timed_out=False)], ids=repr)
    def test_while_closing(self, event: Event) -> None:
        """The closing Play accepts only Done or HungUp."""
        flow = started()
        flow.send(Digits("", timed_out=False))
        assert isinstance(flow.send(Done()), Play)

        with pytest.raises(ValueError, match="not expected in state closing"):
            flow.send(event)

    @pytest.mark.parametrize(
        "event", [Started(), Digits("", timed_out=False), Done(), HungUp()], ids=repr
    )
    def test_after_hangup(self, event: Event) -> None:
        """Once the flow returned Hangup, every further event is refused."""
        flow = started()
        run_to_end(flow, flow.send(HungUp()))

        with pytest.raises(ValueError, match="not expected in state done"):
            flow.send(event)


digits_events = st.builds(
    Digits,
    # No "*" here: it restarts the prompt (tests/unit/test_flow_modes.py covers it).
    digits=st.one_of(st.just(""), st.just("0"), st.text(alphabet="0123456789", max_size=4)),
    timed_out=st.booleans(),
)


class TestProperties:
    @given(
        max_attempts=st.integers(min_value=1, max_value=6),
        events=st.lists(digits_events, min_size=6, max_size=6),
    )
    def test_any_digits_end_the_flow_and_only_pound_approves(
        self, max_attempts: int, events: list[Digits]
    ) -> None:
        """Any Digits sequence reaches Report within max_attempts Collects; only '#' approves."""
        flow = make_flow(max_attempts)
        step = flow.send(Started())
        collects = 0
        fed: list[Digits] = []
        while isinstance(step, Collect):
            collects += 1
            assert collects <= max_attempts
            previous = fed[-1] if fed else None
            expected_prompts = (
                ("greeting",)
                if previous is None or (previous.timed_out and previous.digits == "")
                else ("retry", "greeting")
            )
            assert step.prompts == expected_prompts
            fed.append(events[len(fed)])
            step = flow.send(fed[-1])

        assert isinstance(step, Report)
        last = fed[-1]
        if step.outcome is Outcome.APPROVED:
            assert last == Digits("", timed_out=False)
        elif step.outcome is Outcome.FRAUD_REPORTED:
            assert last == Digits("0", timed_out=False)
        else:
            assert step.outcome is Outcome.NO_INPUT
            assert collects == max_attempts
            silent_throughout = all(e == Digits("", timed_out=True) for e in fed)
            assert step.detail == ("timeout" if silent_throughout else "invalid_input")
        # Every earlier attempt was neither '#' nor '0#'.
        assert all(e.timed_out or e.digits not in ("", "0") for e in fed[:-1])
        tail = run_to_end(flow, step)
        assert isinstance(tail[1], Play)
        assert tail[-1] == Hangup()
