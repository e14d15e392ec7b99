"""A fake Microsoft Entra for the EAM tests: its own signing key, discovery document and
JWKS (served by :meth:`FakeEntra.app`), ``id_token_hint``s it mints, the authorize form it
sends, and the validation of callmfa's ``id_token`` exactly as Entra's docs say Entra does
it (RS256, ``kid`` in callmfa's JWKS, ``x5c`` present; ``iss``, ``aud``, ``sub``, ``nonce``;
exactly one requested ``acr``; ``amr: ["tel"]``)."""

from __future__ import annotations

import base64
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

REDIRECT_URI = "https://login.microsoftonline.com/common/federation/externalauthprovider"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
CLIENT_ID = "eam-client-0001"
ACR = ["possessionorinherence"]
AMR = ["face", "fido", "fpt", "hwk", "iris", "otp", "pop", "retina", "sc", "sms", "swk", "tel",
       "vbm"]


def claims_parameter(acr: list[str] = ACR) -> str:
    """The ``claims`` Entra sends."""
    return json.dumps({"id_token": {"acr": {"essential": True, "values": acr},
                                    "amr": {"essential": True, "values": AMR}}})


@dataclass
class FakeEntra:
    """Entra's side. ``base`` is where :meth:`app` is served (set it once it listens)."""

    base: str = "http://entra.invalid"
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(
        2048, parameters={"kid": "entra-1", "alg": "RS256", "use": "sig"}))
    discovery_fetches: int = 0
    received: list[dict[str, str]] = field(default_factory=list)  # what reached redirect_uri
    _pending: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def issuer_template(self) -> str:
        return f"{self.base}/{{tenantid}}/v2.0"

    def issuer(self, tid: str = TENANT) -> str:
        return self.issuer_template.replace("{tenantid}", tid)

    def app(self) -> web.Application:
        """Entra's discovery document (/common/v2.0/...) and JWKS (/keys)."""
        app = web.Application()

        async def discovery(request: web.Request) -> web.Response:
            self.discovery_fetches += 1
            return web.json_response({"issuer": self.issuer_template,
                                      "jwks_uri": f"{self.base}/keys"})

        async def keys(request: web.Request) -> web.Response:
            return web.json_response(KeySet([self.key]).as_dict(private=False))

        async def start(request: web.Request) -> web.Response:
            # Entra's sign-in page: the browser form-POSTs the authorize request.
            action, form = self._pending.pop(request.match_info["key"])
            inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" '
                             f'value="{html.escape(v)}">' for k, v in form.items())
            return web.Response(content_type="text/html", text=(
                f'<form method="post" action="{html.escape(action)}">{inputs}</form>'
                "<script>document.forms[0].submit()</script>"))

        async def callback(request: web.Request) -> web.Response:
            self.received.append({k: v for k, v in (await request.post()).items()
                                  if isinstance(v, str)})
            return web.Response(content_type="text/html",
                                text='<body data-done="1">Entra received the answer</body>')

        app.router.add_get("/common/v2.0/.well-known/openid-configuration", discovery)
        app.router.add_get("/keys", keys)
        app.router.add_get("/start/{key}", start)
        app.router.add_post("/common/federation/externalauthprovider", callback)
        return app

    @property
    def redirect_uri(self) -> str:
        """This fake's own redirect_uri (allow it in CALLMFA_ENTRA_REDIRECT_URIS)."""
        return f"{self.base}/common/federation/externalauthprovider"

    def start_url(self, authorize_url: str, form: dict[str, str]) -> str:
        """A page of Entra's that makes the browser POST ``form`` to ``authorize_url``."""
        key = secrets.token_urlsafe(8)
        self._pending[key] = (authorize_url, form)
        return f"{self.base}/start/{key}"

    @property
    def discovery_url(self) -> str:
        return f"{self.base}/common/v2.0/.well-known/openid-configuration"

    def hint(self, *, oid: str = "0a1b2c3d-0000-0000-0000-00000000a11c",
             username: str = "alice@contoso.example", tid: str = TENANT,
             aud: str = CLIENT_ID, iss: str | None = None, age_s: float = 5,
             key: RSAKey | None = None, **extra: Any) -> str:
        """An id_token_hint as Entra issues it: already expired."""
        iat = int(time.time() - age_s)
        claims = {"iss": iss or self.issuer(tid), "aud": aud, "sub": f"sub-{oid}", "oid": oid,
                  "tid": tid, "preferred_username": username, "iat": iat, "nbf": iat,
                  "exp": iat, **extra}
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)

    def authorize_form(self, hint: str, **overrides: str) -> dict[str, str]:
        """The form the browser POSTs to callmfa's authorization endpoint."""
        return {"scope": "openid", "response_type": "id_token", "response_mode": "form_post",
                "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
                "nonce": secrets.token_urlsafe(16), "state": secrets.token_urlsafe(16),
                "id_token_hint": hint, "claims": claims_parameter(),
                "client-request-id": "7d6e5f4a-1111-2222-3333-444455556666", **overrides}

    @staticmethod
    def validate_id_token(token: str, jwks: dict[str, Any], *, issuer: str,
                          form: dict[str, str], hint: str) -> dict[str, Any]:
        """Entra's checks of callmfa's id_token; the claims, or AssertionError."""
        published = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        header = json.loads(_b64(token.split(".")[0]))
        assert header["alg"] == "RS256"
        entry = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        assert entry["x5c"], "x5c present"
        claims = jwt.decode(token, published, algorithms=["RS256"]).claims
        hint_claims = json.loads(_b64(hint.split(".")[1]))
        assert claims["iss"] == issuer
        assert claims["aud"] == form["client_id"]
        assert claims["sub"] == hint_claims["sub"]
        assert claims["nonce"] == form["nonce"]
        requested = json.loads(form["claims"])["id_token"]["acr"]["values"]
        assert isinstance(claims["acr"], str)
        assert claims["acr"] in requested
        assert claims["amr"] == ["tel"]
        assert claims["iat"] <= time.time() < claims["exp"]
        return claims


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
