"""The user directory's shape: who a user is reached at, when a sign-in system knows only the
user name (RADIUS, the HTTP API, Entra).

The sources (the Redis hashes of ``callmfa user``, an optional LDAP server) live in
:mod:`ivr.storage`; the fronts and the originator see only :class:`UserDirectory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One user as the directory knows them. ``user`` is normalised
    (:func:`~ivr.domain.users.normalise_user`); ``phone`` is E.164, optionally ``x`` and an
    extension, as a request's ``phone``."""

    user: str
    phone: str
    mode: str = "standard"
    lang: str = "en"
    source: str = "local"  # "local" (callmfa user) or "ldap"


class UserDirectory(Protocol):
    """Looks users up; ``None`` for a user it does not know."""

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The entry of the normalised ``user``, or ``None``."""
        ...


class PasswordChecker(Protocol):
    """Checks a user's first-factor password (RADIUS's ``CALLMFA_RADIUS_PASSWORD=ldap``)."""

    async def check_password(self, user: str, password: str) -> bool:
        """True only when ``password`` is ``user``'s; False for a wrong one or an unknown user."""
        ...
