"""Tests for ivr.domain.policy: which numbers may be dialled (toll fraud, IRSF)."""

from __future__ import annotations

import pytest

from ivr.domain.policy import NumberPolicy, parse_prefixes, shipped_denied_prefixes


class TestParsePrefixes:
    def test_separators_and_comments(self) -> None:
        """Commas, spaces and lines separate; '#' comments; duplicates collapse."""
        assert parse_prefixes("+1, +44\n+33 # France\n# all comment\n+44") == ("+1", "+44", "+33")

    @pytest.mark.parametrize("bad", ["1", "+1a", "+44;", "++1", "+1234567890123456"])
    def test_malformed_prefix_is_named(self, bad: str) -> None:
        """Anything but '+' and up to 15 digits is refused, naming the entry."""
        with pytest.raises(ValueError, match="is not a prefix"):
            parse_prefixes(f"+1,{bad}")

    def test_shipped_list_has_the_high_risk_ranges(self) -> None:
        """The shipped deny-list holds satellite, international-network and premium ranges."""
        denied = shipped_denied_prefixes()
        for prefix in ("+881", "+882", "+883", "+870", "+979", "+1900", "+1876", "+4490"):
            assert prefix in denied
        assert "+1" not in denied
        assert "+1555" not in denied


class TestNumberPolicy:
    policy = NumberPolicy(allowed=("+1",), denied=("+1900", "+1876", "+881"))

    def test_allowed_country(self) -> None:
        """A number in an allowed country is dialled."""
        assert self.policy.refusal("+12015550100") is None

    @pytest.mark.parametrize("number", ["+447700900123", "+8816123456"])
    def test_outside_the_allow_list(self, number: str) -> None:
        """Another country is refused even when it is not on the deny-list."""
        assert self.policy.refusal(number) == "outside_allowed_prefixes"

    @pytest.mark.parametrize("number", ["+19005550100", "+18765550100"])
    def test_deny_list_wins_over_a_shorter_allow(self, number: str) -> None:
        """A premium or high-risk range inside an allowed country is refused."""
        assert self.policy.refusal(number) == "denied_prefix"
        assert self.policy.decision(number) == ("denied_prefix", number[:5])

    def test_allowing_exactly_a_denied_range_opens_it(self) -> None:
        """The operator opens one denied range by allowing that prefix; the rest stays shut."""
        policy = NumberPolicy(allowed=("+1", "+1876"), denied=("+1876", "+1900"))
        assert policy.refusal("+18765550100") is None
        assert policy.refusal("+19005550100") is not None

    def test_a_longer_deny_inside_an_allowed_range(self) -> None:
        """Denying a sub-range of an allowed range refuses just that sub-range."""
        policy = NumberPolicy(allowed=("+4420",), denied=("+44207",))
        assert policy.refusal("+442071234567") is not None
        assert policy.refusal("+442081234567") is None
