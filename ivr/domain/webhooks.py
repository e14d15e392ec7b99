"""Webhooks and alerts without I/O: which URLs may be called, what is sent, and when to retry.

The delivery worker (:mod:`ivr.fronts.webhooks`) carries these decisions out; everything here
is pure, so the allow-list, the back-off schedule and the messages are tested without a
network or a Redis (docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

MAX_URL_CHARS = 2048
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_LOOPBACK_NAMES = frozenset({"localhost"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

OUTCOME_TYPE = "verification.finished"
# The audit events sent as security webhooks, by the type they are sent as. A 0# that blocks
# the user is audited as ``blocked`` with reason ``fraud_reported``: it is sent as a report.
SECURITY_TYPES = {
    "fraud_reported": "security.fraud_reported",
    "blocked": "security.blocked",
    "bypass_used": "security.bypass_used",
    "pin_locked_out": "security.pin_locked_out",
}


class UrlError(ValueError):
    """A webhook URL that callmfa will not call; the message says why."""


@dataclass(frozen=True)
class UrlRule:
    """One entry of CALLMFA_WEBHOOK_ALLOWED_URLS: a scheme, a host (``*.`` for any
    subdomain), a port and a path prefix that ends at a ``/``."""

    scheme: str
    host: str
    port: int
    path: str

    def allows(self, url: SplitResult) -> bool:
        """Whether ``url`` (already checked by :func:`check_url`) falls under this rule."""
        host = (url.hostname or "").lower()
        if self.host.startswith("*."):
            host_ok = host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        else:
            host_ok = host == self.host
        path = url.path or "/"
        path_ok = path == self.path or path.startswith(
            self.path if self.path.endswith("/") else self.path + "/")
        return (url.scheme == self.scheme and host_ok and _port(url) == self.port and path_ok)


def _port(url: SplitResult) -> int:
    try:
        port = url.port
    except ValueError:
        raise UrlError("the port is not a number from 1 to 65535") from None
    return port if port is not None else _DEFAULT_PORTS[url.scheme]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (127.0.0.0/8, ::1 or localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: object) -> SplitResult:
    """``url`` split, if callmfa may POST to it at all: https, or http to a loopback address
    (a receiver on the same machine, or tests); no user name or password, no fragment."""
    if not isinstance(url, str) or not url:
        raise UrlError("a webhook URL must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise UrlError(f"a webhook URL must be at most {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise UrlError("a webhook URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname  # parsed here: a bad IPv6 literal raises
    except ValueError as e:
        raise UrlError(f"a webhook URL must be a URL: {e}") from None
    if parts.scheme not in _DEFAULT_PORTS or not host:
        raise UrlError("a webhook URL must be https://host/... (http only to a loopback host)")
    if parts.scheme == "http" and not is_loopback(host):
        raise UrlError("a webhook URL must use https (http only to a loopback host)")
    if parts.username is not None or parts.password is not None:
        raise UrlError("a webhook URL must not carry a user name or password")
    if parts.fragment:
        raise UrlError("a webhook URL must not have a #fragment")
    # The prefix is checked on the path as written; the HTTP client (yarl) resolves dot
    # segments, %2e included, before it sends: /callmfa/../x would be posted to /x.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise UrlError("a webhook URL's path must not have . or .. segments")
    _port(parts)
    return parts


def parse_allowed_urls(text: str) -> tuple[UrlRule, ...]:
    """CALLMFA_WEBHOOK_ALLOWED_URLS: comma-separated URL prefixes such as
    ``https://hooks.example.com/callmfa/`` or ``https://*.example.com/``; ValueError if one
    is not a URL callmfa could call, or has a query."""
    rules = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        wildcard = "://*." in item
        parts = check_url(item.replace("://*.", "://wildcard.", 1) if wildcard else item)
        if parts.query:
            raise UrlError(f"{item!r}: an allowed URL prefix must not have a query")
        host = (parts.hostname or "").lower()
        if wildcard:
            host = "*." + host.removeprefix("wildcard.")
        rules.append(UrlRule(parts.scheme, host, _port(parts), parts.path or "/"))
    return tuple(rules)


def check_callback_url(url: object, rules: tuple[UrlRule, ...]) -> str:
    """The request's ``callback_url`` if it may be called, else UrlError with the reason."""
    parts = check_url(url)
    if not rules:
        raise UrlError("callback_url is not accepted: CALLMFA_WEBHOOK_ALLOWED_URLS is empty")
    if not any(rule.allows(parts) for rule in rules):
        raise UrlError("callback_url matches no prefix of CALLMFA_WEBHOOK_ALLOWED_URLS")
    return str(url)


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """The retry schedule: ``base_s`` after the first failure, doubling up to ``max_s``,
    each delay cut by up to ``jitter`` of itself at random; nothing is tried once
    ``give_up_s`` have passed since the event (it is dead-lettered then)."""

    base_s: float
    max_s: float
    give_up_s: float
    jitter: float = 0.25

    def delay(self, failures: int, rand: float) -> float:
        """Seconds before the next attempt after ``failures`` failed ones (``rand`` in [0, 1))."""
        exponent = min(max(failures - 1, 0), 62)
        full = min(self.max_s, self.base_s * 2.0 ** exponent)
        return full * (1.0 - self.jitter * rand)

    def next_attempt(self, failures: int, created_at: float, now: float,
                     rand: float | None = None) -> float | None:
        """When to try again (epoch seconds), or None: dead-letter it."""
        at = now + self.delay(failures, random.random() if rand is None else rand)  # noqa: S311
        return None if at > created_at + self.give_up_s else at


def outcome_webhook_id(rid: str, finished_at_ms: int) -> str:
    """The ``webhook-id`` of an outcome: the same on every retry, new for a reused id.

    A ``rejected`` outcome's id is whatever the request said: one that is not plain
    letters, digits and ``-_.:`` is replaced by its hash, so that it is a safe header.
    """
    if not _SAFE_ID.fullmatch(rid):
        rid = "h" + hashlib.sha256(rid.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"msg_{rid}_{finished_at_ms}"


def security_type(entry: Mapping[str, str]) -> str | None:
    """The webhook type of an audit entry, or None if it is not sent (``number_not_allowed``,
    ``unblocked``, ``pin_set``...)."""
    event = entry.get("event", "")
    if event == "blocked" and entry.get("reason") == "fraud_reported":
        return SECURITY_TYPES["fraud_reported"]
    return SECURITY_TYPES.get(event)


def mask_phone(number: str) -> str:
    """``+12015550100`` as ``+120•••0100``: enough to recognise, not to dial."""
    if len(number) <= 8:
        return "•••"
    return number[:4] + "•••" + number[-4:]


@dataclass(frozen=True)
class AlertMail:
    """The subject and plain-text body of one fraud alert e-mail."""

    subject: str
    text: str


def fraud_alert(entry: Mapping[str, str]) -> AlertMail:
    """The e-mail for a security audit entry, worded like the alert Azure MFA sends."""
    user = entry.get("user", "?")
    number = mask_phone(entry.get("number", ""))
    when = entry.get("at", "?")
    rid = entry.get("id", "")
    kind = security_type(entry) or entry.get("event", "")
    if kind == SECURITY_TYPES["fraud_reported"]:
        subject = f"callmfa fraud alert: {user} reported a sign-in they did not start"
        blocked = (f"callmfa blocked {user} until {entry['until']}: their next sign-ins end "
                   "`blocked`, uncalled.\n" if entry.get("until") else
                   f"{user} was not blocked by this report (CALLMFA_FRAUD_BLOCK_S=0, or a "
                   "longer block stands).\n")
        what = (f"{user} answered the verification call to {number} and pressed 0#: someone "
                "tried to sign in with their password.\n\n" + blocked +
                "\nWhat to do:\n"
                f"  1. Reset {user}'s password and sign them out everywhere.\n"
                "  2. Look for other sign-ins from the same source (verification id above,\n"
                "     `callmfa report`, your sign-in service's logs).\n"
                f"  3. Once it is safe, lift the block: callmfa unblock {user}\n")
    elif kind == SECURITY_TYPES["pin_locked_out"]:
        subject = f"callmfa alert: {user} is locked out after wrong PINs"
        what = (f"Wrong PINs were keyed on calls to {number}; {user} is locked out.\n\n"
                f"What to do: check with {user}; lift it with callmfa pin unlock {user}\n")
    else:
        subject = f"callmfa alert: {kind} for {user}"
        what = f"{kind} for {user} ({number}).\n"
    text = (f"{what}\nUser: {user}\nPhone: {number}\nTime (UTC): {when}\n"
            f"Verification id: {rid or '-'}\n")
    return AlertMail(subject, text)


def security_deliveries(audit_id: str, entry: Mapping[str, str], *, url: str,
                        recipients: tuple[str, ...],
                        mail_events: frozenset[str]) -> list[dict[str, str]]:
    """The deliveries an audit entry makes: a security webhook to ``url`` and an alert
    e-mail to each of ``recipients`` (for the events in ``mail_events``: one delivery each,
    so a mailbox that refuses it for a while is tried again alone); none for other entries.

    Their webhook ids come from the audit entry's id: the same if it is routed twice.
    """
    kind = security_type(entry)
    if kind is None:
        return []
    created = str(int(audit_id.split("-", 1)[0]) / 1000)
    common = {"type": kind, "timestamp": entry.get("at", ""), "created_at": created,
              "payload": json.dumps(dict(entry), separators=(",", ":"), ensure_ascii=False)}
    out = []
    if url:
        out.append({"channel": "webhook", "target": url,
                    "webhook_id": f"msg_audit_{audit_id}", **common})
    if kind.removeprefix("security.") in mail_events:
        out += [{"channel": "email", "target": address,
                 "webhook_id": f"msg_audit_{audit_id}_email{n}", **common}
                for n, address in enumerate(recipients, 1)]
    return out


def envelope(kind: str, timestamp: str, payload: str) -> str:
    """The POSTed body: ``{"type", "timestamp", "data"}`` around ``payload``, a JSON text
    kept byte for byte (an outcome exactly as stored, its ``sig`` included)."""
    head = json.dumps({"type": kind, "timestamp": timestamp}, separators=(",", ":"))
    return head[:-1] + ',"data":' + payload + "}"
