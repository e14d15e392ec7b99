"""The aiohttp side every provider endpoint shares: reading a bounded body, the peer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from ..web import BodyError, request_body
from .gateway import MAX_BODY_BYTES, ProviderError


async def body_of(request: web.Request) -> bytes:
    """The request's whole body, at most ``MAX_BODY_BYTES``, within ``BODY_TIMEOUT_S``."""
    try:
        return await request_body(request, MAX_BODY_BYTES)
    except BodyError as e:
        raise ProviderError(e.reason, e.message) from None


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProviderError("invalid_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ProviderError("invalid_json", "the body is not a JSON object")
    return data


def form_or_json(raw: bytes) -> dict[str, str]:
    """A body of form fields or a flat JSON object, as names to strings."""
    try:
        data = json.loads(raw) if raw.lstrip()[:1] == b"{" else None
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise ProviderError("invalid_body", "the body is not UTF-8") from None


def peer(request: web.Request) -> str | None:
    """Who sent the request (for the refusal log line)."""
    return request.remote
