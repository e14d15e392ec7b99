"""Tests for ivr.domain.numbers: what a number is, and the whole number policy."""

from __future__ import annotations

import os
import subprocess
import sys

import phonenumbers
import pytest

from ivr.domain.numbers import DialPolicy, describe, prefix_regions
from ivr.domain.policy import NumberPolicy, parse_number_types, parse_regions
from ivr.exceptions import SettingsError
from ivr.ops.doctor import Status, check_number_policy
from ivr.security import number_policy
from ivr.settings import Settings

DEFAULT = number_policy(Settings())


def _policy(*, allowed: str = "+", denied: tuple[str, ...] = (), regions: str = "*",
            types: str = "") -> DialPolicy:
    prefixes = NumberPolicy(allowed=tuple(allowed.split(",")), denied=denied)
    return DialPolicy(prefixes, allowed_regions=regions, denied_types=types)


class TestDescribe:
    @pytest.mark.parametrize(("number", "region", "kind"), [
        ("+12015550100", "US", "fixed_line_or_mobile"),
        ("+16135550100", "CA", "fixed_line_or_mobile"),
        ("+16585551234", "JM", "fixed_line"),
        ("+18765550100", "JM", "mobile"),
        ("+19005550100", "US", "premium_rate"),
        ("+18005550100", "US", "toll_free"),
        ("+33123456789", "FR", "fixed_line"),
        ("+8816123456789", "001", "mobile"),
    ])
    def test_valid_numbers(self, number: str, region: str, kind: str) -> None:
        """Region and type as libphonenumber's metadata has them."""
        facts = describe(number)
        assert (facts.valid, facts.region, facts.kind, facts.e164) == (True, region, kind,
                                                                        number)

    @pytest.mark.parametrize("number", [
        "+1011882123456",  # "011" is the NANP international prefix, not an area code
        "+15550100",  # 7 digits after +1: the old test numbers
        "+12015550100999",  # too long
        "+1555",
        "+0123456789",  # no country code starts with 0
        "+99912345678",  # no such country code
        "+447700900123",  # Ofcom's drama range is not allocated as valid
        "+88212345678",
    ])
    def test_invalid_numbers(self, number: str) -> None:
        """Numbers no region's plan has: not valid, type unknown."""
        facts = describe(number)
        assert not facts.valid
        assert facts.kind == "unknown"

    @pytest.mark.parametrize("number", [
        "+12015550100", "+16585551234", "+1011882123456", "+15550100", "+442079460000",
        "+447011112222", "+8816123456789", "+88212345678", "+4930123456", "+81312345678",
        "+4412345", "+35312345678", "+33884012345",
    ])
    def test_valid_is_libphonenumbers_is_valid_number(self, number: str) -> None:
        """describe() asks for the type only; its verdict is is_valid_number's."""
        assert describe(number).valid == phonenumbers.is_valid_number(
            phonenumbers.parse(number, None))


class TestNumberTypes:
    @pytest.mark.parametrize(("number", "reason"), [
        ("+19005550100", "type_premium_rate"),  # US 900
        ("+33884012345", "type_shared_cost"),  # French 0884
        ("+445512345678", "type_uan"),  # UK 055, corporate numbering
        ("+445612345678", "type_voip"),  # UK 056
    ])
    def test_each_denied_type_is_refused(self, number: str, reason: str) -> None:
        """PREMIUM_RATE, SHARED_COST, UAN and VOIP are refused by default, each by name."""
        policy = _policy(types=Settings().denied_number_types)
        assert policy.refusal(number) == reason

    @pytest.mark.parametrize("number", [
        "+12015550100",  # fixed line or mobile
        "+18005550100",  # toll free
        "+15005550100",  # personal number
        "+442079460000",  # UK fixed line
        "+447400123456",  # UK mobile
    ])
    def test_other_types_are_allowed_by_default(self, number: str) -> None:
        """The default denies only the four; fixed lines, mobiles, toll-free... pass."""
        assert _policy(types=Settings().denied_number_types).refusal(number) is None

    def test_types_are_configurable(self) -> None:
        """Denying TOLL_FREE refuses +1800; denying nothing lets premium through the types."""
        assert _policy(types="toll_free").refusal("+18005550100") == "type_toll_free"
        assert _policy(types="").refusal("+19005550100") is None


class TestRegions:
    def test_the_jamaican_overlay_is_refused_under_plus_one(self) -> None:
        """+1 658 is Jamaica (valid, fixed line), missing from the deny-list: not US/CA."""
        assert DEFAULT.refusal("+16585551234") == "region_not_allowed"

    def test_not_a_nanp_number(self) -> None:
        """+1 011... matches the +1 allow-list but is no number at all."""
        assert DEFAULT.refusal("+1011882123456") == "invalid_number"

    @pytest.mark.parametrize("number", ["+12015550100", "+16135550100", "+14165550100"])
    def test_us_and_canada_pass_by_default(self, number: str) -> None:
        """The defaults +1 and US,CA dial both countries."""
        assert DEFAULT.refusal(number) is None

    def test_any_region(self) -> None:
        """'*' leaves the choice to the prefixes."""
        assert _policy(allowed="+1", regions="*").refusal("+16585551234") is None

    def test_non_geographic_region(self) -> None:
        """001 allows the non-geographic codes (+881, ...) when the prefixes do."""
        policy = _policy(allowed="+881", regions="001")
        assert policy.refusal("+8816123456789") is None


class TestTrunkPrefix:
    @pytest.mark.parametrize(("typed", "e164"), [
        ("+4407012345678", "+447012345678"), ("+112015550100", "+12015550100"),
        ("+330123456789", "+33123456789"), ("+49030123456", "+4930123456")])
    def test_a_trunk_prefix_after_the_country_code_is_not_e164(
            self, typed: str, e164: str) -> None:
        """libphonenumber drops it before judging the number, so the deny-list (+4470) and
        the per-number throttles saw another number than the one judged and dialled (found
        in review): refused, whatever the lists say."""
        policy = _policy(allowed="+", regions="*")
        assert describe(typed).e164 == e164
        assert policy.refusal(typed) == "not_e164"
        assert DEFAULT.refusal("+4407012345678") == "not_e164"


class TestPolicyCombination:
    def test_invalid_first(self) -> None:
        """A number that is not a number is called that, whatever the lists say."""
        assert DEFAULT.refusal("+15550100") == "invalid_number"

    def test_outside_the_prefixes_before_the_region(self) -> None:
        """A valid French number under +1: the prefixes refuse it first."""
        assert DEFAULT.refusal("+33123456789") == "outside_allowed_prefixes"

    def test_denied_prefix_before_the_type(self) -> None:
        """+1900 is on the shipped deny-list and premium rate: the prefix is named."""
        assert DEFAULT.refusal("+19005550100") == "denied_prefix"

    def test_opening_a_denied_prefix_leaves_the_type_check(self) -> None:
        """Allowing +1900 exactly opens the prefix; the type still refuses it."""
        policy = number_policy(Settings(allowed_prefixes="+1,+1900"))
        assert policy.refusal("+19005550100") == "type_premium_rate"

    def test_the_uk_configured_together(self) -> None:
        """+44 with GB: UK numbers pass, US ones are outside the prefixes."""
        policy = number_policy(Settings(allowed_prefixes="+44", allowed_regions="GB"))
        assert policy.refusal("+442079460000") is None
        assert policy.refusal("+12015550100") == "outside_allowed_prefixes"

    def test_assess_gives_the_facts_and_the_reason(self) -> None:
        """What `callmfa check --number` prints."""
        verdict = DEFAULT.assess("+16585551234")
        assert (verdict.facts.region, verdict.facts.kind, verdict.reason) == (
            "JM", "fixed_line", "region_not_allowed")


class TestSettings:
    def test_defaults(self) -> None:
        """US,CA for +1; the four risky types."""
        s = Settings()
        assert s.allowed_regions == "US,CA"
        assert parse_number_types(s.denied_number_types) == (
            "PREMIUM_RATE", "SHARED_COST", "UAN", "VOIP")

    def test_lists_are_case_and_space_tolerant(self) -> None:
        """'us, ca' is US,CA; 'voip pager' two types."""
        assert parse_regions("us, ca\nGB") == ("US", "CA", "GB")
        assert parse_number_types("voip pager,VOIP") == ("VOIP", "PAGER")
        assert parse_number_types("") == ()

    @pytest.mark.parametrize(("name", "value"), [
        ("CALLMFA_ALLOWED_REGIONS", ""),
        ("CALLMFA_ALLOWED_REGIONS", "USA"),
        ("CALLMFA_ALLOWED_REGIONS", "U1"),
        ("CALLMFA_DENIED_NUMBER_TYPES", "PREMIUM"),
        ("CALLMFA_DENIED_NUMBER_TYPES", "UNKNOWN"),
    ])
    def test_malformed_values_are_refused_at_load(self, name: str, value: str) -> None:
        """A malformed list stops the start, naming the variable."""
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})

    def test_unknown_region_is_refused_at_policy_build(self) -> None:
        """UK is shaped like a code but is none (the United Kingdom is GB)."""
        with pytest.raises(SettingsError, match=r"CALLMFA_ALLOWED_REGIONS: UK: not a region"):
            number_policy(Settings(allowed_regions="UK"))

    def test_prefix_that_reaches_no_allowed_region_stops_the_start(self) -> None:
        """+44 with the default US,CA would refuse every call: a start-up error instead."""
        with pytest.raises(SettingsError, match=r"\+44 reaches none of the allowed regions"):
            number_policy(Settings(allowed_prefixes="+44"))

    @pytest.mark.parametrize(("prefix", "region"), [
        ("+1", "US"), ("+1876", "JM"), ("+44", "GB"), ("+4420", "GB"), ("+", "FR"),
        ("+8", "001"), ("+33", "FR"),
    ])
    def test_prefix_regions(self, prefix: str, region: str) -> None:
        """By country code: shorter prefixes reach every code they begin."""
        assert region in prefix_regions(prefix)

    def test_prefix_regions_is_exact_on_the_country_code(self) -> None:
        """+33 reaches France, not the United States."""
        assert "US" not in prefix_regions("+33")


def test_the_classic_agi_script_does_not_load_phonenumbers() -> None:
    """The classic script loads the settings on every call and never screens numbers:
    libphonenumber (about 35 ms to import) stays out of it."""
    code = "import sys, ivr.classic; print('phonenumbers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def _check_number(number: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLMFA_")}
    return subprocess.run([sys.executable, "-m", "ivr", "check", "--number", number],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


class TestCheckNumber:
    """`callmfa check --number N`: offline, exit 0 if callmfa would dial N, 1 if not."""

    @pytest.mark.parametrize(("number", "code", "expected"), [
        ("+12015550100", 0, ["region  US", "type    FIXED_LINE_OR_MOBILE", "dial    yes"]),
        ("+16585551234", 1, ["valid   yes", "region  JM", "reason region_not_allowed",
                             "CALLMFA_ALLOWED_REGIONS=US,CA"]),
        ("+1011882123456", 1, ["valid   no", "reason invalid_number"]),
        ("+19005550100", 1, ["type    PREMIUM_RATE", "denied prefix +1900"]),
    ])
    def test_what_callmfa_makes_of_a_number(
        self, number: str, code: int, expected: list[str]
    ) -> None:
        """E.164, valid, region, type, and whether it would dial it and why not."""
        out = _check_number(number)
        assert out.returncode == code, out.stdout + out.stderr
        for text in expected:
            assert text in out.stdout

    def test_a_denied_type(self) -> None:
        """With +1900 allowed exactly, the premium-rate type still refuses it, named."""
        out = _check_number("+19005550100", CALLMFA_ALLOWED_PREFIXES="+1,+1900")
        assert out.returncode == 1
        assert "type PREMIUM_RATE is in CALLMFA_DENIED_NUMBER_TYPES" in out.stdout

    def test_not_e164_is_a_usage_error(self) -> None:
        """What the request parser refuses: exit 2 with its message."""
        out = _check_number("555-0100")
        assert out.returncode == 2
        assert "E.164" in out.stderr

    def test_the_policy_line_of_callmfa_check(self) -> None:
        """`callmfa check` says FAIL when serve would refuse to start over the policy."""
        assert check_number_policy(Settings()).status is Status.OK
        bad = check_number_policy(Settings(allowed_prefixes="+44"))
        assert bad.status is Status.FAIL
        assert "+44 reaches none" in bad.message
