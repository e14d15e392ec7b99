"""``/v1/verifications``: queue a verification, read its outcome (long poll), stream its
progress (Server-Sent Events). Everything goes through the Redis contract: the originator
admits, throttles and dials exactly as for a request added with XADD."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from ...client import ProgressEvent
from ...domain.request import MAX_REQUEST_BYTES, parse_request
from ...domain.webhooks import UrlRule, parse_allowed_urls
from ...exceptions import OutcomeSignatureError, RequestError
from ...storage.keys import EVENTS, result_key
from ...storage.tokens import Submitted, fingerprint
from ...tasks import cancel_and_wait
from ..web import BodyError, request_body
from .errors import ApiError
from .parts import PARTS, ApiParts, token_of

log = structlog.get_logger("ivr.api")

MAX_WAIT_S = 120.0
HEARTBEAT_S = 15.0
# Validates the other fields of a request that names no phone (the directory knows it).
_PLACEHOLDER_PHONE = "+12015550100"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}\Z")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; 415 for another content type, 400 for bad JSON, 413
    for a body that is too large, 408 for one that does not arrive."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    try:
        raw = await request_body(request, MAX_REQUEST_BYTES)
    except BodyError as e:
        raise ApiError(e.status, e.reason, e.message) from None
    try:
        # UTF-8 only (RFC 8259, 8.1; a BOM is let through): json.loads would also read
        # UTF-16 and UTF-32 bytes, in which the \u check below finds no escape.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the body is not UTF-8") from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    # A lone \ud800-\udfff escape is valid JSON but not text Redis can store; only a
    # body with a \u escape can hold one, so only such a body is checked whole.
    if "\\u" in text:
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ApiError(400, "invalid_json",
                           "the body holds a lone UTF-16 surrogate") from None
    return body


def _owner_ttl_s(parts: ApiParts, wait_s: float) -> int:
    s = parts.settings
    wait_s = max(wait_s, s.request_ttl_s)
    return int(s.result_ttl_s + wait_s + s.ring_timeout_s + s.max_call_s + 600)


@functools.cache
def _callback_rules(allowed_urls: str) -> tuple[UrlRule, ...]:
    return parse_allowed_urls(allowed_urls)


def validate(body: dict[str, Any], allowed_urls: str = "") -> tuple[str, str, float]:
    """The request's id (made when missing), its contract JSON and how long it may wait to
    be placed (0 for the default); RequestError (the ``rejected`` outcome's detail) if the
    request is bad. A request with a ``user`` and no ``phone`` passes: the originator finds
    the phone in the user directory. A ``callback_url`` must fall under ``allowed_urls``
    (CALLMFA_WEBHOOK_ALLOWED_URLS), as the originator checks it."""
    request = {**body, "id": str(uuid.uuid4())} if body.get("id") is None else dict(body)
    checked = request if "phone" in request else {**request, "phone": _PLACEHOLDER_PHONE}
    now = time.time()
    parsed = parse_request(json.dumps(checked), requested_at=now, default_ttl_s=0,
                           callback_rules=_callback_rules(allowed_urls))
    request["id"] = parsed.id
    return (parsed.id, json.dumps({"id": parsed.id, **request}, ensure_ascii=False),
            max(0.0, parsed.expires_at - now))


async def create(request: web.Request) -> web.Response:
    """Queue a verification: 202 {"id"}; 400 with the ``rejected`` detail if it is bad."""
    parts = request.app[PARTS]
    token = token_of(request)
    body = await json_body(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "invalid_idempotency_key",
                       "Idempotency-Key must be 1 to 255 printable ASCII characters")
    try:
        rid, payload, wait_s = validate(body, parts.settings.webhook_allowed_urls)
    except RequestError as e:
        raise ApiError(400, e.detail, e.message) from None
    found = await parts.submissions.submit(
        token.name, rid, payload, owner_ttl_s=_owner_ttl_s(parts, wait_s),
        idempotency_key=key, fingerprint=fingerprint(body),
    )
    if found.verdict is Submitted.ID_IN_USE:
        raise ApiError(409, "id_in_use", "this id belongs to another verification")
    if found.verdict is Submitted.REPLAY and found.fingerprint != fingerprint(body):
        raise ApiError(409, "idempotency_key_reused",
                       "this Idempotency-Key was used with another body")
    if found.verdict is Submitted.QUEUED:
        if parts.observer is not None:
            parts.observer.api_verification_submitted()
        log.info("api_verification_queued", verification_id=found.id,
                 directory=("phone" not in body))
    return web.json_response({"id": found.id}, status=202,
                             headers={"Location": f"/v1/verifications/{found.id}"})


async def _owned(request: web.Request) -> tuple[ApiParts, str, int]:
    """The id of the path, if the request's token may see it, and when it was queued (ms);
    404 otherwise (another token's id looks like no id at all)."""
    parts = request.app[PARTS]
    rid = request.match_info["id"].lower()
    owner = await parts.submissions.owner(rid) if _UUID.match(rid) else None
    token = token_of(request)
    if owner is None or (owner[0] != token.name and token.scope != "admin"):
        raise ApiError(404, "not_found", "no such verification")
    return parts, rid, owner[1]


async def events_of(parts: ApiParts, rid: str, since_ms: int) -> list[dict[str, str]]:
    """The progress events of ``rid`` so far (from ``callmfa:events``, since it was queued)."""
    entries: Any = await parts.redis.xrange(EVENTS, min=f"{max(since_ms - 1, 0)}-0",
                                            max="+", count=10_000)
    out = []
    for _, raw in entries:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields.get("id") == rid:
            out.append({k: v for k, v in fields.items() if k != "id"})
    return out


async def _outcome(parts: ApiParts, rid: str) -> bytes | None:
    raw: Any = await parts.redis.get(result_key(rid))
    if raw is None:
        return None
    try:
        parts.parse(raw)
    except (OutcomeSignatureError, ValueError) as e:
        log.error("api_outcome_refused", verification_id=rid, error=str(e))
        raise ApiError(502, "outcome_unverified",
                       "the stored outcome failed its signature check") from None
    data: bytes = raw
    return data


def _wait_s(request: web.Request) -> float:
    text = request.query.get("wait", "0")
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_S:
        raise ApiError(400, "invalid_wait", f"wait must be 0 to {MAX_WAIT_S:g} seconds")
    return wait


async def read(request: web.Request) -> web.Response:
    """200 and the outcome object as the contract defines it; 202 and the events so far
    while there is none; ``?wait=S`` holds the request until the outcome (a long poll on
    the shared result listener)."""
    wait = _wait_s(request)
    parts, rid, since_ms = await _owned(request)
    raw = await _outcome(parts, rid)
    if raw is None and wait > 0:
        with contextlib.suppress(OutcomeSignatureError):  # answered below, as the key holds it
            await parts.results.wait(rid, wait, submitted_at=since_ms / 1000 - 1)
        raw = await _outcome(parts, rid)
    if raw is not None:
        return web.Response(body=raw, content_type="application/json")
    return web.json_response({"id": rid, "status": "pending",
                              "events": await events_of(parts, rid, since_ms)}, status=202)


def _sse(event: ProgressEvent) -> bytes:
    data = {"id": event.id, **{k: v for k, v in event.fields.items() if k != "id"}}
    return f"event: {event.event}\ndata: {json.dumps(data)}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    """The progress events as Server-Sent Events, from the first, ending with ``finished``."""
    parts, rid, since_ms = await _owned(request)
    return await stream_events(request, parts, rid, since_ms)


async def stream_events(request: web.Request, parts: ApiParts, rid: str,
                        since_ms: int) -> web.StreamResponse:
    """Stream ``rid``'s events (shared with the demo page); a comment line every 15 s keeps
    proxies from closing a quiet stream."""
    s = parts.settings
    lifetime = s.request_ttl_s + s.ring_timeout_s + s.max_call_s + s.outcome_grace_s + 30
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()

    async def pump(events: AsyncIterator[ProgressEvent]) -> None:
        try:
            async for event in events:
                await queue.put(event)
        finally:
            await queue.put(None)

    reader = asyncio.create_task(
        pump(parts.watcher.watch(rid, since_ms=max(since_ms - 1, 0), timeout_s=lifetime)),
        name="api-events")
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                break
            await response.write(_sse(event))
        try:
            await reader
        except (RedisError, OSError) as e:  # the stream ends; the client may read the outcome
            log.warning("api_events_lost", verification_id=rid, error=str(e))
    finally:
        await cancel_and_wait(reader)
    await response.write_eof()
    return response


ROUTES = (
    web.post("/v1/verifications", create),
    web.get("/v1/verifications/{id}", read),
    web.get("/v1/verifications/{id}/events", stream),
)
