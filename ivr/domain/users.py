"""User names: one canonical form, so that every per-user key names exactly one user.

``Alice``, ``alice`` and a fullwidth ``Alice (U+FF21...)`` are the same user: a fraud block, a
throttle, a bypass or a PIN set under one of them holds for all. :func:`normalise_user` is
applied to the request's ``user`` before any Redis key is built, and to every command that
takes a user; outcomes carry the normalised form (docs/contract.md).
"""

from __future__ import annotations

import unicodedata

MAX_USER_CHARS = 128
# A name is refused before any work if it is much longer than it could ever be once
# normalised (NFKC expands a character into at most 18).
_MAX_RAW_CHARS = 4 * MAX_USER_CHARS


class UserNameError(ValueError):
    """A user name that cannot be normalised; the message says why."""


# What LDAP's string preparation maps to nothing (RFC 4518, 2.2) and is not in C*: the
# Mongolian soft hyphen, the combining grapheme joiner, variation selectors and the object
# replacement character. 'ali<U+FE00>ce' would be a user of its own here, and alice in LDAP.
_MAPPED_TO_NOTHING = frozenset("\u1806\u034f\u180b\u180c\u180d\ufffc")


def _refused(c: str) -> bool:
    # Separators (Z*) other than the ASCII space, among them U+2028 and U+2029, and all of
    # C* (controls, format characters such as zero-width joiners, surrogates, unassigned).
    category = unicodedata.category(c)
    return (category[0] == "C" or (category[0] == "Z" and c != " ")
            or c in _MAPPED_TO_NOTHING or "\ufe00" <= c <= "\ufe0f"
            or "\U000e0100" <= c <= "\U000e01ef")


def normalise_user(name: object) -> str:
    """``name`` in its canonical form: NFKC, then case-folded (and NFKC again, which the
    folding may need); raise :class:`UserNameError` for a name that is refused.

    Refused: anything but a string; an empty name; one longer than ``MAX_USER_CHARS``
    before or after normalisation; Unicode separators other than the ASCII space (the
    no-break and ideographic spaces, U+2028, U+2029, ...), control and format characters
    (checked before and after normalisation); a space at either end or two in a row
    (``"alice "`` would otherwise be another user than ``"alice"``).
    """
    if not isinstance(name, str) or not name:
        raise UserNameError("user must be a non-empty string")
    if len(name) > _MAX_RAW_CHARS:
        raise UserNameError(f"user must be at most {MAX_USER_CHARS} characters")
    if name.isascii() and name.isprintable():
        # Printable ASCII has no separator but the space and no control character, and
        # NFKC leaves it as it is: its canonical form is its lower case.
        bad, folded = None, name.lower()
    elif (bad := next((c for c in name if _refused(c)), None)) is None:
        folded = unicodedata.normalize("NFKC", name)
        folded = unicodedata.normalize("NFKC", folded.casefold())
        bad = next((c for c in folded if _refused(c)), None)
    if bad is not None:
        raise UserNameError(
            f"user must not contain U+{ord(bad):04X} ({unicodedata.category(bad)}): "
            "separators other than the space, control and format characters, and what LDAP "
            "ignores (variation selectors, U+034F, U+1806, U+FFFC) are refused"
        )
    if len(folded) > MAX_USER_CHARS:
        raise UserNameError(f"user must be at most {MAX_USER_CHARS} characters once normalised")
    if folded != folded.strip(" ") or "  " in folded:
        raise UserNameError("user must not start or end with a space, nor hold two in a row")
    return folded
