"""privacyIDEA's HTTP SMS gateway (its ``HttpSMSProvider``): GET or POST with the option
names the administrator chose (CALLMFA_PROVIDER_PRIVACYIDEA_PHONE_PARAM for ``{phone}``,
CALLMFA_PROVIDER_PRIVACYIDEA_TEXT_PARAM for ``{otp}``), Basic (USERNAME/PASSWORD) or a
Bearer header; success is a text its RETURN_SUCCESS finds (``ACCEPTED``), failure one its
RETURN_FAIL finds (``FAILED``), with a non-2xx status either way.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ...settings import Settings
from .common import body_of, form_or_json, peer
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
)

VENDOR = "privacyidea"
PATH = "/providers/privacyidea"
RETURN_SUCCESS = "ACCEPTED"
RETURN_FAIL = "FAILED"


def order_from(params: Mapping[str, str], settings: Settings) -> OtpOrder:
    """The verification privacyIDEA's parameters ask for (the user is the phone number:
    privacyIDEA's options have no user tag)."""
    phone = e164(params.get(settings.provider_privacyidea_phone_param), settings.provider_region)
    otp = code_in(params.get(settings.provider_privacyidea_text_param))
    return OtpOrder(phone=phone, otp=otp, user=phone,
                    lang=language(params.get("lang"), settings.provider_lang))


def reply(result: Accepted | Refused) -> web.Response:
    """privacyIDEA's answer: RETURN_SUCCESS or RETURN_FAIL in the text."""
    if isinstance(result, Accepted):
        return web.Response(text=f"{RETURN_SUCCESS} id={result.id}")
    return web.Response(status=result.status, text=f"{RETURN_FAIL} {result.reason}")


def routes(gateway: OtpGateway, path: str = PATH) -> web.RouteTableDef:
    """GET and POST ``path``."""
    table = web.RouteTableDef()

    async def handle(request: web.Request) -> web.Response:
        s = gateway.settings
        if not bearer_or_basic(request.headers.get("Authorization"),
                               s.provider_privacyidea_token):
            return reply(gateway.refuse(VENDOR, "unauthorized", "bad or missing credential",
                                        status=401, peer=peer(request)))
        try:
            params = dict(request.query)
            if request.method == "POST":
                params.update(form_or_json(await body_of(request)))
            order = order_from(params, s)
        except ProviderError as e:
            return reply(gateway.refuse(VENDOR, e.reason, e.message, status=400,
                                        peer=peer(request)))
        return reply(await gateway.order(VENDOR, order))

    table.get(path)(handle)
    table.post(path)(handle)
    return table
