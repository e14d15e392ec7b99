"""Verification requests: the JSON a sign-in service puts on ``callmfa:requests``.

Everything here is checked before a byte reaches AMI: a request either parses into a
:class:`VerificationRequest` whose every field is safe to put in a header, or raises
:class:`~ivr.exceptions.RequestError` with the one-word detail of the ``rejected`` outcome.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import RequestError
from .codes import is_valid_hash
from .flow import MODES as FLOW_MODES
from .flow import OTP_MAX_DIGITS, OTP_MIN_DIGITS
from .outcome import parse_iso
from .users import MAX_USER_CHARS as MAX_USER_CHARS
from .users import UserNameError, normalise_user
from .webhooks import UrlError, UrlRule, check_callback_url

MODES = frozenset(FLOW_MODES)
FIELDS = frozenset(
    {"id", "user", "phone", "mode", "lang", "expires_at", "context", "match_hash",
     "callback_url", "otp"}
)
MAX_REQUEST_BYTES = 8192
MAX_CONTEXT_BYTES = 4096
# A sign-in waits seconds, not days: a request's expires_at is at most this long after it
# was made (past it, its lock and its outcome's key would no longer cover its wait).
MAX_EXPIRES_IN_S = 3600

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# E.164: '+', a country code that does not start with 0, at most 15 digits in all;
# an office extension may follow after an 'x'.
_PHONE = re.compile(r"\+([1-9][0-9]{6,14})(?:x([0-9]{1,10}))?\Z")
# The id of an oversized request, read without parsing it: '{"id": "<uuid>"' at its start.
_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*"([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-'
                         r'[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})"')
_HEAD_BYTES = 128
_LANG = re.compile(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?\Z")
_OTP = re.compile(rf"[0-9]{{{OTP_MIN_DIGITS},{OTP_MAX_DIGITS}}}\Z")


@dataclass(frozen=True, kw_only=True)
class VerificationRequest:
    """A validated request. ``user`` is normalised (:func:`~ivr.domain.users.normalise_user`);
    ``number`` is E.164 with '+'; ``extension`` is digits or ''."""

    id: str
    user: str
    number: str
    extension: str
    mode: str
    lang: str
    requested_at: float
    expires_at: float
    context: dict[str, Any] = field(default_factory=dict)
    match_hash: str = field(default="", repr=False)
    callback_url: str = ""  # checked against CALLMFA_WEBHOOK_ALLOWED_URLS; '' for none
    otp: str = field(default="", repr=False)  # never in a log line

    @property
    def phone(self) -> str:
        """The phone as the client wrote it."""
        return f"{self.number}x{self.extension}" if self.extension else self.number


def peek_id(raw: str | bytes) -> str | None:
    """The id of a request that failed to parse, if one can be read at all.

    Used to give even a broken request an outcome the client can find. A request over
    ``MAX_REQUEST_BYTES`` is never parsed: only a UUID ``id`` that is its first member (as
    ``ivr.client`` writes it) is read, from its first bytes.
    """
    if len(raw) > MAX_REQUEST_BYTES:
        head = raw[:_HEAD_BYTES]
        found = _LEADING_ID.match(head.decode("utf-8", "replace") if isinstance(head, bytes)
                                  else head)
        return found.group(1).lower() if found else None
    try:
        data = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value.lower() if _UUID.match(value.lower()) else value
    return None


# The modes a user directory entry may give: ``otp`` needs a code per request.
USER_MODES = MODES - {"otp"}


def check_mode(mode: object, allowed: frozenset[str] = MODES) -> str:
    """``mode`` if it is one of ``allowed``; else RequestError ``unsupported_mode``."""
    if not isinstance(mode, str) or mode not in allowed:
        raise RequestError("unsupported_mode",
                           f"mode must be one of {', '.join(sorted(allowed))}")
    return mode


def check_lang(lang: object) -> str:
    """``lang`` if it is a language tag (``en``, ``fr-CA``); else RequestError
    ``invalid_lang``."""
    if not isinstance(lang, str) or not _LANG.match(lang):
        raise RequestError("invalid_lang", "lang must be a language tag such as en or fr-CA")
    return lang


def parse_request(
    raw: str | bytes, *, requested_at: float, default_ttl_s: float,
    callback_rules: tuple[UrlRule, ...] = (),
) -> VerificationRequest:
    """Parse and validate one request; raise RequestError with the reason if it is bad.

    A ``callback_url`` must fall under one of ``callback_rules``
    (CALLMFA_WEBHOOK_ALLOWED_URLS): with none, any callback_url is refused.
    """
    return parse_fields(request_fields(raw), requested_at=requested_at,
                        default_ttl_s=default_ttl_s, callback_rules=callback_rules)


def request_fields(raw: str | bytes) -> dict[str, Any]:
    """The request's JSON object, not yet validated (a directory may still fill in its
    phone: :mod:`ivr.domain.fallback`); RequestError when it is too large or not an object."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise RequestError("too_large", f"request is over {MAX_REQUEST_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        raise RequestError("invalid_json", "request is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("invalid_json", "request must be a JSON object")
    return data


def parse_fields(
    data: Mapping[str, Any], *, requested_at: float, default_ttl_s: float,
    callback_rules: tuple[UrlRule, ...] = (), clock_skew_s: float = 0.0,
) -> VerificationRequest:
    """Validate a request's fields (:func:`request_fields`); RequestError if one is bad.
    ``clock_skew_s``: how far the clock ``expires_at`` was made by may run ahead of the one
    ``requested_at`` was read from (another host's)."""
    unknown = set(data) - FIELDS
    if unknown:
        raise RequestError("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")

    rid = data.get("id")
    if not isinstance(rid, str) or not _UUID.match(rid.lower()):
        raise RequestError("invalid_id", "id must be a UUID such as 0b6d...-...")
    try:
        user = normalise_user(data.get("user"))  # before any per-user key is built
    except UserNameError as e:
        raise RequestError("invalid_user", str(e)) from None
    phone = data.get("phone")
    match = _PHONE.match(phone) if isinstance(phone, str) else None
    if match is None:
        raise RequestError(
            "invalid_phone",
            "phone must be E.164 like +12015550100, optionally x1234 for an extension",
        )
    mode = check_mode(data.get("mode", "standard"))
    match_hash = data.get("match_hash")
    if mode == "match" and (not isinstance(match_hash, str) or not is_valid_hash(match_hash)):
        raise RequestError(
            "invalid_match_hash", "mode match needs match_hash: scrypt$14$8$1$<salt>$<hash>"
        )
    if mode != "match" and match_hash is not None:
        raise RequestError("invalid_match_hash", "match_hash is for mode match only")
    otp = data.get("otp")
    if mode == "otp" and (not isinstance(otp, str) or not _OTP.match(otp)):
        # (never the value itself in the message: it is logged)
        raise RequestError(
            "invalid_otp",
            f"mode otp needs otp: {OTP_MIN_DIGITS} to {OTP_MAX_DIGITS} digits, as a string",
        )
    if mode != "otp" and otp is not None:
        raise RequestError("invalid_otp", "otp is for mode otp only")
    lang = check_lang(data.get("lang") or "en")
    expires_raw = data.get("expires_at")
    if expires_raw is None:
        expires_at = requested_at + default_ttl_s
    else:
        try:
            expires_at = parse_iso(expires_raw)
        except (ValueError, TypeError, AttributeError):
            raise RequestError(
                "invalid_expires_at", "expires_at must be ISO 8601 with a time zone"
            ) from None
        if expires_at > requested_at + MAX_EXPIRES_IN_S + clock_skew_s:
            raise RequestError("invalid_expires_at",
                               f"expires_at must be at most {MAX_EXPIRES_IN_S} s away")
    context = data.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise RequestError("invalid_context", "context must be a JSON object")
    if len(json.dumps(context)) > MAX_CONTEXT_BYTES:
        raise RequestError("invalid_context", f"context is over {MAX_CONTEXT_BYTES} bytes")

    callback_url = data.get("callback_url")
    if callback_url is not None:
        try:
            callback_url = check_callback_url(callback_url, callback_rules)
        except UrlError as e:
            raise RequestError("invalid_callback_url", str(e)) from None

    return VerificationRequest(
        id=rid.lower(),
        user=user,
        number="+" + match.group(1),
        extension=match.group(2) or "",
        mode=mode,
        lang=lang,
        requested_at=requested_at,
        expires_at=expires_at,
        context=context,
        match_hash=match_hash or "",
        callback_url=callback_url or "",
        otp=otp or "",
    )


def otp_of(raw: str | bytes | None, rid: str) -> str:
    """The one-time code in the request ``raw`` (a stream entry's payload) if it is the
    otp request ``rid``, else '' (the IVR then reads nothing: ``error`` / ``no_code``)."""
    try:
        data = request_fields(raw or b"")
    except RequestError:
        return ""
    # Only these fields: the rest (a callback_url, a phone left to the directory) was
    # validated by the originator with what only it knows.
    rid_field, otp = data.get("id"), data.get("otp")
    if (isinstance(rid_field, str) and rid_field.lower() == rid.lower()
            and data.get("mode") == "otp" and isinstance(otp, str) and _OTP.match(otp)):
        return otp
    return ""
