"""The EAM endpoints on the HTTP API, under the path of CALLMFA_ENTRA_ISSUER:
``/.well-known/openid-configuration`` and ``/jwks`` (reached by Entra), ``/authorize`` (the
browser's form POST from Entra), and the waiting page's ``/sessions/<id>/events`` and
``/sessions/<id>/answer`` (which form-POSTs the answer back to ``redirect_uri``).

A sign-in session lives in Redis for the 5 minutes Entra waits, under an unguessable id;
its answer can be taken once. The call goes through the Redis contract like any request.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...client import VerificationClient
from ...domain.directory import DirectoryEntry, UserDirectory
from ...domain.flow import MATCH_DIGITS
from ...domain.outcome import Outcome
from ...domain.users import UserNameError, normalise_user
from ...exceptions import (
    DirectoryError,
    OutcomeBindingError,
    OutcomeSignatureError,
    SettingsError,
)
from ...settings import Settings
from ..api.demo import masked
from ..api.parts import PARTS
from ..api.verifications import stream_events
from ..web import BodyError, request_body
from .entra_keys import EntraKeys
from .keys import SigningKeys
from .protocol import (
    MAX_REQUEST_AGE_S,
    AuthorizeRequest,
    EntraError,
    Hint,
    choose_acr,
    discovery,
    id_token,
    parse_authorize,
    validate_hint,
)

log = structlog.get_logger("ivr.fronts.entra")

SESSION_PREFIX = "callmfa:entra:session:"
NONCE_PREFIX = "callmfa:entra:seen:"
ANSWER_WAIT_S = 10.0
MAX_FORM_BYTES = 64 * 1024
_SID = re.compile(r"[A-Za-z0-9_-]{32}")
# Entra sends the browser here at the top level: no other site may frame the page.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Session:
    """One sign-in between the authorize request and its answer."""

    rid: str
    user: str
    since_ms: int
    redirect_uri: str
    state: str
    nonce: str
    client_id: str
    acr: str
    sub: str
    oid: str
    tid: str
    preferred_username: str
    iat: int


class EntraFront:
    """The EAM's handlers; ``start`` and ``close`` own its HTTP client (Entra's keys) and
    its Redis client (the calls)."""

    def __init__(self, settings: Settings, keys: SigningKeys, directory: UserDirectory,
                 redis: Redis, *, on_refused: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._on_refused = on_refused  # the metrics' entra_request_refused
        self._keys = keys
        self._keys_mtime = self._mtime()
        self._directory = directory
        self._redis = redis
        self._client = VerificationClient(redis, signing_key=settings.signing_key,
                                          previous_signing_key=settings.signing_key_previous,
                                          insecure_unsigned=bool(settings.insecure_unsigned))
        self._http: aiohttp.ClientSession | None = None
        self._entra: EntraKeys | None = None
        self.refused: Counter[str] = Counter()  # reason -> count
        self.prefix = urlsplit(settings.entra_issuer).path.rstrip("/")

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.settings.entra_signing_key_file).st_mtime_ns
        except OSError:
            return None

    @property
    def keys(self) -> SigningKeys:
        """callmfa's keys, read again when the key file changes (``callmfa keys rotate``);
        a file that cannot be read keeps the keys already loaded (logged)."""
        mtime = self._mtime()
        if mtime is not None and mtime != self._keys_mtime:
            self._keys_mtime = mtime
            try:
                self._keys = SigningKeys.from_file(self.settings.entra_signing_key_file)
                log.info("entra_keys_reloaded", kids=[k.kid for k in self._keys.keys])
            except SettingsError as e:
                log.error("entra_keys_reload_failed", error=str(e))
        return self._keys

    async def start(self, app: web.Application | None = None) -> None:
        """Open the client of Entra's discovery document and JWKS."""
        self._http = aiohttp.ClientSession()
        self._entra = EntraKeys(self._http, self.settings.entra_discovery_url,
                                timeout_s=self.settings.connect_timeout_s)

    async def close(self, app: web.Application | None = None) -> None:
        """Close the HTTP client and stop the outcome subscription that the answers
        started (the Redis client is the caller's)."""
        await self._client.stop()
        if self._http is not None:
            await self._http.close()

    def routes(self) -> web.RouteTableDef:
        """The endpoints, under the issuer's path."""
        table = web.RouteTableDef()
        p = self.prefix
        table.get(f"{p}/.well-known/openid-configuration")(self.discovery)
        table.get(f"{p}/jwks")(self.jwks)
        table.post(f"{p}/authorize")(self.authorize)
        table.get(f"{p}/sessions/{{sid}}/events")(self.events)
        table.get(f"{p}/sessions/{{sid}}/answer")(self.answer)
        return table

    async def discovery(self, request: web.Request) -> web.Response:
        """The discovery document."""
        return web.json_response(discovery(self.settings.entra_issuer),
                                 headers={"Cache-Control": "max-age=3600"})

    async def jwks(self, request: web.Request) -> web.Response:
        """callmfa's public keys."""
        return web.json_response(self.keys.jwks(), headers={"Cache-Control": "max-age=3600"})

    def refuse(self, request: web.Request, e: EntraError, **facts: object) -> None:
        """Log and count a refusal."""
        self._count(e.reason)
        log.warning("entra_request_refused", reason=e.reason, error=e.message,
                    peer=request.remote, **facts)

    def _count(self, reason: str) -> None:
        self.refused[reason] += 1
        if self._on_refused is not None:
            self._on_refused(reason)

    async def authorize(self, request: web.Request) -> web.Response:
        """Entra's authorize request: checked, the user found, the call queued, the waiting
        page shown; a refusal goes back to Entra (or, without a trusted redirect_uri, is an
        error page)."""
        s = self.settings
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            return _page(413, "Request too large", "<p>The sign-in request is too large.</p>")
        try:
            authz = parse_authorize(await _form(request), client_id=s.entra_client_id,
                                    redirect_uris=s.entra_redirect_uri_set)
        except EntraError as e:
            self.refuse(request, e)
            return _page(400, "Sign-in refused", f"<p>{html.escape(e.message)}</p>")
        try:
            hint, acr = await self._check(authz)
            await self._first_use(authz, hint)
            entry = await self._find(hint)
            sid, session, match = await self._call(authz, hint, acr, entry)
        except EntraError as e:
            self.refuse(request, e, client_request_id=authz.client_request_id)
            return _form_post(authz.redirect_uri, _error_fields(e, authz.state))
        log.info("entra_call_queued", verification_id=session.rid, user=entry.user,
                 tid=hint.tid, client_request_id=authz.client_request_id)
        return self._waiting_page(sid, entry, match)

    async def _check(self, authz: AuthorizeRequest) -> tuple[Hint, str]:
        assert self._entra is not None, "start() first"
        acr = choose_acr(authz.claims)
        entra = await self._entra.get(_kid(authz.id_token_hint))
        audience = self.settings.entra_hint_audience or self.settings.entra_client_id
        hint = validate_hint(authz.id_token_hint, entra.keys,
                             issuer_template=entra.issuer_template,
                             audience=None if audience == "off" else audience,
                             tenants=self.settings.entra_tenant_set, now=time.time())
        return hint, acr

    async def _first_use(self, authz: AuthorizeRequest, hint: Hint) -> None:
        """A hint and nonce are answered once: a replayed authorize request places no
        second call."""
        seen = hashlib.sha256(f"{hint.tid}\0{authz.nonce}\0{authz.id_token_hint}".encode())
        try:
            first = await self._redis.set(NONCE_PREFIX + seen.hexdigest(), 1, nx=True,
                                          ex=MAX_REQUEST_AGE_S + 120)
        except (RedisError, OSError):
            raise EntraError("unavailable", "callmfa's Redis cannot be reached") from None
        if not first:
            raise EntraError("replayed", "this sign-in request was already answered")

    async def _find(self, hint: Hint) -> DirectoryEntry:
        for name in (hint.oid, hint.preferred_username):
            try:
                user = normalise_user(name)
            except UserNameError:
                continue
            try:
                entry = await self._directory.lookup(user)
            except DirectoryError as e:  # LDAP down or refusing callmfa's bind
                log.warning("entra_directory_failed", error=str(e))
                raise EntraError("unavailable", "callmfa's user directory failed") from None
            if entry is not None:
                return entry
        raise EntraError("unknown_user", "the directory has no phone for this user")

    async def _call(self, authz: AuthorizeRequest, hint: Hint, acr: str,
                    entry: DirectoryEntry) -> tuple[str, Session, str | None]:
        left = hint.iat + MAX_REQUEST_AGE_S - time.time()
        match = _draw_match() if entry.mode == "match" else None
        since_ms = int(time.time() * 1000)
        try:
            rid = await self._client.submit(
                user=entry.user, mode="match" if match else None, match_number=match,
                expires_in_s=max(1.0, min(60.0, left)),
                context={"front": "entra", "tid": hint.tid})
            session = Session(rid=rid, user=entry.user, since_ms=since_ms,
                              redirect_uri=authz.redirect_uri, state=authz.state,
                              nonce=authz.nonce, client_id=authz.client_id, acr=acr,
                              sub=hint.sub, oid=hint.oid, tid=hint.tid,
                              preferred_username=hint.preferred_username, iat=hint.iat)
            sid = secrets.token_urlsafe(24)
            await self._redis.set(_key(sid), json.dumps(asdict(session)),
                                  ex=max(1, int(left) + 60))
        except (RedisError, OSError):
            raise EntraError("unavailable", "callmfa's Redis cannot be reached") from None
        return sid, session, match

    def _waiting_page(self, sid: str, entry: DirectoryEntry,
                      match: str | None) -> web.Response:
        template = resources.files(__package__).joinpath("waiting.html").read_text()
        base = f"{self.prefix}/sessions/{sid}"
        body = (template.replace("{calling}", html.escape(masked(entry.phone)))
                .replace("{match}", match or "").replace("{hidden}", "" if match else "hidden")
                .replace("{events}", f"{base}/events").replace("{answer}", f"{base}/answer"))
        return web.Response(text=body, content_type="text/html",
                            headers={"Content-Security-Policy": _CSP,
                                     "Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The call's progress for the waiting page (SSE)."""
        session = await self._session(request, take=False)
        return await stream_events(request, request.app[PARTS], session.rid, session.since_ms)

    async def answer(self, request: web.Request) -> web.Response:
        """The answer to Entra, once: the id_token if the call was approved, else
        ``access_denied``."""
        session = await self._session(request, take=True)
        left = session.iat + MAX_REQUEST_AGE_S - time.time()
        try:
            record = await self._client.wait(session.rid, max(0.1, min(ANSWER_WAIT_S, left)),
                                             user=session.user)
            outcome = record.outcome.value if record is not None else "no_outcome"
        except (OutcomeSignatureError, OutcomeBindingError, RedisError, OSError) as e:
            # Fail closed: an outcome that cannot be trusted or read is a refusal.
            record, outcome = None, "outcome_refused"
            self._count(outcome)
            log.warning("entra_request_refused", reason=outcome, error=str(e),
                        verification_id=session.rid)
        log.info("entra_answered", verification_id=session.rid, outcome=outcome)
        if record is None or record.outcome is not Outcome.APPROVED:
            return _form_post(session.redirect_uri, {
                "error": "access_denied", "error_description": f"callmfa: {outcome}",
                "state": session.state})
        token = id_token(self.keys.signing, issuer=self.settings.entra_issuer,
                         request=_authz_of(session), hint=_hint_of(session), acr=session.acr,
                         now=time.time())
        return _form_post(session.redirect_uri, {"id_token": token, "state": session.state})

    async def _session(self, request: web.Request, *, take: bool) -> Session:
        sid = request.match_info["sid"]
        if not _SID.fullmatch(sid):
            raise web.HTTPNotFound()
        raw = await (self._redis.getdel(_key(sid)) if take else self._redis.get(_key(sid)))
        if raw is None:
            raise web.HTTPNotFound()
        return Session(**json.loads(raw))


def _draw_match() -> str:
    return f"{secrets.randbelow(10 ** MATCH_DIGITS):0{MATCH_DIGITS}d}"


def _key(sid: str) -> str:
    return SESSION_PREFIX + sid


async def _form(request: web.Request) -> dict[str, str]:
    """The POSTed form's text fields; EntraError if it cannot be read."""
    try:
        await request_body(request, MAX_FORM_BYTES)  # read within its deadline, then kept
        posted = await request.post()
    except BodyError as e:
        raise EntraError(e.reason, e.message) from None
    except (ValueError, LookupError):  # not UTF-8, an unknown charset, a bad part
        raise EntraError("invalid_request", "the sign-in form cannot be read") from None
    return {k: v for k, v in posted.items() if isinstance(v, str)}


def _kid(token: str) -> str | None:
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError, RecursionError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def _authz_of(session: Session) -> AuthorizeRequest:
    return AuthorizeRequest(client_id=session.client_id, redirect_uri=session.redirect_uri,
                            nonce=session.nonce, state=session.state, id_token_hint="",
                            claims="", client_request_id="")


def _hint_of(session: Session) -> Hint:
    return Hint(sub=session.sub, oid=session.oid, tid=session.tid,
                preferred_username=session.preferred_username, iat=session.iat)


def _error_fields(e: EntraError, state: str) -> dict[str, str]:
    error = "invalid_request" if e.reason == "invalid_request" else "access_denied"
    return {"error": error, "error_description": f"callmfa: {e.reason}", "state": state}


def _form_post(url: str, fields: dict[str, Any]) -> web.Response:
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in fields.items())
    body = (f'<form method="post" action="{html.escape(url)}">{inputs}'
            '<noscript><button type="submit">Continue</button></noscript></form>'
            "<script>document.forms[0].submit()</script>")
    origin = urlsplit(url)
    return _page(200, "Signing in", body,
                 form_action=f"{origin.scheme}://{origin.netloc}")


def _page(status: int, title: str, body: str, *, form_action: str = "'none'") -> web.Response:
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head><body>{body}</body></html>")
    csp = _CSP.replace("form-action 'none'", f"form-action {form_action}")
    return web.Response(status=status, text=text, content_type="text/html",
                        headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"})
