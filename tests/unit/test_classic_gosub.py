"""The classic driver's AGI GOSUB over pyst2, which does not know GOSUB's '100 Trying'."""

from __future__ import annotations

import io

import pytest
from asterisk.agi import AGI

from ivr.classic import ClassicDriver
from ivr.exceptions import AgiError, AgiHangup
from ivr.settings import Settings


def driver(replies: str) -> tuple[ClassicDriver, io.StringIO]:
    out = io.StringIO()
    agi = AGI(io.StringIO("agi_request: callmfa-verify.agi\n\n" + replies), out, io.StringIO())
    return ClassicDriver(agi, store=None, settings=Settings()), out


class TestGosub:
    def test_trying_then_complete(self) -> None:
        """'100 result=0 Trying...' is skipped; the subroutine's 200 ends the command."""
        d, out = driver("100 result=0 Trying...\n200 result=0 Gosub complete\n"
                        "200 result=1 (after)\n")

        d._gosub("callmfa-collect", "s", "1", "0,callmfa/greeting,4,6")

        assert out.getvalue().endswith("GOSUB callmfa-collect s 1 0,callmfa/greeting,4,6\n")
        assert d._command("get_variable", "X") == "after"  # nothing left unread

    def test_a_hang_up_in_the_subroutine(self) -> None:
        d, _ = driver("100 result=0 Trying...\n200 result=-1 Gosub complete\n")

        with pytest.raises(AgiHangup):
            d._gosub("callmfa-collect", "s", "1", "0,x,4,6")

    def test_another_answer_is_an_error(self) -> None:
        d, _ = driver("510 Invalid or unknown command\n")

        with pytest.raises(AgiError):
            d._gosub("callmfa-collect", "s", "1", "0,x,4,6")
