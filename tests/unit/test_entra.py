"""The Entra EAM's protocol (sans-IO), its keys, and the fetch of Entra's keys from a fake
Entra served by aiohttp."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from ivr.exceptions import SettingsError
from ivr.fronts.entra.entra_keys import EntraKeys
from ivr.fronts.entra.keys import (
    ROTATION_OVERLAP_S,
    SigningKeys,
    generate_pem,
    rotated,
    write_keys,
)
from ivr.fronts.entra.protocol import (
    AuthorizeRequest,
    EntraError,
    choose_acr,
    discovery,
    id_token,
    parse_authorize,
    validate_hint,
)
from ivr.settings import Settings
from tests.fake_entra import CLIENT_ID, REDIRECT_URI, TENANT, FakeEntra, claims_parameter

ISSUER = "https://mfa.example.com/entra"
REDIRECTS = frozenset({REDIRECT_URI})


@pytest.fixture(scope="module")
def keys() -> SigningKeys:
    return SigningKeys.from_pem(generate_pem())


@pytest.fixture(scope="module")
def entra() -> FakeEntra:
    return FakeEntra()


def _validate(entra: FakeEntra, hint: str, *, audience: str | None = CLIENT_ID,
              tenants: frozenset[str] = frozenset()) -> Any:
    return validate_hint(hint, KeySet([entra.key]), issuer_template=entra.issuer_template,
                         audience=audience, tenants=tenants, now=time.time())


def _refused(reason: str, call: Any, *args: Any, **kw: Any) -> EntraError:
    with pytest.raises(EntraError) as caught:
        call(*args, **kw)
    assert caught.value.reason == reason
    return caught.value


class TestDiscoveryAndKeys:
    def test_the_issuer_is_exactly_as_configured(self) -> None:
        doc = discovery(ISSUER)
        assert doc["issuer"] == ISSUER
        assert doc["jwks_uri"] == f"{ISSUER}/jwks"
        assert doc["authorization_endpoint"] == f"{ISSUER}/authorize"
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert discovery(ISSUER + "/")["issuer"] == ISSUER + "/"

    def test_the_jwks_has_rs256_kid_and_an_x5c_of_the_key(self, keys: SigningKeys) -> None:
        (jwk,) = keys.jwks()["keys"]
        assert jwk["alg"] == "RS256"
        assert jwk["use"] == "sig"
        assert jwk["kid"] == keys.signing.kid
        assert "d" not in jwk
        assert "p" not in jwk
        cert = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
        assert RSAKey.import_key(cert.public_key()).as_dict()["n"] == jwk["n"]

    def test_two_pairs_both_published_the_first_signs(self) -> None:
        new, old = generate_pem("new"), generate_pem("old")
        both = SigningKeys.from_pem(new + old)
        assert [k["kid"] for k in both.jwks()["keys"]] == [
            SigningKeys.from_pem(new).signing.kid, SigningKeys.from_pem(old).signing.kid]

    def test_a_certificate_of_another_key_is_refused(self) -> None:
        a, b = generate_pem(), generate_pem()
        key_a = a[:a.index("-----BEGIN CERTIFICATE-----")]
        cert_b = b[b.index("-----BEGIN CERTIFICATE-----"):]
        with pytest.raises(SettingsError, match="does not match"):
            SigningKeys.from_pem(key_a + cert_b)

    def test_a_missing_or_empty_file_is_a_settings_error(self, tmp_path: Any) -> None:
        with pytest.raises(SettingsError, match="cannot read"):
            SigningKeys.from_file(tmp_path / "nope.pem")
        (tmp_path / "empty.pem").write_text("")
        with pytest.raises(SettingsError, match="pairs"):
            SigningKeys.from_file(tmp_path / "empty.pem")


class TestAuthorizeRequest:
    def _parse(self, entra: FakeEntra, **overrides: str) -> AuthorizeRequest:
        return parse_authorize(entra.authorize_form("h", **overrides), client_id=CLIENT_ID,
                               redirect_uris=REDIRECTS)

    def test_entras_form_is_read(self, entra: FakeEntra) -> None:
        request = self._parse(entra, state="s1", nonce="n1")
        assert (request.state, request.nonce, request.redirect_uri) == ("s1", "n1", REDIRECT_URI)

    @pytest.mark.parametrize("uri", ["https://evil.example/federation/externalauthprovider",
                                     REDIRECT_URI + "?x=1", "", "javascript:alert(1)"])
    def test_a_redirect_uri_not_allowed_gets_no_redirect(self, entra: FakeEntra,
                                                         uri: str) -> None:
        e = _refused("redirect_uri_not_allowed", self._parse, entra, redirect_uri=uri)
        assert not e.redirect

    def test_another_client_id_gets_no_redirect(self, entra: FakeEntra) -> None:
        assert not _refused("unknown_client", self._parse, entra, client_id="x").redirect

    @pytest.mark.parametrize(("field", "value", "reason"), [
        ("scope", "profile", "invalid_scope"),
        ("response_type", "code", "unsupported_response_type"),
        ("response_mode", "query", "invalid_request"),
        ("nonce", "", "invalid_request"),
        ("id_token_hint", "", "invalid_request"),
    ])
    def test_a_bad_field_is_refused_back_to_entra(self, entra: FakeEntra, field: str,
                                                  value: str, reason: str) -> None:
        assert _refused(reason, self._parse, entra, **{field: value}).redirect


class TestHint:
    def test_a_good_hint_gives_its_identity_though_expired(self, entra: FakeEntra) -> None:
        hint = _validate(entra, entra.hint(oid="o-1", username="bob@contoso.example"))
        assert (hint.oid, hint.sub, hint.tid) == ("o-1", "sub-o-1", TENANT)
        assert hint.preferred_username == "bob@contoso.example"

    def test_a_bad_signature_is_refused(self, entra: FakeEntra) -> None:
        forger = RSAKey.generate_key(2048, parameters={"kid": "entra-1"})
        _refused("invalid_hint", _validate, entra, entra.hint(key=forger))

    def test_a_tampered_payload_is_refused(self, entra: FakeEntra) -> None:
        head, body, sig = entra.hint().split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=="))
        claims["oid"] = "someone-else"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        _refused("invalid_hint", _validate, entra, f"{head}.{forged}.{sig}")

    def test_alg_none_and_hs256_are_refused(self, entra: FakeEntra) -> None:
        head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        body = entra.hint().split(".")[1]
        _refused("invalid_hint", _validate, entra, f"{head}.{body}.")

    def test_a_wrong_issuer_is_refused(self, entra: FakeEntra) -> None:
        _refused("wrong_issuer", _validate, entra,
                 entra.hint(iss="https://login.microsoftonline.com/other/v2.0"))

    def test_an_issuer_of_another_tenant_than_tid_is_refused(self, entra: FakeEntra) -> None:
        _refused("wrong_issuer", _validate, entra, entra.hint(iss=entra.issuer("other-tid")))

    def test_a_wrong_audience_is_refused_when_checked(self, entra: FakeEntra) -> None:
        hint = entra.hint(aud="another-app")
        _refused("wrong_audience", _validate, entra, hint)
        assert _validate(entra, hint, audience=None).oid

    def test_a_tenant_not_allowed_is_refused(self, entra: FakeEntra) -> None:
        _refused("tenant_not_allowed", _validate, entra, entra.hint(),
                 tenants=frozenset({"11111111-2222-3333-4444-555555555555"}))
        assert _validate(entra, entra.hint(), tenants=frozenset({TENANT}))

    def test_a_request_older_than_5_minutes_is_refused(self, entra: FakeEntra) -> None:
        _refused("stale_request", _validate, entra, entra.hint(age_s=301))
        _refused("stale_request", _validate, entra, entra.hint(age_s=-120))
        assert _validate(entra, entra.hint(age_s=290))

    def test_a_hint_without_oid_is_refused(self, entra: FakeEntra) -> None:
        _refused("invalid_hint", _validate, entra, entra.hint(oid=""))


class TestIdToken:
    def test_acr_is_one_of_those_requested(self) -> None:
        assert choose_acr(claims_parameter()) == "possessionorinherence"
        assert choose_acr(claims_parameter(["x", "knowledgeorpossession"])) == \
            "knowledgeorpossession"
        _refused("unsupported_acr", choose_acr, claims_parameter(["inherence"]))
        _refused("invalid_request", choose_acr, "{not json")

    def test_entra_accepts_the_id_token(self, entra: FakeEntra, keys: SigningKeys) -> None:
        hint_token = entra.hint()
        form = entra.authorize_form(hint_token)
        request = parse_authorize(form, client_id=CLIENT_ID, redirect_uris=REDIRECTS)
        hint = _validate(entra, hint_token)
        token = id_token(keys.signing, issuer=ISSUER, request=request, hint=hint,
                         acr=choose_acr(request.claims), now=time.time())
        claims = FakeEntra.validate_id_token(token, keys.jwks(), issuer=ISSUER, form=form,
                                             hint=hint_token)
        assert (claims["tid"], claims["oid"]) == (TENANT, hint.oid)


@functools.cache
def _other_keys() -> SigningKeys:
    return SigningKeys.from_pem(generate_pem())


def _tampered(keys: SigningKeys, what: str) -> tuple[str, dict[str, Any]]:
    """An id_token and JWKS that break one of Entra's checks (``what``)."""
    entra = FakeEntra()
    hint = json.loads(base64.urlsafe_b64decode(entra.hint().split(".")[1] + "=="))
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": CLIENT_ID, "sub": hint["sub"], "nonce": "n-1", "iat": now,
        "exp": now + 300, "acr": "possessionorinherence", "amr": ["tel"]}
    header = {"alg": "RS256", "kid": keys.signing.kid}
    jwks = keys.jwks()
    other = _other_keys()
    signer = keys.signing.key
    match what:
        case "alg":
            header["alg"] = "RS384"
        case "kid":
            header["kid"] = "not-published"
        case "x5c":
            del jwks["keys"][0]["x5c"]
        case "x5c_of_another_key":
            jwks["keys"][0]["x5c"] = other.jwks()["keys"][0]["x5c"]
        case "signature":  # the published kid, another key's signature
            signer = other.signing.key
        case "iss" | "aud" | "sub" | "nonce":
            claims[what] = "someone-else"
        case "acr_list":
            claims["acr"] = ["possessionorinherence"]
        case "acr_not_requested":
            claims["acr"] = "knowledge"
        case "amr":
            claims["amr"] = ["tel", "sms"]
        case "exp":
            claims["exp"] = now - 1
    return jwt.encode(header, claims, signer), jwks


class TestFakeEntraChecks:
    """The fake Entra refuses an id_token that breaks any one of the checks Entra's docs
    list; it accepts one that breaks none."""

    def _check(self, token: str, jwks: dict[str, Any]) -> None:
        entra = FakeEntra()
        form = entra.authorize_form(entra.hint(), nonce="n-1")
        FakeEntra.validate_id_token(token, jwks, issuer=ISSUER, form=form, hint=entra.hint())

    def test_a_token_breaking_none_is_accepted(self, keys: SigningKeys) -> None:
        self._check(*_tampered(keys, "none"))

    @pytest.mark.parametrize("what", [
        "alg", "kid", "x5c", "x5c_of_another_key", "signature", "iss", "aud", "sub", "nonce",
        "acr_list", "acr_not_requested", "amr", "exp"])
    def test_a_token_breaking_one_is_refused(self, keys: SigningKeys, what: str) -> None:
        with pytest.raises((AssertionError, JoseError)):
            self._check(*_tampered(keys, what))


class TestSettings:
    def test_the_issuer_needs_a_client_id_and_a_key(self) -> None:
        with pytest.raises(SettingsError, match="CLIENT_ID"):
            Settings(entra_issuer=ISSUER)
        with pytest.raises(SettingsError, match="https"):
            Settings(entra_issuer="http://mfa.example.com", entra_client_id="c",
                     entra_signing_key_file="/k")
        s = Settings(entra_issuer=ISSUER, entra_client_id="c", entra_signing_key_file="/k",
                     entra_tenants=f" {TENANT.upper()} ,")
        assert s.entra_tenant_set == {TENANT}
        assert REDIRECT_URI in s.entra_redirect_uri_set


@pytest.fixture
async def served(entra: FakeEntra) -> AsyncIterator[tuple[FakeEntra, aiohttp.ClientSession]]:
    async with TestServer(entra.app()) as server, aiohttp.ClientSession() as session:
        entra.base = str(server.make_url("")).rstrip("/")
        yield entra, session


class TestEntraKeys:
    async def test_fetched_once_then_cached(
            self, served: tuple[FakeEntra, aiohttp.ClientSession]) -> None:
        entra, session = served
        before = entra.discovery_fetches
        fetcher = EntraKeys(session, entra.discovery_url, timeout_s=2)
        first = await fetcher.get("entra-1")
        assert first.issuer_template == entra.issuer_template
        assert first.has("entra-1")
        assert _validate(entra, entra.hint()).oid
        await fetcher.get("entra-1")
        assert entra.discovery_fetches == before + 1

    async def test_an_unreachable_entra_is_entra_unavailable(self) -> None:
        async with aiohttp.ClientSession() as session:
            fetcher = EntraKeys(session, "http://127.0.0.1:9/none", timeout_s=1)
            with pytest.raises(EntraError) as caught:
                await fetcher.get()
        assert caught.value.reason == "entra_unavailable"

    async def test_a_slow_entra_times_out(self) -> None:
        never = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await never.wait()
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/d", slow)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            fetcher = EntraKeys(session, str(server.make_url("/d")), timeout_s=0.2)
            started = time.monotonic()
            with pytest.raises(EntraError):
                await fetcher.get()
            assert time.monotonic() - started < 2
            never.set()


class TestRotation:
    def _token(self, keys: SigningKeys, entra: FakeEntra, now: float) -> tuple[str, Any, Any]:
        hint_token = entra.hint()
        form = entra.authorize_form(hint_token)
        request = parse_authorize(form, client_id=CLIENT_ID, redirect_uris=REDIRECTS)
        hint = _validate(entra, hint_token)
        token = id_token(keys.signing_at(now), issuer=ISSUER, request=request, hint=hint,
                         acr="possessionorinherence", now=time.time())
        return token, form, hint_token

    def test_entras_cached_jwks_validates_through_the_whole_overlap(
            self, entra: FakeEntra) -> None:
        """Entra caches the JWKS up to 24 h: with the copy fetched just before the rotation
        it still validates every token of the 2 days after; the new key signs only once
        any copy fetched since the rotation (24 h old at most) holds it."""
        t0 = 1_800_000_000.0
        first = rotated(None, t0 - 86400 * 30)
        cached_before = first.jwks()  # Entra's copy, fetched just before the rotation
        both = rotated(first, t0)
        assert [k["kid"] for k in both.jwks()["keys"]] == [k.kid for k in both.keys]
        for at in (t0, t0 + 86400, t0 + ROTATION_OVERLAP_S - 1):
            token, form, hint = self._token(both, entra, at)
            FakeEntra.validate_id_token(token, cached_before, issuer=ISSUER, form=form,
                                        hint=hint)
        refreshed = both.jwks()  # any copy Entra fetched since the rotation
        for at in (t0 + ROTATION_OVERLAP_S, t0 + ROTATION_OVERLAP_S + 86400):
            token, form, hint = self._token(both, entra, at)
            FakeEntra.validate_id_token(token, refreshed, issuer=ISSUER, form=form, hint=hint)
            with pytest.raises(AssertionError, match="not in the JWKS"):  # the old copy
                FakeEntra.validate_id_token(token, cached_before, issuer=ISSUER, form=form,
                                            hint=hint)

    def test_a_later_rotation_drops_the_replaced_key(self) -> None:
        t0 = 1_800_000_000.0
        one = rotated(None, t0)
        two = rotated(one, t0 + 10)
        three = rotated(two, t0 + ROTATION_OVERLAP_S + 20)  # two signs now; one is gone
        assert [k.kid for k in three.keys[:1]] == [two.keys[1].kid]
        assert len(three.keys) == 2
        assert three.signing_at(t0 + ROTATION_OVERLAP_S + 20).kid == two.keys[1].kid

    def test_the_file_round_trips_with_its_dates(self, tmp_path: Any) -> None:
        keys = rotated(rotated(None, 1_800_000_000.0), 1_800_000_100.0)
        write_keys(tmp_path / "k.pem", keys)
        again = SigningKeys.from_file(tmp_path / "k.pem")
        assert [(k.kid, k.signs_from) for k in again.keys] == [
            (k.kid, k.signs_from) for k in keys.keys]
        assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
