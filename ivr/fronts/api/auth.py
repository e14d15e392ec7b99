"""Bearer tokens on every /v1 path, scope admin on /v1/admin, a rate limit per token."""

from __future__ import annotations

import structlog
from aiohttp import web

from ..web import Handler
from .errors import error
from .parts import PARTS, TOKEN, ApiParts

log = structlog.get_logger("ivr.api")

API_PREFIX = "/v1/"
ADMIN_PREFIX = "/v1/admin/"


def _refused(parts: ApiParts, request: web.Request, status: int, reason: str,
             **facts: object) -> web.Response:
    if parts.observer is not None:
        parts.observer.api_request_refused(reason)
    log.warning("api_request_refused", reason=reason, method=request.method,
                path=request.path, peer=request.remote, **facts)
    if status == 401:
        # The same answer for no token, a malformed, unknown, revoked or expired one.
        return error(401, "unauthorized", "a valid bearer token is required",
                     headers={"WWW-Authenticate": 'Bearer realm="callmfa"'})
    if status == 403:
        return error(403, "forbidden", "this token may not do this")
    return error(429, "rate_limited", "too many requests for this token; retry later",
                 headers={"Retry-After": str(facts.get("retry_after", 60))})


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /v1 path needs a live token; /v1/admin needs scope admin; each token has a rate
    limit per minute. 401 and 403 reveal nothing (not whether a token exists, or a path)."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    parts = request.app[PARTS]
    presented = _bearer(request)
    if presented is None:
        return _refused(parts, request, 401, "unauthorized", why="no_token")
    token = await parts.tokens.check(presented)
    if token is None:
        return _refused(parts, request, 401, "unauthorized", why="unknown_or_expired")
    if request.path.startswith(ADMIN_PREFIX) and token.scope != "admin":
        return _refused(parts, request, 403, "forbidden", token=token.name)
    wait = await parts.tokens.spend(token.name, parts.settings.api_rate_per_min)
    if wait is not None:
        return _refused(parts, request, 429, "rate_limited", token=token.name,
                        retry_after=wait)
    request[TOKEN] = token
    structlog.contextvars.bind_contextvars(api_token=token.name)
    try:
        return await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("api_token")
