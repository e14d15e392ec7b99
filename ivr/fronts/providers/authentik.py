"""authentik's generic SMS provider (SMS Authenticator Setup stage, provider Generic): a
JSON POST ``{"From", "To", "Body", "Message"}`` (``Body`` is the code), with Bearer or Basic
auth; any status of 400 or above is a failure, whose text authentik shows.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

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
)

VENDOR = "authentik"
PATH = "/providers/authentik"


def order_from(payload: dict[str, Any], settings: Settings) -> OtpOrder:
    """The verification authentik's payload asks for: ``To``, and the code in ``Body`` (or,
    from a property mapping that sends only text, in ``Message``)."""
    phone = e164(payload.get("To"), settings.provider_region)
    try:
        otp = code_in(payload.get("Body"))
    except ProviderError:
        otp = code_in(payload.get("Message"))
    return OtpOrder(phone=phone, otp=otp, user=phone, lang=settings.provider_lang)


def reply(result: Accepted | Refused) -> web.Response:
    """authentik's answer: 200, or a status of 400 and above with a short text."""
    if isinstance(result, Accepted):
        return web.json_response({"status": "accepted", "id": result.id})
    return web.json_response({"error": result.message, "reason": result.reason},
                             status=result.status)


def routes(gateway: OtpGateway, path: str = PATH) -> web.RouteTableDef:
    """POST ``path``."""
    table = web.RouteTableDef()

    @table.post(path)
    async def handle(request: web.Request) -> web.Response:
        s = gateway.settings
        if not bearer_or_basic(request.headers.get("Authorization"), s.provider_authentik_token):
            return reply(gateway.refuse(VENDOR, "unauthorized", "bad or missing credential",
                                        status=401, peer=peer(request)))
        try:
            order = order_from(json_object(await body_of(request)), s)
        except ProviderError as e:
            return reply(gateway.refuse(VENDOR, e.reason, e.message, status=400,
                                        peer=peer(request)))
        return reply(await gateway.order(VENDOR, order))

    return table
