"""Which numbers callmfa may dial: an allow-list of prefixes and a deny-list (toll fraud).

Pure: the caller supplies the lists. The shipped deny-list (premium-rate and high-risk
ranges) is package data; :func:`shipped_denied_prefixes` reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_PREFIX = re.compile(r"\+[0-9]{0,15}\Z")
DENY_LIST = "denied_prefixes.txt"


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
        """None if ``number`` (``+`` and digits) may be dialled, else why not (for the log)."""
        allow = max((len(p) for p in self.allowed if number.startswith(p)), default=0)
        if allow == 0:
            return "outside the allowed prefixes"
        deny = max((p for p in self.denied if number.startswith(p)), key=len, default="")
        if len(deny) > allow:
            return f"denied prefix {deny}"
        return None
