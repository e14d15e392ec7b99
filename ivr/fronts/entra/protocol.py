"""The External Authentication Method protocol, sans-IO: the discovery document, Entra's
authorize request, the validation of its ``id_token_hint``, and the ``id_token`` callmfa
answers with (entra-docs, concept-authentication-external-method-provider.md).

Nothing here reads a socket or the clock: keys and ``now`` are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .keys import SigningKey

# Entra abandons the sign-in 5 minutes after it redirects the browser to callmfa.
MAX_REQUEST_AGE_S = 300
CLOCK_SKEW_S = 60
ID_TOKEN_LIFETIME_S = 300
# The acr values a phone call satisfies (possession of the phone), in callmfa's preference.
SATISFIED_ACR = ("possessionorinherence", "knowledgeorpossession")
AMR = ("tel",)  # RFC 8176: confirmation by telephone
MAX_FIELD_CHARS = 16_384


class EntraError(Exception):
    """The request is refused. ``reason`` is one word (logged and counted); ``redirect`` is
    False when the answer must not go to ``redirect_uri`` (it is not one callmfa trusts)."""

    def __init__(self, reason: str, message: str, *, redirect: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.redirect = redirect


@dataclass(frozen=True)
class AuthorizeRequest:
    """Entra's form POST to the authorization endpoint, its form checked."""

    client_id: str
    redirect_uri: str
    nonce: str
    state: str
    id_token_hint: str
    claims: str
    client_request_id: str


@dataclass(frozen=True)
class Hint:
    """What callmfa takes from a valid ``id_token_hint``."""

    sub: str
    oid: str
    tid: str
    preferred_username: str
    iat: int


def discovery(issuer: str) -> dict[str, Any]:
    """callmfa's ``/.well-known/openid-configuration``; ``issuer`` exactly as configured."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/authorize",
        "jwks_uri": f"{base}/jwks",
        "response_types_supported": ["id_token"],
        "response_modes_supported": ["form_post"],
        "scopes_supported": ["openid"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["iss", "aud", "sub", "tid", "oid", "nonce", "iat", "exp", "acr",
                             "amr"],
        "claims_parameter_supported": True,
    }


def parse_authorize(form: Mapping[str, str], *, client_id: str,
                    redirect_uris: frozenset[str]) -> AuthorizeRequest:
    """The request's fields; EntraError if it is not an EAM request callmfa answers. A
    ``redirect_uri`` or ``client_id`` it does not know gets no redirect (an open redirector
    otherwise)."""
    def text(name: str, *, required: bool = True) -> str:
        value = form.get(name, "")
        if len(value) > MAX_FIELD_CHARS:
            raise EntraError("invalid_request", f"{name} is too long", redirect=False)
        if required and not value:
            raise EntraError("invalid_request", f"{name} is missing")
        return value

    redirect_uri = text("redirect_uri", required=False)
    if redirect_uri not in redirect_uris:
        raise EntraError("redirect_uri_not_allowed",
                         "redirect_uri is not one of CALLMFA_ENTRA_REDIRECT_URIS", redirect=False)
    if text("client_id", required=False) != client_id:
        raise EntraError("unknown_client", "client_id is not CALLMFA_ENTRA_CLIENT_ID",
                         redirect=False)
    if "openid" not in text("scope").split():
        raise EntraError("invalid_scope", "scope must include openid")
    if text("response_type") != "id_token":
        raise EntraError("unsupported_response_type", "response_type must be id_token")
    if text("response_mode", required=False) not in ("", "form_post"):
        raise EntraError("invalid_request", "response_mode must be form_post")
    return AuthorizeRequest(
        client_id=client_id, redirect_uri=redirect_uri, nonce=text("nonce"),
        state=text("state", required=False), id_token_hint=text("id_token_hint"),
        claims=text("claims", required=False),
        client_request_id=text("client-request-id", required=False))


def validate_hint(token: str, keys: KeySet, *, issuer_template: str, audience: str | None,
                  tenants: frozenset[str], now: float) -> Hint:
    """The hint's identity, once its RS256 signature (``keys``: Entra's JWKS), issuer
    (Entra's discovery ``issuer``, ``{tenantid}`` being the hint's ``tid``), audience
    (None: not checked), tenant and age are right. Entra issues the hint already expired:
    its ``exp`` is not checked, its ``iat`` must be under 5 minutes old."""
    try:
        claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
    # joserfc's checks of the header raise TypeError on a value of the wrong type ("crit").
    except (JoseError, ValueError, TypeError, KeyError, RecursionError) as e:
        raise EntraError("invalid_hint", f"id_token_hint: {type(e).__name__}") from None
    ids = [claims.get(n) for n in ("tid", "sub", "oid")]
    if not all(isinstance(v, str) and v for v in ids):
        raise EntraError("invalid_hint", "id_token_hint lacks tid, sub or oid")
    tid, sub, oid = (str(v) for v in ids)
    if claims.get("iss") != issuer_template.replace("{tenantid}", tid):
        raise EntraError("wrong_issuer", "id_token_hint has another issuer")
    aud = claims.get("aud")
    if audience is not None and audience != aud and not (
            isinstance(aud, list) and audience in aud):
        raise EntraError("wrong_audience", "id_token_hint has another audience")
    if tenants and tid.lower() not in tenants:
        raise EntraError("tenant_not_allowed", "this tenant is not in CALLMFA_ENTRA_TENANTS")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise EntraError("invalid_hint", "id_token_hint lacks iat")
    if now - iat > MAX_REQUEST_AGE_S or iat - now > CLOCK_SKEW_S:
        raise EntraError("stale_request", "the sign-in request is older than 5 minutes")
    username = claims.get("preferred_username")
    return Hint(sub=sub, oid=oid, tid=tid, iat=iat,
                preferred_username=username if isinstance(username, str) else "")


def choose_acr(claims: str) -> str:
    """The one ``acr`` to answer, out of those the ``claims`` parameter requests."""
    requested: Any = None
    if claims:
        try:
            requested = json.loads(claims)["id_token"]["acr"]["values"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise EntraError("invalid_request", "claims is not an id_token acr request") from None
    if requested is None:
        return SATISFIED_ACR[0]
    if not isinstance(requested, list):
        raise EntraError("invalid_request", "claims' acr values must be a list")
    for value in requested:
        if value in SATISFIED_ACR:
            return str(value)
    raise EntraError("unsupported_acr", "no requested acr is satisfied by a phone call")


def id_token(key: SigningKey, *, issuer: str, request: AuthorizeRequest, hint: Hint,
             acr: str, now: float) -> str:
    """The signed (RS256, ``kid``) ``id_token`` of an approved sign-in."""
    iat = int(now)
    claims = {
        "iss": issuer, "aud": request.client_id, "sub": hint.sub, "tid": hint.tid,
        "oid": hint.oid, "nonce": request.nonce, "iat": iat, "nbf": iat,
        "exp": iat + ID_TOKEN_LIFETIME_S, "acr": acr, "amr": list(AMR),
    }
    if hint.preferred_username:
        claims["preferred_username"] = hint.preferred_username
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key.key)
