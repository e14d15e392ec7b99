"""Tests for ivr.domain.flow across modes: a table of inputs -> outcomes, and properties.

The fake "driver" here answers CheckCode by comparing with a known code, as the real
drivers do with the scrypt hash.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.domain.flow import (
    CheckCode,
    CodeChecked,
    Collect,
    Digits,
    Done,
    Event,
    Hangup,
    HungUp,
    Keyed,
    Play,
    Report,
    Started,
    Step,
    VerificationFlow,
    make_flow,
)
from ivr.domain.outcome import Outcome

PIN = "4711"
MATCH = "42"
CODES = {"standard": "", "pin": PIN, "match": MATCH}
T = 6000

# What the user does on each attempt: keys then '#' (timed_out False) or keys then silence.
P = lambda keys: Digits(keys, timed_out=False)  # noqa: E731 - a table shorthand
S = lambda keys="": Digits(keys, timed_out=True)  # noqa: E731


def drive(
    flow: VerificationFlow, inputs: list[Digits], *, started: Started | None = None,
    code: str | None = None, hang_up_at: int | None = None,
) -> tuple[Report, list[Step]]:
    """Run a flow like a driver: inputs feed Collects; CheckCode compares with the code."""
    expected = CODES[flow.mode] if code is None else code
    steps: list[Step] = [flow.send(started or Started())]
    report: Report | None = None
    fed = 0
    while not isinstance(steps[-1], Hangup):
        step = steps[-1]
        event: Event
        if isinstance(step, Collect):
            if hang_up_at is not None and fed == hang_up_at:
                event = HungUp()
            elif fed < len(inputs):
                event = inputs[fed]
            else:
                event = S()
            fed += 1
        elif isinstance(step, CheckCode):
            event = CodeChecked(step.digits == expected)
        else:
            if isinstance(step, Report):
                report = step
            event = Done()
        steps.append(flow.send(event))
    assert report is not None
    return report, steps


def flow(mode: str, attempts: int = 3) -> VerificationFlow:
    return make_flow(mode, input_timeout_ms=T, max_attempts=attempts)


# (mode, inputs, outcome, detail)
TABLE = [
    ("standard", [P("")], Outcome.APPROVED, None),
    ("standard", [P("0")], Outcome.FRAUD_REPORTED, None),
    ("standard", [S(), S(), S()], Outcome.NO_INPUT, "timeout"),
    ("standard", [P("5"), P("5"), P("5")], Outcome.NO_INPUT, "invalid_input"),
    ("standard", [P("5*")], Outcome.NO_INPUT, "timeout"),  # '*' restarts, then silence
    ("standard", [P("*"), P("")], Outcome.APPROVED, None),
    ("standard", [P("12*")], Outcome.NO_INPUT, "timeout"),
    ("standard", [P("5*0")], Outcome.FRAUD_REPORTED, None),
    ("standard", [P("9*")], Outcome.NO_INPUT, "timeout"),
    ("standard", [S("1"), P("")], Outcome.APPROVED, None),
    ("pin", [P(PIN)], Outcome.APPROVED, None),
    ("pin", [P("0")], Outcome.FRAUD_REPORTED, None),
    ("pin", [P("1111"), P(PIN)], Outcome.APPROVED, None),
    ("pin", [P("1111"), P("2222"), P("3333")], Outcome.DENIED, "wrong_code"),
    ("pin", [P("1111"), S(), S()], Outcome.DENIED, "wrong_code"),
    ("pin", [S(), S(), S()], Outcome.NO_INPUT, "timeout"),
    ("pin", [P(""), P("12"), S(PIN)], Outcome.NO_INPUT, "invalid_input"),  # no '#': not taken
    ("pin", [P("99*" + PIN)], Outcome.APPROVED, None),  # '*' discards what came before
    ("pin", [P(PIN + "#")], Outcome.NO_INPUT, "invalid_input"),  # '#' inside: not a PIN
    ("pin", [P("1" * 13), P(PIN)], Outcome.APPROVED, None),
    ("match", [P(MATCH)], Outcome.APPROVED, None),
    ("match", [P("17")], Outcome.DENIED, "wrong_code"),  # no second guess
    ("match", [P("0")], Outcome.FRAUD_REPORTED, None),
    ("match", [P("4"), P(MATCH)], Outcome.APPROVED, None),  # malformed: asked again
    ("match", [P("420"), P("4"), P("")], Outcome.NO_INPUT, "invalid_input"),
    ("match", [S(), S(), S()], Outcome.NO_INPUT, "timeout"),
    ("match", [P("*"), P(MATCH)], Outcome.APPROVED, None),
]


class TestTable:
    @pytest.mark.parametrize(("mode", "inputs", "outcome", "detail"), TABLE,
                             ids=[f"{m}-{i!r}" for m, i, _, _ in TABLE])
    def test_inputs_give_outcome(
        self, mode: str, inputs: list[Digits], outcome: Outcome, detail: str | None
    ) -> None:
        """Each row: what the user keys on each attempt -> the outcome and its detail."""
        report, _ = drive(flow(mode), inputs)
        assert (report.outcome, report.detail) == (outcome, detail)

    @pytest.mark.parametrize("mode", ["standard", "pin", "match"])
    def test_machine_never_prompts(self, mode: str) -> None:
        """AMD said MACHINE: machine_answered at once, no prompt, no goodbye, hang up."""
        report, steps = drive(flow(mode), [P("")], started=Started(machine=True))
        assert report == Report(Outcome.MACHINE_ANSWERED, None)
        assert steps == [report, Hangup()]

    def test_locked_user_hears_why(self) -> None:
        """A locked-out PIN user is told so and gets locked_out, without a PIN prompt."""
        report, steps = drive(flow("pin"), [P(PIN)], started=Started(locked=True))
        assert report == Report(Outcome.LOCKED_OUT, None)
        assert steps == [report, Play(("locked_out",)), Hangup()]

    def test_locked_only_matters_in_pin_mode(self) -> None:
        """The PIN lockout does not block the standard mode."""
        report, _ = drive(flow("standard"), [P("")], started=Started(locked=True))
        assert report.outcome is Outcome.APPROVED

    @pytest.mark.parametrize(("mode", "detail"), [("pin", "no_pin"), ("match", "no_code")])
    def test_no_expected_code_is_an_error_never_approval(self, mode: str, detail: str) -> None:
        """No PIN set (or no match hash): error, nothing collected, never approved."""
        report, steps = drive(flow(mode), [P("")], started=Started(code_known=False))
        assert report == Report(Outcome.ERROR, detail)
        assert not any(isinstance(s, Collect) for s in steps)

    def test_pin_prompts(self) -> None:
        """The PIN greeting first; after a wrong PIN one collection whose single file says
        "not correct" and asks again, so that a PIN keyed while it plays counts (GET DATA
        plays one file); the same after an invalid key."""
        f = flow("pin")
        first = f.send(Started())
        assert first == Collect(("pin_greeting",), T, max_digits=20, secret=True)
        assert isinstance(f.send(P("1111")), CheckCode)
        assert f.send(CodeChecked(False)) == Collect(("pin_wrong_code",), T, max_digits=20,
                                                     secret=True)
        assert f.send(P("12")) == Collect(("pin_retry",), T, max_digits=20, secret=True)
        m = flow("match")
        m.send(Started())
        assert m.send(P("1")) == Collect(("match_retry",), T, max_digits=20, secret=True)

    def test_check_code_hides_the_digits(self) -> None:
        """A CheckCode's repr (what a log line would show) never holds the PIN."""
        f = flow("pin")
        f.send(Started())
        step = f.send(P(PIN))
        assert isinstance(step, CheckCode)
        assert PIN not in repr(step)
        assert PIN not in repr(P(PIN))

    def test_star_restarts_are_bounded(self) -> None:
        """'*' alone replays the prompt, not counted, at most max_attempts times."""
        report, steps = drive(flow("standard", attempts=2), [P("*")] * 10)
        assert report == Report(Outcome.NO_INPUT, "invalid_input")
        assert sum(isinstance(s, Collect) for s in steps) == 2 + 2

    @pytest.mark.parametrize("mode", ["pin", "match"])
    def test_secret_collects_have_one_prompt(self, mode: str) -> None:
        """Every Collect of a code is secret and has exactly one prompt (GET DATA plays one)."""
        _, steps = drive(flow(mode), [P("5"), P("1111"), S()])
        collects = [s for s in steps if isinstance(s, Collect)]
        assert collects
        assert all(c.secret and len(c.prompts) == 1 for c in collects)
    def test_hang_up_while_checking(self) -> None:
        """A hang-up reported while the code is being checked is hung_up."""
        f = flow("pin")
        f.send(Started())
        assert isinstance(f.send(P(PIN)), CheckCode)
        assert f.send(HungUp()) == Report(Outcome.HUNG_UP, None)

    @pytest.mark.parametrize("mode", ["standard", "pin", "match"])
    def test_hang_up_is_hung_up(self, mode: str) -> None:
        """A hang-up at the first prompt: hung_up, no goodbye."""
        report, steps = drive(flow(mode), [], hang_up_at=0)
        assert report == Report(Outcome.HUNG_UP, None)
        assert steps[-2:] == [report, Hangup()]

    @pytest.mark.parametrize("event", [P(""), CodeChecked(True), Started()], ids=repr)
    def test_input_after_the_outcome_changes_nothing(self, event: Event) -> None:
        """Once the outcome is reported, keys or verdicts are refused, never a second outcome."""
        f = flow("pin")
        f.send(Started())
        f.send(P("0"))
        assert f.finished
        with pytest.raises(ValueError, match="not expected"):
            f.send(event)

    def test_unknown_mode_is_refused(self) -> None:
        """A mode the flow does not know is a programming error."""
        with pytest.raises(ValueError, match="unknown mode"):
            make_flow("voice", input_timeout_ms=T, max_attempts=3)


# (mode, keys pressed before the greeting, inputs after it, outcome, detail)
EARLY = [
    ("standard", "#", [], Outcome.APPROVED, None),
    ("standard", "0#", [], Outcome.FRAUD_REPORTED, None),
    ("standard", "0", [P("")], Outcome.FRAUD_REPORTED, None),  # '0' early, '#' in the greeting
    ("standard", "0", [S(), S(), S()], Outcome.NO_INPUT, "invalid_input"),
    ("standard", "5#", [P("")], Outcome.APPROVED, None),  # a wrong first answer, then '#'
    ("standard", "5#", [S(), S()], Outcome.NO_INPUT, "invalid_input"),
    ("standard", "*", [P("")], Outcome.APPROVED, None),  # not a restart after the greeting
    ("standard", "5*", [P("")], Outcome.APPROVED, None),
    ("standard", "*#", [P("")], Outcome.APPROVED, None),  # a restart: the greeting, '#'
    ("standard", "##", [], Outcome.APPROVED, None),
    ("standard", "#0#", [], Outcome.APPROVED, None),  # after the outcome: nothing changes
    # Every answer keyed before the greeting counts, in order (issue: keys lost during AMD).
    ("standard", "5##", [], Outcome.APPROVED, None),  # wrong, then right
    ("standard", "5#0#", [], Outcome.FRAUD_REPORTED, None),  # wrong, then a fraud report
    ("standard", "5#0", [P("")], Outcome.FRAUD_REPORTED, None),  # '#' of 0# in the greeting
    ("standard", "5#5#5##", [], Outcome.NO_INPUT, "invalid_input"),  # out of attempts first
    ("pin", PIN + "#", [], Outcome.APPROVED, None),
    ("pin", PIN[:2], [P(PIN[2:])], Outcome.APPROVED, None),
    ("pin", "1111#", [P(PIN)], Outcome.APPROVED, None),
    ("match", MATCH + "#", [], Outcome.APPROVED, None),
    ("match", "17#", [P(MATCH)], Outcome.DENIED, "wrong_code"),
]


class TestEarlyKeys:
    @pytest.mark.parametrize(("mode", "early", "inputs", "outcome", "detail"), EARLY,
                             ids=[f"{m}-{e!r}-{i!r}" for m, e, i, _, _ in EARLY])
    def test_keys_before_the_greeting_count(
        self, mode: str, early: str, inputs: list[Digits], outcome: Outcome, detail: str | None
    ) -> None:
        """Keys pressed before the greeting count as if pressed during it."""
        report, _ = drive(flow(mode), inputs, started=Started(early_keys=early))
        assert (report.outcome, report.detail) == (outcome, detail)

    def test_pound_before_the_greeting_approves_without_it(self) -> None:
        """'#' before the greeting: approved at once, only the goodbye is played."""
        report, steps = drive(flow("standard"), [], started=Started(early_keys="#"))
        assert steps[0] == report
        assert not any(isinstance(s, Collect) for s in steps)

    @pytest.mark.parametrize("early", ["#", "0#", PIN + "#"])
    def test_machine_wins_over_early_keys(self, early: str) -> None:
        """A voicemail greeting may hold a tone: MACHINE ends the call whatever was keyed."""
        for mode in ("standard", "pin"):
            report, _ = drive(flow(mode), [], started=Started(machine=True, early_keys=early))
            assert report.outcome is Outcome.MACHINE_ANSWERED

    @pytest.mark.parametrize("early", ["#", "0#", "5#", "#" * 8])
    def test_silent_person_who_keys_is_asked_again(self, early: str) -> None:
        """MACHINE for initial silence, yet a key was pressed: a person on mute. The greeting
        plays and only a fresh answer counts: '#' then approves, silence never does, and
        a '0#' pressed while AMD listened reports nothing."""
        silent = Started(machine=True, silence=True, early_keys=early)
        report, steps = drive(flow("standard"), [P("")], started=silent)
        assert isinstance(steps[0], Collect)
        assert report.outcome is Outcome.APPROVED
        report, _ = drive(flow("standard", attempts=2), [], started=silent)
        assert report.outcome is Outcome.NO_INPUT

    def test_silence_without_a_key_is_still_a_machine(self) -> None:
        """Nobody spoke and nobody keyed: MACHINE stands (a dead line, an empty mailbox)."""
        report, steps = drive(flow("standard"), [], started=Started(machine=True, silence=True))
        assert (report.outcome, steps[0]) == (Outcome.MACHINE_ANSWERED, report)

    @pytest.mark.parametrize(("started", "early"), [
        (Started(early_keys="#"), True), (Started(early_keys="5#"), True),
        (Started(machine=True, silence=True, early_keys="#"), False),
        (Started(early_keys="0"), False), (Started(), False),
        (Started(machine=True, early_keys="#"), False),
    ], ids=repr)
    def test_answered_early_tells_the_driver_of_an_input(
        self, started: Started, early: bool
    ) -> None:
        """The driver records an input time only when the early keys were an answer."""
        f = flow("standard")
        f.send(started)
        assert f.answered_early is early

    def test_early_keys_are_not_in_repr(self) -> None:
        """They may be a PIN: never in a log line."""
        assert PIN not in repr(Started(early_keys=PIN))

keys = st.text(alphabet="0123456789*#ABCD", max_size=14)
attempt = st.one_of(
    st.builds(Digits, digits=keys, timed_out=st.booleans()),
    st.just(P("")), st.just(P("0")), st.just(P(PIN)), st.just(P(MATCH)),
)


class TestProperties:
    @settings(max_examples=400)
    @given(
        mode=st.sampled_from(["standard", "pin", "match"]),
        attempts=st.integers(min_value=1, max_value=5),
        inputs=st.lists(attempt, max_size=12),
        hang_up_at=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
        machine=st.booleans(),
        locked=st.booleans(),
    )
    def test_never_crashes_and_approves_only_on_the_exact_input(
        self, mode: str, attempts: int, inputs: list[Digits], hang_up_at: int | None,
        machine: bool, locked: bool,
    ) -> None:
        """Random keys, timeouts and hang-ups: the flow ends, with one report; approval only
        follows the exact expected input ('#' alone, or the code then '#')."""
        f = flow(mode, attempts)
        report, steps = drive(
            f, inputs, started=Started(machine=machine, locked=locked), hang_up_at=hang_up_at
        )
        assert isinstance(steps[-1], Hangup)
        assert sum(isinstance(s, Report) for s in steps) == 1
        collects = sum(isinstance(s, Collect) for s in steps)
        assert collects <= 2 * attempts
        if report.outcome is Outcome.APPROVED:
            assert not machine
            assert not (locked and mode == "pin")
            fed = inputs[collects - 1] if collects - 1 < len(inputs) else S()
            assert not fed.timed_out
            assert fed.digits.rsplit("*", 1)[-1] == CODES[mode]
        if machine:
            assert report.outcome is Outcome.MACHINE_ANSWERED
        with pytest.raises(ValueError, match="not expected"):
            f.send(Done())

    @settings(max_examples=400)
    @given(
        mode=st.sampled_from(["standard", "pin", "match"]),
        early=keys,
        inputs=st.lists(attempt, max_size=8),
    )
    def test_early_keys_are_the_start_of_the_first_answer(
        self, mode: str, early: str, inputs: list[Digits]
    ) -> None:
        """Keys before the greeting give the outcome that keying them during it would: each
        '#' ends an answer, in order, and keys after the last '#' start the next one."""
        report, _ = drive(flow(mode), inputs, started=Started(early_keys=early))
        *answers, tail = early.split("#")
        start = tail.rsplit("*", 1)[-1]
        head = inputs[0] if inputs else S()
        same = [*(P(a) for a in answers), Digits(start + head.digits, head.timed_out),
                *inputs[1:]]
        expected, _ = drive(flow(mode), same)
        assert (report.outcome, report.detail) == (expected.outcome, expected.detail)


class TestKeyed:
    """Keyed: every key heard since the last collection, as StoreDTMF kept it (keys that
    came between two AGI commands included)."""

    def drive_keyed(self, mode: str, chunks: list[str]) -> Report:
        f = flow(mode)
        step = f.send(Started())
        report: Report | None = None
        while not isinstance(step, Hangup):
            event: Event
            if isinstance(step, Collect):
                chunk = chunks.pop(0) if chunks else ""
                event = Keyed(chunk, timed_out="#" not in chunk)
            elif isinstance(step, CheckCode):
                event = CodeChecked(step.digits == CODES[mode])
            else:
                report = step if isinstance(step, Report) else report
                event = Done()
            step = f.send(event)
        assert report is not None
        return report

    @pytest.mark.parametrize(("chunks", "outcome"), [
        (["5##"], Outcome.APPROVED),  # the second '#' came before the next Read started
        (["5#0#"], Outcome.FRAUD_REPORTED),
        (["5#", "#"], Outcome.APPROVED),
        (["5#0", "#"], Outcome.FRAUD_REPORTED),  # '0' in the gap, '#' in the retry prompt
    ])
    def test_answers_heard_between_commands_count(
        self, chunks: list[str], outcome: Outcome
    ) -> None:
        assert self.drive_keyed("standard", chunks).outcome is outcome

    @settings(max_examples=300)
    @given(mode=st.sampled_from(["standard", "pin", "match"]),
           answers=st.lists(st.text(alphabet="0123456789*", max_size=6), max_size=5),
           cuts=st.lists(st.booleans(), max_size=5))
    def test_how_the_keys_are_split_does_not_matter(
        self, mode: str, answers: list[str], cuts: list[bool]
    ) -> None:
        """The same answers heard in one chunk or in several give the same outcome as the
        answers keyed one per prompt."""
        chunks: list[str] = []
        for n, answer in enumerate(answers):
            if not chunks or (n < len(cuts) and cuts[n]):
                chunks.append("")
            chunks[-1] += answer + "#"
        expected, _ = drive(flow(mode), [P(a) for a in answers])
        assert self.drive_keyed(mode, chunks).outcome is expected.outcome
