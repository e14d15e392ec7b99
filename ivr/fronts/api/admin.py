"""``/v1/admin`` (scope admin): block, unblock, the block list, bypass and users, as the CLI
does them (:mod:`ivr.ops.admin`, :class:`ivr.storage.guard.Guard`); every change is audited
with ``api:<token name>`` as its actor."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import structlog
from aiohttp import web

from ...domain.directory import DirectoryEntry
from ...domain.outcome import iso
from ...domain.request import USER_MODES, check_mode
from ...domain.users import UserNameError, normalise_user
from ...exceptions import RequestError
from ...ops import admin as ops
from .errors import ApiError
from .parts import PARTS, UserAdmin, token_of
from .verifications import json_body, validate

log = structlog.get_logger("ivr.api")


def _actor(request: web.Request) -> str:
    return f"api:{token_of(request).name}"


def _user(value: object) -> str:
    try:
        return normalise_user(value)
    except UserNameError as e:
        raise ApiError(400, "invalid_user", str(e)) from None


def _duration(body: dict[str, Any]) -> int | None:
    """The body's ``for`` in seconds; None when there is none."""
    value = body.get("for")
    if value is None:
        return None
    try:
        return ops.duration(str(value))
    except argparse.ArgumentTypeError as e:
        raise ApiError(400, "invalid_duration", str(e)) from None


def _text(body: Mapping[str, object], name: str, default: str) -> str:
    """The field or query parameter ``name``: printable (an audit row is one line)."""
    value = body.get(name, default)
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise ApiError(400, f"invalid_{name}", f"{name} must be printable text, 200 at most")
    return value


async def blocked(request: web.Request) -> web.Response:
    """The blocked users and until when."""
    entries = await request.app[PARTS].guard.blocked()
    return web.json_response({"blocked": [{"user": e.user, "until": iso(e.until)}
                                          for e in entries]})


async def block(request: web.Request) -> web.Response:
    """Block a user (``for``: 600, 10m, 12h, 90d; default CALLMFA_FRAUD_BLOCK_S, and needed
    when that is 0). A block is only lengthened: a shorter one is 409 unless ``replace``."""
    parts = request.app[PARTS]
    body = await json_body(request)
    user = _user(body.get("user"))
    seconds = ops.block_duration(_duration(body), parts.settings)
    if seconds is None:
        raise ApiError(400, "duration_required", ops.NO_BLOCK_LENGTH.replace("--for", '"for"'))
    replace = body.get("replace", False)
    if not isinstance(replace, bool):
        raise ApiError(400, "invalid_replace", "replace must be true or false")
    if not await parts.guard.block(user, seconds, actor=_actor(request),
                                   reason=_text(body, "reason", "manual"), replace=replace):
        raise ApiError(409, "longer_block_kept",
                       "the user's current block ends later; replace: true sets this one",
                       until=iso(await parts.guard.blocked_until(user)))
    return web.json_response({"user": user, "until": iso(await parts.guard.blocked_until(user))},
                             status=201)


async def unblock(request: web.Request) -> web.Response:
    """Lift a user's block; 404 if the user was not blocked."""
    parts = request.app[PARTS]
    user = _user(request.match_info["user"])
    if not await parts.guard.unblock(user, actor=_actor(request),
                                     reason=_text(request.query, "reason", "")):
        raise ApiError(404, "not_blocked", "this user is not blocked")
    return web.json_response({"user": user})


async def bypass(request: web.Request) -> web.Response:
    """The user's next request within ``for`` (default 10m) ends ``bypassed``, uncalled;
    409 if the user is blocked."""
    parts = request.app[PARTS]
    body = await json_body(request)
    user = _user(body.get("user"))
    requested = _duration(body)
    seconds = 600 if requested is None else requested
    if not await ops.bypass(parts.guard, user, seconds, actor=_actor(request),
                            reason=_text(body, "reason", "")):
        raise ApiError(409, "user_blocked", "a blocked user gets no bypass: unblock first")
    return web.json_response({"user": user, "for_s": seconds}, status=201)


def _users(request: web.Request) -> UserAdmin:
    users = request.app[PARTS].users
    if users is None:
        raise ApiError(501, "no_directory", "this callmfa has no user directory")
    return users


async def get_user(request: web.Request) -> web.Response:
    """A user's directory entry; 404 if unknown."""
    entry = await _users(request).lookup(_user(request.match_info["user"]))
    if entry is None:
        raise ApiError(404, "not_found", "no such user")
    return web.json_response(asdict(entry))


async def put_user(request: web.Request) -> web.Response:
    """Add or replace a user's entry (phone, mode, lang); audited (by the directory)."""
    users = _users(request)
    user = _user(request.match_info["user"])
    body = await json_body(request)
    mode, lang = body.get("mode", "standard"), body.get("lang", "en")
    # A request's check takes null as "the default": an entry stores what it is given.
    for name, value, detail in (("mode", mode, "unsupported_mode"),
                                ("lang", lang, "invalid_lang")):
        if not isinstance(value, str):
            raise ApiError(400, detail, f"{name} must be a string")
    try:  # the same checks as a request's, with an entry's modes (match: the request's hash)
        check_mode(mode, USER_MODES)
        validate({"user": user, "phone": body.get("phone"), "lang": lang})
    except RequestError as e:
        raise ApiError(400, e.detail, e.message) from None
    entry = DirectoryEntry(user=user, phone=str(body["phone"]), mode=mode, lang=lang)
    await users.set(entry, actor=_actor(request))  # audited by the directory
    return web.json_response(asdict(entry))


async def delete_user(request: web.Request) -> web.Response:
    """Remove a user's entry; 404 if unknown; audited (by the directory)."""
    user = _user(request.match_info["user"])
    if not await _users(request).delete(user, actor=_actor(request)):
        raise ApiError(404, "not_found", "no such user")
    return web.json_response({"user": user})


ROUTES = (
    web.get("/v1/admin/blocks", blocked),
    web.post("/v1/admin/blocks", block),
    web.delete("/v1/admin/blocks/{user}", unblock),
    web.post("/v1/admin/bypasses", bypass),
    web.get("/v1/admin/users/{user}", get_user),
    web.put("/v1/admin/users/{user}", put_user),
    web.delete("/v1/admin/users/{user}", delete_user),
)
