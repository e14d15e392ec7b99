"""The API's one error shape, ``{"error": <detail>, "message": <text for a person>}``, for
every refusal: the handlers' own, aiohttp's (404, 405, 413) and the unexpected (500)."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from ..web import Handler

log = structlog.get_logger("ivr.api")

_HTTP_DETAILS = {
    400: ("bad_request", "the request is malformed"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here"),
    413: ("too_large", "the request body is too large"),
    415: ("unsupported_media_type", "send Content-Type: application/json"),
}


def error(status: int, detail: str, message: str, *, headers: dict[str, str] | None = None,
          **extra: Any) -> web.Response:
    """An error answer."""
    body = {"error": detail, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


class ApiError(Exception):
    """Raised by a handler to answer with the error shape."""

    def __init__(self, status: int, detail: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.message = message
        self.extra = extra


@web.middleware
async def error_shape(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the API's shape; an unexpected failure is logged and answers 500."""
    try:
        return await handler(request)
    except ApiError as e:
        return error(e.status, e.detail, e.message, **e.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail, message = _HTTP_DETAILS.get(e.status, ("http_error", e.reason))
        return error(e.status, detail, message, headers={
            k: v for k, v in e.headers.items() if k in ("Allow", "WWW-Authenticate")})
    except ConnectionResetError:
        raise
    except Exception:  # the boundary of one request: logged, answered, never a crash
        log.exception("api_request_failed", method=request.method, path=request.path)
        return error(500, "internal_error", "callmfa failed to answer; see its log")
