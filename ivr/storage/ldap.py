"""The user directory's optional LDAP source, with bonsai (asyncio-native, on libldap).

A lookup binds as ``CALLMFA_LDAP_BIND_DN`` (anonymous when empty), searches
``CALLMFA_LDAP_BASE_DN``'s subtree with ``CALLMFA_LDAP_USER_FILTER`` (the user name escaped
as RFC 4515 asks) and takes the first of ``CALLMFA_LDAP_PHONE_ATTRIBUTES`` that holds a valid
number, normalised to E.164 as ``callmfa user`` does. Answers, found or not, are kept in the
process for ``CALLMFA_LDAP_CACHE_TTL_S``; failures are not kept.

A password check (:class:`~ivr.domain.directory.PasswordChecker`) finds the user's DN with
the service's bind, then binds as that DN with the password. An empty password is False
without any bind: LDAP takes a simple bind with a DN and no password as an unauthenticated
bind, which succeeds (RFC 4513 5.1.2).

Each operation opens its own connection (a TCP connection and a bind: an uncached lookup took
6.8 ms median against the sandbox's slapd on a busy 2-core machine; a cached one 0.3 us):
nothing to keep alive or to reconnect, and a password bind never shares a connection with
the service's searches.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import bonsai
import structlog
from bonsai.asyncio import AIOLDAPConnection

from ..domain.directory import DirectoryEntry
from ..domain.entries import EntryError, directory_entry
from ..domain.numbers import default_region
from ..exceptions import DirectoryError
from ..redaction import redacted_url

if TYPE_CHECKING:
    from ..settings import Settings

log = structlog.get_logger("ivr.storage.ldap")

CACHE_ENTRIES = 10_000


def user_filter(template: str, user: str) -> str:
    """``template`` with ``{user}`` replaced by ``user``, escaped for an LDAP filter
    (``*``, ``(``, ``)`` and ``\\`` as ``\\2A``, ``\\28``, ``\\29``, ``\\5C``): a user name
    cannot widen or rewrite the search. (NUL never gets here: user names refuse controls.)"""
    return template.replace("{user}", bonsai.escape_filter_exp(user))


class LdapDirectory:
    """Users in an LDAP server: a :class:`~ivr.domain.directory.UserDirectory` and a
    :class:`~ivr.domain.directory.PasswordChecker`."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.ldap_url
        self._shown_url = redacted_url(settings.ldap_url)  # for errors and repr
        self._bind_dn = settings.ldap_bind_dn
        self._bind_password = settings.ldap_bind_password
        self._base = settings.ldap_base_dn
        self._filter = settings.ldap_user_filter
        self._attributes = list(settings.ldap_attributes)
        self._ttl_s = settings.ldap_cache_ttl_s
        self._timeout_s = settings.ldap_timeout_s
        self._region = default_region(settings.allowed_regions)
        self._cache: OrderedDict[str, tuple[float, DirectoryEntry | None]] = OrderedDict()

    def __repr__(self) -> str:
        return f"LdapDirectory(url={self._shown_url!r}, bind_dn={self._bind_dn!r})"

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The normalised ``user``'s entry, or None; DirectoryError if the server fails."""
        now = time.monotonic()
        cached = self._cache.get(user)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._search(user)
        entry = self._entry(user, found[1]) if found is not None else None
        if self._ttl_s > 0:
            self._cache[user] = (now + self._ttl_s, entry)
            self._cache.move_to_end(user)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return entry

    async def check_password(self, user: str, password: str) -> bool:
        """True only when ``password`` binds as ``user``'s DN; False for a wrong or empty
        password and for an unknown user; DirectoryError if the server fails."""
        if not password:
            return False  # a DN with no password is an unauthenticated bind: it "succeeds"
        found = await self._search(user)
        if found is None:
            return False
        try:
            conn = await self._connect(found[0], password)
        except bonsai.AuthenticationError:
            log.info("ldap_password_refused")
            return False
        _close(conn)
        return True

    async def ping(self) -> None:
        """Bind as the service; DirectoryError if that fails (``callmfa check``)."""
        _close(await self._connect(self._bind_dn, self._bind_password))

    async def _connect(self, dn: str, password: str) -> AIOLDAPConnection:
        client = bonsai.LDAPClient(self._url)
        if dn:
            client.set_credentials("SIMPLE", user=dn, password=password)
        conn = client.connect(is_async=True, timeout=self._timeout_s)
        assert isinstance(conn, AIOLDAPConnection)
        connect_id = conn.fileno()  # bonsai's id of the unfinished connect
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn
        except bonsai.AuthenticationError:
            _close(conn)
            if dn != self._bind_dn:
                raise  # a user's password: the caller's answer, not a failure
            raise DirectoryError(f"LDAP refused the bind as {dn!r}: check "
                                 "CALLMFA_LDAP_BIND_DN and its password") from None
        except (bonsai.LDAPError, OSError, TimeoutError) as e:
            # An LDAPError ended the connect; a timeout left it pending.
            _close(conn, None if isinstance(e, bonsai.LDAPError) else connect_id)
            raise DirectoryError(f"LDAP server {self._shown_url} failed: {_text(e)}") from None
        except BaseException:
            _close(conn, connect_id)
            raise
        return conn

    async def _search(self, user: str) -> tuple[str, dict[str, list[str]]] | None:
        """The DN and phone attributes of the one entry that matches ``user``, or None."""
        conn = await self._connect(self._bind_dn, self._bind_password)
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await conn.search(self._base, bonsai.LDAPSearchScope.SUBTREE,
                                          user_filter(self._filter, user),
                                          attrlist=self._attributes, timeout=self._timeout_s,
                                          sizelimit=2)
        except bonsai.SizeLimitError:
            found = [None, None]  # more than one: treated as unknown, below
        except bonsai.NoSuchObjectError:
            raise DirectoryError(f"CALLMFA_LDAP_BASE_DN {self._base!r} does not exist on "
                                 f"{self._shown_url}") from None
        except (bonsai.LDAPError, OSError, TimeoutError) as e:
            raise DirectoryError(f"LDAP search on {self._shown_url} failed: {_text(e)}") from None
        finally:
            _close(conn)
        if len(found) != 1 or found[0] is None:
            if found:
                log.warning("ldap_user_ambiguous", matches=">1",
                            fix="CALLMFA_LDAP_USER_FILTER must match one entry per user")
            return None
        entry = found[0]
        values = {a: [str(v) for v in entry.get(a, [])] for a in self._attributes}
        return str(entry.dn), values

    def _entry(self, user: str, values: dict[str, list[str]]) -> DirectoryEntry | None:
        for attribute in self._attributes:
            for raw in values.get(attribute, []):
                try:
                    return directory_entry(user, raw, region=self._region, source="ldap")
                except EntryError as e:
                    log.warning("ldap_phone_invalid", attribute=attribute, error=str(e))
        return None


def _close(conn: AIOLDAPConnection, unfinished_connect: int | None = None) -> None:
    """Close ``conn``, its connect done or not (``unfinished_connect``: its id).

    bonsai's asyncio connection watches its socket while an operation waits, and stops only
    on an ``Exception``: after a timeout or a cancellation (``BaseException``) the loop
    would go on watching a closed descriptor. An unfinished connect is worse: ``close()``
    does nothing before the connect ends, and the pending connect and the connection refer
    to each other through an object the garbage collector cannot see, so both, and the
    socket, stayed for the life of the process (a descriptor per lookup of a server that
    does not answer). Abandoning the pending connect lets them go. bonsai's ``fileno()`` is
    the connect's own id until its libldap handle exists (a few milliseconds): only then can
    it be abandoned.
    """
    try:
        fd = conn.fileno()
    except bonsai.LDAPError:
        fd = -1
    if fd > -1:
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        loop.remove_writer(fd)
    if unfinished_connect is not None and fd not in (-1, unfinished_connect):
        try:
            conn.abandon(unfinished_connect)
        except (bonsai.LDAPError, SystemError) as e:  # SystemError: it had ended after all
            log.warning("ldap_abandon_failed", error=_text(e))
    conn.close()


def _text(error: BaseException) -> str:
    return str(error) or type(error).__name__
