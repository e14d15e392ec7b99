"""LinOTP's custom voice provider (``CustomVoiceProvider``): a JSON POST
``{"call": {"calleeNumber", "messageTemplate", "otp", "locale", ...}}`` (with its
twilioConfig spread in). LinOTP authenticates with a client certificate (the API's TLS), or
here with Basic auth in its server_url, or its twilioConfig ``authToken``; any 2xx is a
success, anything else a failure.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ...domain.flow import OTP_MAX_DIGITS, OTP_MIN_DIGITS
from ...settings import Settings
from .common import body_of, json_object, peer
from .gateway import (
    Accepted,
    OtpGateway,
    OtpOrder,
    ProviderError,
    Refused,
    bearer_or_basic,
    code_in,
    e164,
    language,
    token_matches,
)

VENDOR = "linotp"
PATH = "/providers/linotp"
_DIGITS = re.compile(rf"[0-9]{{{OTP_MIN_DIGITS},{OTP_MAX_DIGITS}}}\Z")


def call_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``call`` object."""
    call = payload.get("call")
    if not isinstance(call, dict):
        raise ProviderError("invalid_payload", "call is missing")
    return call


def body_token(call: dict[str, Any]) -> str:
    """The twilioConfig authToken LinOTP sends in the call (flat, or under ``twilio``)."""
    raw = call.get("twilio")
    twilio: dict[str, Any] = raw if isinstance(raw, dict) else {}
    token = call.get("authToken") or twilio.get("authToken") or ""
    return token if isinstance(token, str) else ""


def order_from(call: dict[str, Any], settings: Settings) -> OtpOrder:
    """The verification LinOTP's call asks for: ``otp`` (else the code in the template)."""
    phone = e164(call.get("calleeNumber"), settings.provider_region)
    code = call.get("otp")
    otp = code if isinstance(code, str) and _DIGITS.match(code) \
        else code_in(call.get("messageTemplate"))
    return OtpOrder(phone=phone, otp=otp, user=phone,
                    lang=language(call.get("locale"), settings.provider_lang))


def reply(result: Accepted | Refused) -> web.Response:
    """LinOTP's answer: 2xx (its content is kept as the result), or an error status."""
    if isinstance(result, Accepted):
        return web.Response(text=f"accepted {result.id}")
    return web.Response(status=result.status, text=f"{result.reason}: {result.message}")


def routes(gateway: OtpGateway, path: str = PATH) -> web.RouteTableDef:
    """POST ``path``."""
    table = web.RouteTableDef()

    @table.post(path)
    async def handle(request: web.Request) -> web.Response:
        s = gateway.settings
        try:
            call = call_of(json_object(await body_of(request)))
        except ProviderError as e:
            call = None
            error = e
        header_ok = bearer_or_basic(request.headers.get("Authorization"), s.provider_linotp_token)
        if not header_ok and not (call and token_matches(body_token(call),
                                                         s.provider_linotp_token)):
            return reply(gateway.refuse(VENDOR, "unauthorized", "bad or missing credential",
                                        status=401, peer=peer(request)))
        if call is None:
            return reply(gateway.refuse(VENDOR, error.reason, error.message, status=400,
                                        peer=peer(request)))
        try:
            order = order_from(call, s)
        except ProviderError as e:
            return reply(gateway.refuse(VENDOR, e.reason, e.message, status=400,
                                        peer=peer(request)))
        return reply(await gateway.order(VENDOR, order))

    return table
