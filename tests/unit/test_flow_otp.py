"""Tests for the otp mode of ivr.domain.flow: '#' first, the code read twice, '*' again."""

from __future__ import annotations

import json

import pytest

from ivr.domain.flow import (
    Collect,
    Digits,
    Done,
    Hangup,
    HungUp,
    Play,
    Recite,
    Recited,
    Report,
    Started,
    Step,
    VerificationFlow,
    digit_prompts,
    make_flow,
)
from ivr.domain.outcome import Outcome
from ivr.domain.request import otp_of, parse_request
from ivr.exceptions import RequestError
from ivr.storage.store import deadletter_fields, redact_otp

CODE = "482917"
READING = ("otp_code_is", *digit_prompts(CODE), "otp_again", *digit_prompts(CODE))
RID = "0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11"


def flow(max_attempts: int = 3) -> VerificationFlow:
    return make_flow("otp", input_timeout_ms=6000, max_attempts=max_attempts)


def started(**kw: object) -> Started:
    return Started(code_known=True, otp=CODE, **kw)  # type: ignore[arg-type]


def played_all(step: Step) -> Recited:
    assert isinstance(step, Recite)
    return Recited("", len(step.prompts))


class TestOtpFlow:
    def test_pound_then_the_code_twice_is_delivered(self) -> None:
        """The greeting asks for '#'; only then are the digits read, twice, in order; the
        outcome is reported as the second reading ends, before the menu."""
        f = flow()
        greeting = f.send(started())
        assert isinstance(greeting, Collect)
        assert greeting.prompts == ("otp_greeting",)
        assert not greeting.secret
        reading = f.send(Digits("", timed_out=False))
        assert isinstance(reading, Recite)
        assert reading.prompts == READING
        assert reading.prompts[1:7] == ("digit_4", "digit_8", "digit_2", "digit_9", "digit_1",
                                        "digit_7")
        report = f.send(played_all(reading))
        assert report == Report(Outcome.DELIVERED, None)
        assert f.finished
        menu = f.send(Done())
        assert isinstance(menu, Recite)
        assert menu.prompts == ("otp_menu",)
        assert menu.wait_ms == 6000
        assert f.send(Recited("", 1)) == Play(("otp_goodbye",))
        assert f.send(Done()) == Hangup()

    def test_star_in_the_menu_reads_it_again(self) -> None:
        f = flow()
        f.send(started())
        reading = f.send(Digits("", timed_out=False))
        assert f.send(played_all(reading)).outcome is Outcome.DELIVERED  # type: ignore[union-attr]
        menu = f.send(Done())
        again = f.send(Recited("*", 0))
        assert isinstance(again, Recite)
        assert again.prompts == (*READING, "otp_menu")
        assert isinstance(menu, Recite)
        assert f.send(Recited("#", len(again.prompts))) == Play(("otp_goodbye",))

    def test_star_during_the_reading_starts_it_again(self) -> None:
        """'*' cuts the reading short: it starts again from "Your code is"; not delivered
        until a reading ends."""
        f = flow()
        f.send(started())
        reading = f.send(Digits("", timed_out=False))
        again = f.send(Recited("*", 3))
        assert isinstance(again, Recite)
        assert again.prompts == READING
        assert not f.finished
        assert f.send(played_all(again)) == Report(Outcome.DELIVERED, None)
        assert isinstance(reading, Recite)

    def test_repeats_are_limited(self) -> None:
        """After max_attempts repeats '*' no longer cuts the reading, and the menu goes on to
        the goodbye."""
        f = flow(max_attempts=2)
        f.send(started())
        step = f.send(Digits("", timed_out=False))
        step = f.send(Recited("*", 2))
        step = f.send(Recited("*", 2))
        assert isinstance(step, Recite)
        assert not step.interruptible
        assert f.send(played_all(step)).outcome is Outcome.DELIVERED  # type: ignore[union-attr]
        menu = f.send(Done())
        assert isinstance(menu, Recite)
        assert not menu.interruptible
        assert f.send(Recited("*", 1)) == Play(("otp_goodbye",))

    def test_hang_up_during_the_reading_is_hung_up(self) -> None:
        f = flow()
        f.send(started())
        f.send(Digits("", timed_out=False))
        assert f.send(HungUp()) == Report(Outcome.HUNG_UP, None)

    def test_hang_up_in_the_menu_stays_delivered(self) -> None:
        f = flow()
        f.send(started())
        f.send(played_all(f.send(Digits("", timed_out=False))))
        f.send(Done())
        assert f.send(HungUp()) == Hangup()

    def test_machine_gets_no_digit(self) -> None:
        """A machine greeting: machine_answered, nothing read, not even the greeting."""
        f = flow()
        assert f.send(started(machine=True)) == Report(Outcome.MACHINE_ANSWERED, None)
        assert f.send(Done()) == Hangup()

    @pytest.mark.parametrize(("answers", "outcome"), [
        ([Digits("", timed_out=True)] * 3, Outcome.NO_INPUT),
        ([Digits("5", timed_out=False)] * 3, Outcome.NO_INPUT),
        ([Digits("0", timed_out=False)], Outcome.FRAUD_REPORTED),
    ])
    def test_no_pound_reads_nothing(self, answers: list[Digits], outcome: Outcome) -> None:
        """Silence, wrong keys or 0#: the code is never read."""
        f = flow()
        step: Step = f.send(started())
        for answer in answers:
            assert isinstance(step, Collect)
            assert not any(p.startswith("digit_") for p in step.prompts)
            step = f.send(answer)
        assert isinstance(step, Report)
        assert step.outcome is outcome

    def test_pound_before_the_greeting_reads_at_once(self) -> None:
        f = flow()
        step = f.send(started(early_keys="#"))
        assert isinstance(step, Recite)
        assert step.prompts == READING
        assert f.answered_early

    def test_no_code_is_an_error(self) -> None:
        f = flow()
        assert f.send(Started(code_known=False)) == Report(Outcome.ERROR, "no_code")

    def test_the_code_is_in_no_repr(self) -> None:
        f = flow()
        step = f.send(started())
        step = f.send(Digits("", timed_out=False))
        assert CODE not in repr(step) + repr(f) + repr(started())
        assert "digit_" not in repr(step)


def request(**fields: object) -> str:
    return json.dumps({"id": RID, "user": "alice", "phone": "+12015550100", **fields})


class TestOtpRequest:
    @pytest.mark.parametrize("code", ["1234", "0000000000", CODE])
    def test_valid(self, code: str) -> None:
        req = parse_request(request(mode="otp", otp=code), requested_at=0, default_ttl_s=60)
        assert (req.mode, req.otp) == ("otp", code)
        assert code not in repr(req)

    @pytest.mark.parametrize("fields", [
        {"mode": "otp"}, {"mode": "otp", "otp": "123"}, {"mode": "otp", "otp": "12345678901"},
        {"mode": "otp", "otp": 482917}, {"mode": "otp", "otp": "48 29"},
        {"mode": "otp", "otp": "\uff14\uff18\uff12\uff19"}, {"otp": CODE},
        {"mode": "pin", "otp": CODE},
    ])
    def test_invalid_is_rejected_without_the_code(self, fields: dict[str, object]) -> None:
        with pytest.raises(RequestError) as e:
            parse_request(request(**fields), requested_at=0, default_ttl_s=60)
        assert e.value.detail == "invalid_otp"
        assert str(fields.get("otp")) not in e.value.message

    def test_otp_of_reads_only_its_own_request(self) -> None:
        raw = request(mode="otp", otp=CODE).encode()
        assert otp_of(raw, RID) == CODE
        assert otp_of(raw, "1c5c7f0e-77aa-4a0e-a1e4-0c1f7f6c2b99") == ""
        assert otp_of(None, RID) == ""
        assert otp_of(b"{", RID) == ""

    @pytest.mark.parametrize("raw", [
        b'{"otp": "482917", "id": 3}', b'{"otp":482917,"id":null}', b'{"otp" : "48\\"2917"',
    ])
    def test_dead_letter_keeps_no_code(self, raw: bytes) -> None:
        entry = deadletter_fields("1-0", raw, "invalid_id")
        assert b"2917" not in entry["request"]
        assert b'"<redacted>"' in redact_otp(raw)
