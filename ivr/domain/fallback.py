"""The directory fallback: a request that names a user but gives no phone is completed from
the user directory before it is validated and admitted (docs/contract.md).

Used by the originator for the Redis contract, and by any front that knows only a user name.
Only an absent ``phone`` is filled in: a phone that is present but malformed stays
``invalid_phone``. The directory's ``mode`` and ``lang`` apply when the request gives none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..exceptions import RequestError
from .directory import DirectoryEntry, UserDirectory
from .users import UserNameError, normalise_user


async def resolve(
    fields: Mapping[str, Any], directory: UserDirectory | None
) -> dict[str, Any]:
    """``fields`` with the directory's phone (and mode, lang) when ``phone`` is absent.

    Raise RequestError ``unknown_user`` when the directory does not know the user (or there
    is no directory). Fields that are not the user's to fill (a bad ``user``) are left for
    the request parser to refuse with its own detail.
    """
    data = dict(fields)
    if "phone" in data:
        return data
    try:
        user = normalise_user(data.get("user"))
    except UserNameError:
        return data  # the parser refuses it: invalid_user
    entry = await directory.lookup(user) if directory is not None else None
    if entry is None:
        raise RequestError(
            "unknown_user",
            "the request has no phone and the user directory does not know this user",
        )
    return complete(data, entry)


def complete(fields: Mapping[str, Any], entry: DirectoryEntry) -> dict[str, Any]:
    """``fields`` with ``entry``'s phone, and its mode and lang where ``fields`` has none."""
    data = dict(fields)
    data["phone"] = entry.phone
    if data.get("mode") is None:
        data["mode"] = entry.mode
    if not data.get("lang"):
        data["lang"] = entry.lang
    return data


class ChainedDirectory:
    """Several sources, asked in order: the first that knows the user answers (callmfa
    serve: the local ``callmfa user`` entries, then LDAP)."""

    def __init__(self, *sources: UserDirectory) -> None:
        self.sources = sources

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The entry of the first source that knows ``user``, or None."""
        for source in self.sources:
            if (entry := await source.lookup(user)) is not None:
                return entry
        return None
