"""The local user directory in Redis: ``callmfa:user:<user>``, one hash per user.

Fields: ``phone`` (E.164, optionally ``x`` and an extension), ``mode``, ``lang``,
``updated_at`` (ISO 8601) and ``updated_by`` (the administrator). ``callmfa serve`` only
reads them; ``callmfa user`` writes them, each change in a Lua script that also writes its
audit entry to ``callmfa:audit`` and publishes it on ``callmfa:security``: ``user_set``
(with the phone it replaced), ``user_deleted`` and ``users_imported`` (one entry for a
whole import, which is one script: all rows or none).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..domain.directory import DirectoryEntry, PasswordChecker, UserDirectory
from ..domain.fallback import ChainedDirectory
from ..domain.outcome import iso
from ..exceptions import SettingsError
from .keys import AUDIT, AUDIT_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..settings import Settings

USER_PREFIX = "callmfa:user:"
FIELDS = ("phone", "mode", "lang", "updated_at", "updated_by")


def user_key(user: str) -> str:
    """Where the normalised ``user``'s directory entry lives."""
    return USER_PREFIX + user


# KEYS: the user's hash, the audit stream. ARGV: phone, mode, lang, at, actor, then the
# audit fields; the audit entry gains what the user's phone was (was_phone, '' if new).
_SET = AUDIT_LUA + """
local was = redis.call('HGET', KEYS[1], 'phone') or ''
redis.call('HSET', KEYS[1], 'phone', ARGV[1], 'mode', ARGV[2], 'lang', ARGV[3],
           'updated_at', ARGV[4], 'updated_by', ARGV[5])
local fields = {unpack(ARGV, 6)}
table.insert(fields, 'was_phone')
table.insert(fields, was)
audit(KEYS[2], fields)
return was ~= '' and 1 or 0
"""

# KEYS: the user's hash, the audit stream. ARGV: the audit fields (with the deleted phone).
_DELETE = AUDIT_LUA + """
local was = redis.call('HGET', KEYS[1], 'phone')
if not was then return 0 end
redis.call('DEL', KEYS[1])
local fields = {unpack(ARGV)}
table.insert(fields, 'was_phone')
table.insert(fields, was)
audit(KEYS[2], fields)
return 1
"""

# KEYS: the audit stream, then one hash per row. ARGV: at, actor, the number of audit
# fields N, the N audit fields, then phone, mode, lang per row. All rows or none: a script
# runs whole. No unpack over the rows (Lua's stack is too small for a large import).
_IMPORT = AUDIT_LUA + """
local at, actor, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local replaced = 0
for i = 2, #KEYS do
  local base = 3 + n + (i - 2) * 3
  replaced = replaced + redis.call('EXISTS', KEYS[i])
  redis.call('HSET', KEYS[i], 'phone', ARGV[base + 1], 'mode', ARGV[base + 2],
             'lang', ARGV[base + 3], 'updated_at', at, 'updated_by', actor)
end
local fields = {}
for i = 4, 3 + n do table.insert(fields, ARGV[i]) end
for _, v in ipairs({'count', tostring(#KEYS - 1), 'replaced', tostring(replaced)}) do
  table.insert(fields, v)
end
audit(KEYS[1], fields)
return replaced
"""


@dataclass(frozen=True)
class StoredUser:
    """A directory entry with who changed it last, and when (``callmfa user show``)."""

    entry: DirectoryEntry
    updated_at: str
    updated_by: str


def _audit(event: str, user: str, actor: str, at: str, **facts: str) -> list[str]:
    out = ["event", event, "user", user, "actor", actor, "at", at]
    for k, v in facts.items():
        out += [k, v]
    return out


def _decode(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class LocalDirectory:
    """The users set with ``callmfa user``: a :class:`~ivr.domain.directory.UserDirectory`
    for ``callmfa serve``, and the writes (audited) for the CLI.

    Values are stored as given: the CLI checks and normalises them first
    (:mod:`ivr.ops.usercli`).
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._set = redis.register_script(_SET)
        self._delete = redis.register_script(_DELETE)
        self._import = redis.register_script(_IMPORT)

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The entry of the normalised ``user``, or None."""
        found = await self.get(user)
        return found.entry if found else None

    async def get(self, user: str) -> StoredUser | None:
        """The entry of ``user`` with its last change, or None."""
        raw: Any = await self._redis.hgetall(user_key(user))
        return _stored(user, _decode(raw)) if raw else None

    async def users(self) -> list[StoredUser]:
        """Every user, sorted by name."""
        found: list[StoredUser] = []
        async for key in self._redis.scan_iter(match=USER_PREFIX + "*", count=1000):
            name = key.decode(errors="replace").removeprefix(USER_PREFIX)
            if (user := await self.get(name)) is not None:
                found.append(user)
        return sorted(found, key=lambda u: u.entry.user)

    async def count(self) -> int:
        """How many users there are (a SCAN: for ``callmfa check``)."""
        return sum([1 async for _ in self._redis.scan_iter(match=USER_PREFIX + "*",
                                                           count=1000)])

    async def set(self, entry: DirectoryEntry, *, actor: str) -> bool:
        """Create or replace ``entry``'s user; audited (``user_set``). True if replaced."""
        at = iso(time.time()) or ""
        facts = _audit("user_set", entry.user, actor, at, phone=entry.phone, mode=entry.mode,
                       lang=entry.lang)
        return bool(await self._set(
            keys=[user_key(entry.user), AUDIT],
            args=[entry.phone, entry.mode, entry.lang, at, actor, *facts],
        ))

    async def delete(self, user: str, *, actor: str) -> bool:
        """Delete ``user``; audited (``user_deleted``). False (nothing audited) if unknown."""
        at = iso(time.time()) or ""
        return bool(await self._delete(keys=[user_key(user), AUDIT],
                                       args=_audit("user_deleted", user, actor, at)))

    async def import_all(
        self, entries: Sequence[DirectoryEntry], *, actor: str, source: str
    ) -> int:
        """Create or replace every entry in one atomic step, audited once
        (``users_imported``, with the count, how many replaced and ``source``); how many
        existed before. Users not in ``entries`` are kept."""
        at = iso(time.time()) or ""
        facts = ["event", "users_imported", "actor", actor, "at", at, "source", source]
        args: list[str | int] = [at, actor, len(facts), *facts]
        for e in entries:
            args += [e.phone, e.mode, e.lang]
        keys = [AUDIT, *(user_key(e.user) for e in entries)]
        return int(await self._import(keys=keys, args=args))


def _stored(user: str, raw: dict[str, str]) -> StoredUser:
    entry = DirectoryEntry(user=user, phone=raw.get("phone", ""),
                           mode=raw.get("mode") or "standard", lang=raw.get("lang") or "en")
    return StoredUser(entry, raw.get("updated_at", ""), raw.get("updated_by", ""))


def open_directory(
    settings: Settings, redis: Redis
) -> tuple[UserDirectory, PasswordChecker | None]:
    """The directory ``callmfa serve`` looks users up in (the local entries, then LDAP when
    ``CALLMFA_LDAP_URL`` is set) and the LDAP password checker (None without LDAP)."""
    local = LocalDirectory(redis)
    if not settings.ldap_url:
        return local, None
    try:
        from .ldap import LdapDirectory
    except ImportError:
        raise SettingsError("CALLMFA_LDAP_URL needs bonsai: pip install 'callmfa[ldap]' "
                            "(docs/directory.md)") from None
    ldap = LdapDirectory(settings)
    return ChainedDirectory(local, ldap), ldap
