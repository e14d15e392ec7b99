"""A fake Microsoft Entra for the EAM tests: its own signing key, discovery document and
JWKS (served by :meth:`FakeEntra.app`), ``id_token_hint``s it mints, the authorize form it
sends, callmfa's discovery document and JWKS fetched and cached as Entra does (24 h), and
the validation of callmfa's ``id_token`` exactly as Entra's docs say Entra does it (RS256,
``kid`` in callmfa's JWKS, ``x5c`` present; ``iss``, ``aud``, ``sub``, ``nonce``; exactly
one requested ``acr``; ``amr: ["tel"]``)."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

REDIRECT_URI = "https://login.microsoftonline.com/common/federation/externalauthprovider"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
CLIENT_ID = "eam-client-0001"
ACR = ["possessionorinherence"]
JWKS_CACHE_S = 86400  # Entra caches a provider's keys for 24 h
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
    client_id: str = CLIENT_ID
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(
        2048, parameters={"kid": "entra-1", "alg": "RS256", "use": "sig"}))
    discovery_fetches: int = 0
    received: list[dict[str, str]] = field(default_factory=list)  # what reached redirect_uri
    provider_fetches: int = 0  # callmfa's JWKS fetched (not served from the cache)
    _pending: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    _provider: tuple[float, str, dict[str, Any]] | None = None  # fetched at, issuer, JWKS

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

        async def keys(request: web.Request) -> web.StreamResponse:
            # In two writes a moment apart, as a network may deliver it.
            body = json.dumps(KeySet([self.key]).as_dict(private=False)).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[:100])
            await asyncio.sleep(0.05)
            await response.write(body[100:])
            await response.write_eof()
            return response

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
             aud: str | None = None, iss: str | None = None, age_s: float = 5,
             key: RSAKey | None = None, **extra: Any) -> str:
        """An id_token_hint as Entra issues it: already expired."""
        iat = int(time.time() - age_s)
        claims = {"iss": iss or self.issuer(tid), "aud": aud or self.client_id,
                  "sub": f"sub-{oid}", "oid": oid, "tid": tid, "preferred_username": username,
                  "iat": iat, "nbf": iat, "exp": iat, **extra}
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)

    def authorize_form(self, hint: str, **overrides: str) -> dict[str, str]:
        """The form the browser POSTs to callmfa's authorization endpoint."""
        return {"scope": "openid", "response_type": "id_token", "response_mode": "form_post",
                "client_id": self.client_id, "redirect_uri": REDIRECT_URI,
                "nonce": secrets.token_urlsafe(16), "state": secrets.token_urlsafe(16),
                "id_token_hint": hint, "claims": claims_parameter(),
                "client-request-id": "7d6e5f4a-1111-2222-3333-444455556666", **overrides}

    async def provider_keys(self, session: aiohttp.ClientSession, discovery_url: str, *,
                            hosts: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        """callmfa's issuer and JWKS as Entra holds them: its discovery document, then its
        ``jwks_uri``, fetched once and cached for 24 h. ``hosts`` maps an origin to where it
        is reached here (the test's DNS: ``https://mfa.example.com`` is the sandbox's API)."""
        if self._provider is not None and time.time() - self._provider[0] < JWKS_CACHE_S:
            return self._provider[1], self._provider[2]

        def reach(url: str) -> str:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            return (hosts or {}).get(origin, origin) + url[len(origin):]

        timeout = aiohttp.ClientTimeout(total=10)
        async with session.get(reach(discovery_url), timeout=timeout) as r:
            assert r.status == 200, f"discovery: HTTP {r.status}"
            document = await r.json()
        assert document["id_token_signing_alg_values_supported"] == ["RS256"]
        async with session.get(reach(document["jwks_uri"]), timeout=timeout) as r:
            assert r.status == 200, f"jwks: HTTP {r.status}"
            jwks: dict[str, Any] = await r.json()
        self.provider_fetches += 1
        self._provider = (time.time(), document["issuer"], jwks)
        return document["issuer"], jwks

    @staticmethod
    def validate_id_token(token: str, jwks: dict[str, Any], *, issuer: str,
                          form: dict[str, str], hint: str) -> dict[str, Any]:
        """Entra's checks of callmfa's id_token; the claims, or AssertionError:

        - RS256, signed by the key of the header's ``kid`` in ``jwks`` (the provider's
          JWKS as Entra holds it), that key with an ``x5c`` certificate of that very key;
        - ``iss`` (the provider's discovery issuer), ``aud`` (the client id Entra sent),
          ``sub`` (the hint's), ``nonce`` (Entra's), a current ``iat``/``exp``;
        - exactly one ``acr``, out of those ``claims`` requested; ``amr`` is ``["tel"]``.
        """
        header = json.loads(_b64(token.split(".")[0]))
        assert header.get("alg") == "RS256", f"alg {header.get('alg')!r}"
        entries = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
        assert len(entries) == 1, f"kid {header.get('kid')!r} is not in the JWKS"
        (entry,) = entries
        assert entry.get("kty") == "RSA"
        assert entry.get("alg", "RS256") == "RS256"
        assert entry.get("x5c"), "x5c present"
        key = RSAKey.import_key(entry)
        cert = x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0]))
        assert cert.public_key() == key.get_op_key("verify"), "x5c is the key's certificate"
        claims = jwt.decode(token, key, algorithms=["RS256"]).claims
        hint_claims = json.loads(_b64(hint.split(".")[1]))
        assert claims["iss"] == issuer, "iss"
        assert claims["aud"] == form["client_id"], "aud"
        assert claims["sub"] == hint_claims["sub"], "sub"
        assert claims["nonce"] == form["nonce"], "nonce"
        requested = json.loads(form["claims"])["id_token"]["acr"]["values"]
        assert isinstance(claims.get("acr"), str), "exactly one acr"
        assert claims["acr"] in requested, "a requested acr"
        assert claims.get("amr") == ["tel"], "amr"
        assert claims["iat"] <= time.time() < claims["exp"], "iat and exp"
        return claims

def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
