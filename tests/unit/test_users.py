"""Tests for ivr.domain.users: one canonical form per user name."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ivr
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.domain.users import MAX_USER_CHARS, UserNameError, normalise_user

RID = "0b6d1e2a-1234-4abc-8def-0123456789ab"


def _accepted(name: str) -> str | None:
    try:
        return normalise_user(name)
    except UserNameError:
        return None


class TestSameUser:
    @pytest.mark.parametrize("name", ["alice", "Alice", "ALICE", "\uff21\uff4c\uff49\uff43\uff45"])
    def test_case_and_width_do_not_make_another_user(self, name: str) -> None:
        """``Alice``, ``alice`` and fullwidth ``Alice (U+FF21...)`` are one user."""
        assert normalise_user(name) == "alice"

    def test_composed_and_decomposed_forms_are_one_user(self) -> None:
        """An accent typed as one character or as a letter and a combining mark: one user."""
        assert normalise_user("Ren\u00e9") == normalise_user("Rene\u0301") == "ren\u00e9"

    def test_folding_goes_beyond_lower_case(self) -> None:
        """casefold, not lower: ß is ss, a ligature is its letters."""
        assert normalise_user("Stra\u00dfe") == normalise_user("STRASSE") == "strasse"
        assert normalise_user("\ufb01nn") == "finn"

    def test_a_single_inner_space_is_kept(self) -> None:
        """Decision: the ASCII space is the one separator allowed, alone and inside a name."""
        assert normalise_user("Jane Doe") == "jane doe"

    def test_public_for_sign_in_services(self) -> None:
        """A sign-in service compares normalised forms with ``ivr.normalise_user``."""
        assert ivr.normalise_user is normalise_user
        assert ivr.UserNameError is UserNameError

    @given(st.text(max_size=40))
    def test_idempotent(self, name: str) -> None:
        """A normalised name is its own normal form, and is accepted again."""
        once = _accepted(name)
        if once is not None:
            assert normalise_user(once) == once

    @given(st.text(alphabet=st.characters(categories=("Lu", "Ll", "Lt", "Nd")), min_size=1,
                   max_size=40))
    def test_case_folded_spelling_is_the_same_user(self, name: str) -> None:
        """A name and its case-folded spelling are one user, in every script."""
        assert _accepted(name.casefold()) == _accepted(name)

    @given(st.text(alphabet=st.characters(max_codepoint=127, categories=("Lu", "Ll", "Nd")),
                   min_size=1, max_size=40))
    def test_ascii_case_never_matters(self, name: str) -> None:
        """Upper and lower case spellings of an ASCII name are one user."""
        assert normalise_user(name.upper()) == normalise_user(name.lower()) == name.lower()

    @given(st.text(min_size=1, max_size=40))
    def test_normal_form_holds_no_refused_character(self, name: str) -> None:
        """What is accepted holds no separator but the space, no control or format character."""
        once = _accepted(name)
        if once is not None:
            assert 0 < len(once) <= MAX_USER_CHARS
            for c in once:
                category = unicodedata.category(c)
                assert category[0] != "C"
                assert category[0] != "Z" or c == " "


class TestRefused:
    @pytest.mark.parametrize("name", [
        "ali\u2028ce",  # LINE SEPARATOR (Zl)
        "ali\u2029ce",  # PARAGRAPH SEPARATOR (Zp)
        "ali\u00a0ce",  # NO-BREAK SPACE (Zs): NFKC would make it a space
        "ali\u3000ce",  # IDEOGRAPHIC SPACE (Zs)
        "ali\u200bce",  # ZERO WIDTH SPACE (Cf)
        "ali\u200dce",  # ZERO WIDTH JOINER (Cf)
        "\u202ealice",  # RIGHT-TO-LEFT OVERRIDE (Cf)
        "ali\nce", "ali\tce", "alice\x00", "\x1b[31malice",
        "", " alice", "alice ", "jane  doe",
        "a" * (MAX_USER_CHARS + 1),
        "\ufdfa" * 8,  # short, but 144 characters once normalised
    ])
    def test_refused_with_a_reason(self, name: str) -> None:
        """Separators other than the space, controls, format characters, stray spaces and
        over-long names are refused, and the message says why."""
        with pytest.raises(UserNameError) as ei:
            normalise_user(name)
        assert str(ei.value).startswith("user must")

    @pytest.mark.parametrize("c", [
        "\u034f", "\u180b", "\u180c", "\u180d", "\u1806", "\ufe00", "\ufe0f", "\ufffc",
        "\U000e0100",
    ])
    def test_what_ldap_maps_to_nothing_is_refused(self, c: str) -> None:
        """RFC 4518 (LDAP's string preparation) maps these to nothing, so slapd's
        caseIgnoreMatch finds alice for 'ali<c>ce': a user of its own to callmfa (its own
        blocks and throttles) with alice's phone, past her fraud block (found in review)."""
        with pytest.raises(UserNameError, match=f"U\\+{ord(c):04X}"):
            normalise_user(f"ali{c}ce")

    def test_the_refused_character_is_named(self) -> None:
        """The message names the code point, so the operator sees what was wrong."""
        with pytest.raises(UserNameError, match="U\\+2028"):
            normalise_user("alice\u2028")

    @pytest.mark.parametrize("name", [None, 42, b"alice", ["alice"]])
    def test_not_a_string(self, name: object) -> None:
        """Only strings are user names."""
        with pytest.raises(UserNameError):
            normalise_user(name)


class TestOutcomeBinding:
    def _record(self, user: str | None, outcome: Outcome = Outcome.APPROVED) -> OutcomeRecord:
        return OutcomeRecord(id=RID, user=user, outcome=outcome, requested_at=1.0)

    @pytest.mark.parametrize("asked", ["alice", "Alice", "\uff21\uff4c\uff49\uff43\uff45"])
    def test_outcome_for_the_normalised_user_answers_any_spelling(self, asked: str) -> None:
        """The client asked for Alice; callmfa answers for alice: that is the same user."""
        assert self._record("alice").mismatch(RID, user=asked) is None

    @pytest.mark.parametrize("outcome_user", ["bob", None, "alice\u2028"])
    def test_another_user_is_still_refused(self, outcome_user: str | None) -> None:
        """Normalising never makes another user (or no user) match."""
        assert self._record(outcome_user).mismatch(RID, user="Alice") is not None

    def test_a_rejected_request_of_an_unusable_name_has_no_user(self) -> None:
        """A name callmfa refuses gets rejected/invalid_user with user null: it answers."""
        record = self._record(None, Outcome.REJECTED)
        assert record.mismatch(RID, user="alice\u2028") is None
