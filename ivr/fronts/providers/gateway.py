"""What every provider endpoint shares: the order it makes of a vendor's payload, the auth
checks, and the gateway that queues the ``otp`` verification and says whether it was taken.

A vendor module is a pure translation (payload -> :class:`OtpOrder`; :class:`Accepted` or
:class:`Refused` -> the vendor's reply) plus a thin aiohttp handler.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import phonenumbers
import structlog
from redis.exceptions import RedisError

from ...domain.flow import OTP_MAX_DIGITS, OTP_MIN_DIGITS
from ...domain.outcome import Outcome
from ...domain.prompts import prompt_language
from ...settings import Settings

log = structlog.get_logger("ivr.fronts.providers")

# A run of 4 to 10 digits standing alone: the code in "Your code is 123456." (not the
# digits of a longer number, nor a "5" in "valid for 5 minutes").
_CODE = re.compile(rf"(?<![0-9]){'[0-9]'}{{{OTP_MIN_DIGITS},{OTP_MAX_DIGITS}}}(?![0-9])")
_LOCALE = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z0-9]{2,8}))?\Z")
MAX_BODY_BYTES = 64 * 1024
# After the accept window the request has expired: its 'queued' event would come at once.
ACCEPT_MARGIN_S = 0.5


class ProviderError(Exception):
    """The vendor's payload cannot become a verification; ``reason`` is one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class OtpOrder:
    """The verification request fields a vendor's payload gives: an ``otp`` call."""

    phone: str  # E.164
    otp: str = field(repr=False)  # never logged
    user: str
    lang: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    """The call is taken (``queued``): it will be placed. ``id`` is the verification's id."""

    id: str


@dataclass(frozen=True)
class Refused:
    """No call will be placed. ``status`` is the HTTP status a vendor reply may use."""

    reason: str
    message: str
    status: int
    id: str | None = None


def e164(raw: object, region: str) -> str:
    """A vendor's phone number as E.164; numbers without '+' are read in ``region``."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        raise ProviderError("invalid_phone", "no phone number")
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise ProviderError("invalid_phone", "the phone number cannot be read") from None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def code_in(text: object) -> str:
    """The one-time code in a vendor's text (the code alone, or a message holding it)."""
    if not isinstance(text, str):
        raise ProviderError("no_code", "no text holding a code")
    found = set(_CODE.findall(text))
    if len(found) != 1:
        raise ProviderError(
            "no_code", f"the text must hold one code of {OTP_MIN_DIGITS} to {OTP_MAX_DIGITS} "
                       f"digits ({'none' if not found else 'several'} found)")
    code: str = found.pop()
    return code


def language(locale: object, default: str) -> str:
    """A vendor's locale (``EN-US``, ``de_DE``, ``fr``) as a request's ``lang``."""
    m = _LOCALE.match(locale) if isinstance(locale, str) else None
    if m is None:
        return default
    lang = m.group(1).lower()
    return f"{lang}-{m.group(2)}" if m.group(2) else lang


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                  expected.encode())


def bearer_or_basic(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, or Basic with ``<token>`` as the password (any
    user name: vendors call it account, SID or user)."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return token_matches(value.strip(), token)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8
            return False
        return token_matches(decoded.partition(":")[2], token)
    return False


class Verifier(Protocol):
    """What the gateway needs of :class:`~ivr.client.VerificationClient`."""

    async def submit(self, *, user: str, phone: str | None = None, mode: str | None = None,
                     lang: str | None = None, expires_in_s: float | None = 120,
                     context: Mapping[str, Any] | None = None,
                     otp: str | None = None) -> str:
        """Queue a request; its id."""

    def watch(self, request_id: str, *, since_ms: int = 0, timeout_s: float = 180) -> Any:
        """Its progress events (an async iterator)."""


class OtpGateway:
    """Queues ``otp`` verifications for the provider endpoints and counts what it refused.

    A request may wait ``provider_accept_s`` to be taken for a call (its ``expires_at``);
    the gateway answers when it is (the ``queued`` event), or when it ends first (rejected,
    throttled, blocked, expired), so that a vendor learns within its timeout whether a call
    is coming. Delivery itself (``delivered``) is known only after the call.
    """

    def __init__(self, settings: Settings, client: Verifier,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self._client = client
        self._on_refused = on_refused  # (vendor, reason): the metrics
        self.refused: Counter[tuple[str, str]] = Counter()  # (vendor, reason) -> count

    def refuse(self, vendor: str, reason: str, message: str, *, status: int,
               peer: str | None = None) -> Refused:
        """Log and count a refusal (bad credential, unreadable payload, no call)."""
        self.refused[vendor, reason] += 1
        if self._on_refused is not None:
            self._on_refused(vendor, reason)
        log.warning("provider_request_refused", vendor=vendor, reason=reason, error=message,
                    peer=peer)
        return Refused(reason, message, status)

    async def order(self, vendor: str, order: OtpOrder) -> Accepted | Refused:
        """Queue the call and wait until it is taken, or refused."""
        s = self.settings
        since_ms = int(time.time() * 1000) - 1
        try:
            rid = await self._client.submit(
                user=order.user, phone=order.phone, mode="otp", otp=order.otp,
                lang=prompt_language(order.lang) if order.lang else s.provider_lang,
                expires_in_s=s.provider_accept_s,
                context={"front": "provider", "vendor": vendor, **order.context},
            )
            taken, outcome, detail = await self._taken(rid, since_ms)
        except (RedisError, OSError) as e:
            return self.refuse(vendor, "unavailable", f"callmfa's Redis: {type(e).__name__}",
                               status=503)
        except ValueError as e:  # over the request size limit
            return self.refuse(vendor, "too_large", str(e), status=400)
        if taken:
            log.info("provider_call_accepted", vendor=vendor, verification_id=rid)
            return Accepted(rid)
        reason = outcome or "not_taken"
        refused = self.refuse(vendor, reason, detail or f"no call: {reason}",
                              status=429 if outcome == Outcome.THROTTLED.value else 503)
        return Refused(refused.reason, refused.message, refused.status, rid)

    async def _taken(self, rid: str, since_ms: int) -> tuple[bool, str | None, str | None]:
        wait_s = self.settings.provider_accept_s + ACCEPT_MARGIN_S
        events = self._client.watch(rid, since_ms=since_ms, timeout_s=wait_s)
        async with contextlib.aclosing(events):
            try:
                async with asyncio.timeout(wait_s):
                    async for event in events:
                        if event.event in ("queued", "dialing"):
                            return True, None, None
                        if event.event == "finished":
                            outcome = event.fields.get("outcome")
                            return False, outcome, f"the request ended {outcome}"
            except TimeoutError:
                pass
        return False, None, "no originator took the request in time"
