"""Okta's telephony inline hook (``com.okta.telephony.provider``): a JSON POST with the
code in ``data.messageProfile.otpCode``, authenticated by the authScheme header Okta was
given (CALLMFA_PROVIDER_OKTA_AUTH_HEADER: CALLMFA_PROVIDER_OKTA_TOKEN). Okta waits 3 s; the
answer is a ``com.okta.telephony.action`` command, SUCCESSFUL or FAILED, with a
transactionId (the verification's id). Every channel, SMS included, is delivered by a call.
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
    code_in,
    e164,
    language,
    token_matches,
)

VENDOR = "okta"
PATH = "/providers/okta"
ACTION = "com.okta.telephony.action"
PROVIDER = "callmfa"
_DIGITS = re.compile(rf"[0-9]{{{OTP_MIN_DIGITS},{OTP_MAX_DIGITS}}}\Z")


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProviderError("invalid_payload", f"{name} is missing")
    return value


def order_from(payload: dict[str, Any], settings: Settings) -> OtpOrder:
    """The verification Okta's hook asks for; the user is the Okta login."""
    data = _object(payload.get("data"), "data")
    message = _object(data.get("messageProfile"), "data.messageProfile")
    raw_profile = data.get("userProfile")
    profile: dict[str, Any] = raw_profile if isinstance(raw_profile, dict) else {}
    code = message.get("otpCode")
    otp = code if isinstance(code, str) and _DIGITS.match(code) \
        else code_in(message.get("msgTemplate"))
    phone = e164(message.get("phoneNumber"), settings.provider_region)
    user = profile.get("login") or profile.get("userId") or phone
    context = {k: str(v) for k, v in (("event_id", payload.get("eventId")),
                                      ("request_type", payload.get("requestType")),
                                      ("channel", message.get("deliveryChannel"))) if v}
    return OtpOrder(phone=phone, otp=otp, user=str(user),
                    lang=language(message.get("locale"), settings.provider_lang),
                    context=context)


def action(status: str, transaction_id: str, metadata: str) -> dict[str, Any]:
    """One ``com.okta.telephony.action`` command."""
    return {"commands": [{"type": ACTION, "value": [{
        "status": status, "provider": PROVIDER, "transactionId": transaction_id,
        "transactionMetadata": metadata,
    }]}]}


def reply(result: Accepted | Refused, event_id: str = "") -> web.Response:
    """Okta's answer: SUCCESSFUL with the verification's id, or FAILED (a bad credential:
    401 and an error object, which Okta treats as the hook not answering)."""
    if isinstance(result, Accepted):
        return web.json_response(action("SUCCESSFUL", result.id, "voice call queued"))
    if result.reason == "unauthorized":
        return web.json_response({"error": {"errorSummary": result.message}}, status=401)
    return web.json_response(action("FAILED", result.id or event_id or "none", result.reason))


def routes(gateway: OtpGateway, path: str = PATH) -> web.RouteTableDef:
    """POST ``path``."""
    table = web.RouteTableDef()

    @table.post(path)
    async def handle(request: web.Request) -> web.Response:
        s = gateway.settings
        if not token_matches(request.headers.get(s.provider_okta_auth_header, ""),
                             s.provider_okta_token):
            return reply(gateway.refuse(VENDOR, "unauthorized", "bad or missing auth header",
                                        status=401, peer=peer(request)))
        event_id = ""
        try:
            payload = json_object(await body_of(request))
            event_id = str(payload.get("eventId") or "")
            order = order_from(payload, s)
        except ProviderError as e:
            return reply(gateway.refuse(VENDOR, e.reason, e.message, status=400,
                                        peer=peer(request)), event_id)
        return reply(await gateway.order(VENDOR, order), event_id)

    return table
