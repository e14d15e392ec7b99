"""What a phone number is (libphonenumber's metadata) and whether callmfa may dial it.

Pure: :func:`describe` reads only the metadata shipped in the ``phonenumbers`` package.
:class:`DialPolicy` puts the number's structure (valid for its region, an allowed region,
not a denied type) under the prefix allow and deny lists of
:class:`ivr.domain.policy.NumberPolicy`. It is built once, at start-up, and then checks a
number in some tens of microseconds (docs/security.md).

The classic AGI script loads the settings on every call and never screens numbers, so the
settings module does not import this one (``phonenumbers`` costs about 35 ms to import).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers

from .policy import ANY_REGION, NumberPolicy, parse_number_types, parse_regions

NON_GEOGRAPHIC = phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY  # "001": +800, +881, +882, ...
FACTS_CACHE = 4096
_TYPE_NAMES = {
    value: name.lower() for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper()
}


@dataclass(frozen=True)
class NumberFacts:
    """What libphonenumber makes of an E.164 number.

    ``region`` is an ISO 3166 code (``US``), ``001`` for a non-geographic code, or None when
    no region's numbering plan has the number; ``kind`` is the lower-case type name
    (``fixed_line_or_mobile``, ``premium_rate``, ... ``unknown`` when not valid).
    """

    e164: str
    valid: bool
    region: str | None
    kind: str


def describe(number: str) -> NumberFacts:
    """The facts of ``number`` (``+`` and digits); an unparsable one is simply not valid."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return NumberFacts(number, False, None, "unknown")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(parsed)
    # number_type is UNKNOWN exactly when is_valid_number is False (both match the region's
    # patterns); asking for the type alone saves a third of the cost.
    kind = phonenumbers.number_type(parsed)
    valid = region is not None and kind != phonenumbers.PhoneNumberType.UNKNOWN
    return NumberFacts(e164, valid, region, _TYPE_NAMES[kind])


def prefix_regions(prefix: str) -> frozenset[str]:
    """The regions whose numbers can start with ``prefix`` (by country calling code).

    A prefix shorter than a country code (``+``, ``+8``) reaches every code it begins; a
    longer one (``+1876``) is judged by its country code alone, so this may be too wide,
    never too narrow.
    """
    digits = prefix.lstrip("+")
    found: set[str] = set()
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        text = str(code)
        if text.startswith(digits) or digits.startswith(text):
            found.update(regions)
    return frozenset(found)


@dataclass(frozen=True)
class Assessment:
    """The facts of a number and, when callmfa would not dial it, the reason word."""

    facts: NumberFacts
    reason: str | None


class DialPolicy:
    """Which numbers callmfa dials: structure first, then the prefix lists.

    A number is refused, with its reason word, when it is not valid for its region
    (``invalid_number``), not written as E.164 writes it (``not_e164``), outside the allowed
    prefixes (``outside_allowed_prefixes``), under a denied prefix (``denied_prefix``), of a
    denied type (``type_premium_rate``, ...), or of a region that is not allowed
    (``region_not_allowed``).
    """

    def __init__(
        self, prefixes: NumberPolicy, *, allowed_regions: str, denied_types: str
    ) -> None:
        """Raise ValueError when a setting names an unknown region or type, or when an
        allowed prefix can reach no allowed region (every call under it would be refused)."""
        regions = parse_regions(allowed_regions)
        known = set(phonenumbers.SUPPORTED_REGIONS) | {NON_GEOGRAPHIC, ANY_REGION}
        unknown = sorted(set(regions) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a region code (ISO 3166, e.g. GB for "
                             "the United Kingdom; 001 for non-geographic numbers)")
        self.prefixes = prefixes
        # Sign-ins come back to the same numbers: remember the facts of the recent ones.
        self._describe = functools.lru_cache(maxsize=FACTS_CACHE)(describe)
        self.allowed_regions = None if ANY_REGION in regions else frozenset(regions)
        self.denied_types = frozenset(t.lower() for t in parse_number_types(denied_types))
        if self.allowed_regions is not None:
            for prefix in prefixes.allowed:
                if not prefix_regions(prefix) & self.allowed_regions:
                    raise ValueError(
                        f"the allowed prefix {prefix} reaches none of the allowed regions "
                        f"({', '.join(sorted(self.allowed_regions))}): set the prefixes and "
                        "the regions together, e.g. +44 with GB")

    def assess(self, number: str) -> Assessment:
        """The facts of ``number`` (``+`` and digits) and why it would not be dialled."""
        facts = self._describe(number)
        return Assessment(facts, self._reason(number, facts))

    def refusal(self, number: str) -> str | None:
        """None if ``number`` may be dialled, else the reason word."""
        return self.assess(number).reason

    def _reason(self, number: str, facts: NumberFacts) -> str | None:
        if not facts.valid:
            return "invalid_number"
        if facts.e164 != number:
            # A trunk prefix after the country code (+44 0..., +1 1...), which libphonenumber
            # drops: the prefix lists, the throttles and the dial string would see another
            # number than the one judged valid.
            return "not_e164"
        by_prefix = self.prefixes.refusal(number)
        if by_prefix is not None:
            return by_prefix
        if facts.kind in self.denied_types:
            return f"type_{facts.kind}"
        if self.allowed_regions is not None and facts.region not in self.allowed_regions:
            return "region_not_allowed"
        return None


MAX_EXTENSION_DIGITS = 10  # as a request's phone (docs/contract.md)


class PhoneNumberError(ValueError):
    """A phone number that cannot be stored for a user; the message says why."""


def default_region(allowed_regions: str) -> str | None:
    """The region a number written without ``+`` is read in: the first of
    ``CALLMFA_ALLOWED_REGIONS``, or None when that is ``*`` or ``001`` (then ``+`` is needed)."""
    regions = parse_regions(allowed_regions)
    first = regions[0] if regions else ANY_REGION
    return None if first in (ANY_REGION, NON_GEOGRAPHIC) else first


def normalise_phone(text: str, region: str | None) -> str:
    """``text`` as a request's phone: E.164, and ``x`` and the extension if it has one.

    Directories hold forms such as ``+1 (201) 555-0100 ext. 12`` or ``(201) 555-0100``; a
    number without ``+`` is read as a number of ``region``. Raise PhoneNumberError for
    anything libphonenumber does not know as a valid number (callmfa would never dial it).
    """
    text = text.strip()
    if not text:
        raise PhoneNumberError("the phone is empty")
    if not text.startswith("+") and region is None:
        raise PhoneNumberError(f"{text!r}: write the number with + and its country code "
                               "(CALLMFA_ALLOWED_REGIONS names no default region)")
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException as e:
        why = str(e).split(") ", 1)[-1].rstrip(".")  # "(1) The string supplied did not ..."
        raise PhoneNumberError(f"{text!r} is not a phone number: {why}") from None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(parsed):
        raise PhoneNumberError(f"{text!r} ({e164}) is not a valid number for its region "
                               "(libphonenumber): callmfa would not dial it")
    ext = parsed.extension or ""
    if ext and not (ext.isascii() and ext.isdigit() and len(ext) <= MAX_EXTENSION_DIGITS):
        raise PhoneNumberError(f"{text!r}: an extension is 1 to {MAX_EXTENSION_DIGITS} digits")
    return f"{e164}x{ext}" if ext else e164
