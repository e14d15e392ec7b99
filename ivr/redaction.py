"""URLs fit for a report or a log line: the credentials they may carry masked.

One helper for every URL callmfa prints or logs (the Redis URL in ``callmfa check``, the
LDAP URL in the directory's errors, webhook targets), so that none of them shows a password
given as ``user:password@`` or as a query parameter (redis-py reads ``?password=``).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# A query parameter whose name holds one of these (case-insensitive) has its value masked.
SENSITIVE_NAMES = ("password", "passwd", "pwd", "secret", "token", "key", "auth", "sig",
                   "credential")


def sensitive(name: str) -> bool:
    """Whether a query parameter called ``name`` may hold a credential."""
    folded = unquote(name).casefold()
    return any(word in folded for word in SENSITIVE_NAMES)


def redacted_url(url: str, *, query: bool = True) -> str:
    """``url`` with its password (``user:***@``) and its sensitive query values masked;
    ``query=False`` leaves the whole query out. A URL that does not parse is all masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rsplit('@', 1)[1]}"
    pairs = []
    for pair in parts.query.split("&") if query and parts.query else ():
        name, eq, _ = pair.partition("=")
        pairs.append(f"{name}={MASK}" if eq and sensitive(name) else pair)
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(pairs)))
