"""Which numbers callmfa may dial: an allow-list of prefixes and a deny-list (toll fraud).

Pure: the caller supplies the lists. The shipped deny-list (premium-rate and high-risk
ranges) is package data; :func:`shipped_denied_prefixes` reads it. The lists of regions and
number types are parsed here too, without libphonenumber (the settings check them at every
start, the classic AGI script included); :mod:`ivr.domain.numbers` applies them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

_PREFIX = re.compile(r"\+[0-9]{0,15}\Z")
_REGION = re.compile(r"[A-Z]{2}\Z|001\Z|\*\Z")
DENY_LIST = "denied_prefixes.txt"
ANY_REGION = "*"
# libphonenumber's PhoneNumberType names (UNKNOWN aside: such a number is never valid).
NUMBER_TYPES = (
    "FIXED_LINE", "MOBILE", "FIXED_LINE_OR_MOBILE", "TOLL_FREE", "PREMIUM_RATE",
    "SHARED_COST", "VOIP", "PERSONAL_NUMBER", "PAGER", "UAN", "VOICEMAIL",
)


def parse_prefixes(text: str) -> tuple[str, ...]:
    """Prefixes from text: separated by commas, spaces or lines; ``#`` starts a comment.

    Raise ValueError naming the first entry that is not ``+`` followed by digits.
    """
    found: list[str] = []
    for line in text.splitlines():
        for item in re.split(r"[,\s]+", line.split("#", 1)[0]):
            if not item:
                continue
            if not _PREFIX.match(item):
                raise ValueError(f"{item!r} is not a prefix like +1 or +44")
            if item not in found:
                found.append(item)
    return tuple(found)


def _items(text: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", text) if item]


def parse_regions(text: str) -> tuple[str, ...]:
    """Region codes (``US,CA``; ``001`` non-geographic; ``*`` any), upper-cased.

    Raise ValueError naming the first entry that is not shaped like one, or when empty.
    """
    found: list[str] = []
    for item in _items(text.upper()):
        if not _REGION.match(item):
            raise ValueError(f"{item!r} is not a region code like US, GB or 001 (or *)")
        if item not in found:
            found.append(item)
    if not found:
        raise ValueError("empty: no number could be called (* allows every region)")
    return tuple(found)


def parse_number_types(text: str) -> tuple[str, ...]:
    """Number type names (``PREMIUM_RATE,VOIP``; any case), upper-cased; empty is none.

    Raise ValueError naming the first entry that is not one of :data:`NUMBER_TYPES`.
    """
    found: list[str] = []
    for item in _items(text.upper()):
        if item not in NUMBER_TYPES:
            raise ValueError(f"{item!r} is not a number type: {', '.join(NUMBER_TYPES)}")
        if item not in found:
            found.append(item)
    return tuple(found)


def shipped_denied_prefixes() -> tuple[str, ...]:
    """The deny-list shipped with callmfa (``ivr/domain/data/denied_prefixes.txt``)."""
    text = resources.files(__package__).joinpath("data", DENY_LIST).read_text("utf-8")
    return parse_prefixes(text)


@dataclass(frozen=True)
class NumberPolicy:
    """An E.164 number may be dialled when its longest matching prefix is an allowed one.

    A number that matches no allowed prefix is refused; one that matches a denied prefix
    longer than its longest allowed prefix is refused; an allowed prefix wins a tie, so an
    operator can open exactly one denied range by allowing it.
    """

    allowed: tuple[str, ...]
    denied: tuple[str, ...]

    def refusal(self, number: str) -> str | None:
        """None if ``number`` (``+`` and digits) may be dialled, else the reason word:
        ``outside_allowed_prefixes`` or ``denied_prefix``."""
        return self.decision(number)[0]

    def decision(self, number: str) -> tuple[str | None, str | None]:
        """The reason word (None: may be dialled) and the deciding prefix."""
        allow = _longest(number, self._allowed)
        if allow is None:
            return "outside_allowed_prefixes", None
        deny = _longest(number, self._denied)
        if deny is not None and len(deny) > len(allow):
            return "denied_prefix", deny
        return None, allow

    @functools.cached_property
    def _allowed(self) -> frozenset[str]:
        return frozenset(self.allowed)

    @functools.cached_property
    def _denied(self) -> frozenset[str]:
        return frozenset(self.denied)


def _longest(number: str, prefixes: frozenset[str]) -> str | None:
    """The longest of ``prefixes`` that ``number`` starts with."""
    for end in range(len(number), 0, -1):
        if number[:end] in prefixes:
            return number[:end]
    return None
