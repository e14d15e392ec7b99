"""The live sign-in demo page (``CALLMFA_API_DEMO=on``; off by default, on in the sandbox).

The browser holds no token. The page's two routes act for one server-side identity
(``#demo``, a name no token can have) and for demo users only (``demo-`` and up to 40
letters, digits or '-'), at most ``DEMO_PER_MIN`` verifications a minute in all; the
request then goes through the originator's admission like any other (number policy,
throttles, blocks). The events route serves only the ids that identity queued. See
docs/security.md, "The demo page".
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from importlib import resources

import phonenumbers
import structlog
from aiohttp import web

from ...domain.codes import hash_code
from ...domain.flow import MATCH_DIGITS
from ...exceptions import RequestError
from ...storage.tokens import Submitted
from .errors import ApiError
from .parts import PARTS
from .verifications import json_body, stream_events, validate

log = structlog.get_logger("ivr.api")

IDENTITY = "#demo"  # the owner of demo verifications; token names cannot hold '#'
DEMO_PER_MIN = 10
_DEMO_USER = re.compile(r"demo-[a-z0-9-]{1,40}\Z")


def masked(phone: str) -> str:
    """A phone as the page shows it: ``+1 201 ••• 0100``."""
    try:
        number = phonenumbers.parse(phone.partition("x")[0])
    except phonenumbers.NumberParseException:
        return "•••"
    national = str(number.national_number)
    if len(national) < 8:
        return f"+{number.country_code} ••• {national[-2:]}"
    return f"+{number.country_code} {national[:3]} ••• {national[-4:]}"


async def page(request: web.Request) -> web.Response:
    """The page (no script or style from elsewhere)."""
    html = resources.files(__package__).joinpath("demo.html").read_text()
    return web.Response(text=html, content_type="text/html", headers={
        # frame-ancestors: a sign-in page another site frames could be clicked through.
        "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                   "style-src 'unsafe-inline'; frame-ancestors 'none'",
        "Cache-Control": "no-store"})


async def start(request: web.Request) -> web.Response:
    """Queue a demo verification: {"id", "calling", "match"} (match: the number to key)."""
    parts = request.app[PARTS]
    body = await json_body(request)  # JSON only: a cross-site form cannot post here
    user, phone, mode = body.get("user"), body.get("phone"), body.get("mode", "standard")
    if not isinstance(user, str) or not _DEMO_USER.match(user):
        raise ApiError(400, "invalid_user", "the demo calls demo users only: demo-<name>")
    if mode not in ("standard", "match"):
        raise ApiError(400, "unsupported_mode", "the demo has modes standard and match")
    wait = await parts.tokens.spend(IDENTITY, DEMO_PER_MIN)
    if wait is not None:
        raise ApiError(429, "rate_limited", f"the demo is busy; retry in {wait} s",
                       headers={"Retry-After": str(wait)})
    request_body: dict[str, object] = {"user": user, "mode": mode}
    if phone:
        request_body["phone"] = phone
    match = None
    if mode == "match":
        match = f"{secrets.randbelow(10 ** MATCH_DIGITS):0{MATCH_DIGITS}d}"
        request_body["match_hash"] = await asyncio.to_thread(hash_code, match)  # scrypt: CPU
    try:
        rid, payload, _ = validate(request_body)
    except RequestError as e:
        raise ApiError(400, e.detail, e.message) from None
    found = await parts.submissions.submit(
        IDENTITY, rid, payload, owner_ttl_s=parts.settings.result_ttl_s + 600,
        idempotency_key=None, fingerprint="")
    if found.verdict is not Submitted.QUEUED:
        raise ApiError(409, "id_in_use", "try again")
    log.info("demo_verification_queued", verification_id=rid, user=user)
    return web.json_response({"id": rid, "calling": masked(phone) if phone else None,
                              "match": match}, status=202,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def events(request: web.Request) -> web.StreamResponse:
    """The progress of a demo verification as SSE (demo ids only)."""
    parts = request.app[PARTS]
    rid = request.match_info["id"].lower()
    owner = await parts.submissions.owner(rid) if len(rid) == 36 else None
    if owner is None or owner[0] != IDENTITY:
        raise ApiError(404, "not_found", "no such demo verification")
    return await stream_events(request, parts, rid, owner[1])


ROUTES = (
    web.get("/demo", page),
    web.post("/demo/verifications", start),
    web.get("/demo/verifications/{id}/events", events),
)
