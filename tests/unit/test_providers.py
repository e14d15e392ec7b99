"""The provider endpoints with each vendor's own documented payload (tests/fixtures/providers),
against a fake verification client: translation, auth, replies."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from ivr.client import ProgressEvent
from ivr.fronts.providers import GATEWAY, provider_app
from ivr.fronts.providers.gateway import ProviderError, code_in, e164, language
from ivr.fronts.web import BODY_TIMEOUT_S
from ivr.metrics import Metrics
from ivr.settings import Settings

from ..http_bodies import chunk, curl_slowly, exchange, post_head

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
TOKEN = "provider-token-0123456789abcdef"
RID = "0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    assert data["source"]
    return data


class FakeVerifier:
    """Records submissions; the request is then 'queued', or ends with ``outcome``."""

    def __init__(self, outcome: str | None = None) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.outcome = outcome

    async def submit(self, *, user: str, phone: str, **options: Any) -> str:
        self.submitted.append({"user": user, "phone": phone, **options})
        return RID

    async def watch(self, request_id: str, *, since_ms: int = 0,
                    timeout_s: float = 180) -> AsyncIterator[ProgressEvent]:
        if self.outcome is None:
            yield ProgressEvent(request_id, "queued", "", {})
        else:
            yield ProgressEvent(request_id, "finished", "", {"outcome": self.outcome})


def settings(**extra: str) -> Settings:
    env = {"CALLMFA_PROVIDER_PRIVACYIDEA_TOKEN": TOKEN, "CALLMFA_PROVIDER_AUTHENTIK_TOKEN": TOKEN,
           "CALLMFA_PROVIDER_OKTA_TOKEN": TOKEN, "CALLMFA_PROVIDER_LINOTP_TOKEN": TOKEN,
           "CALLMFA_PROVIDER_OKTA_AUTH_HEADER": "X-Callmfa-Hook", **extra}
    return Settings.from_env(env)


async def serve(verifier: FakeVerifier, metrics: Metrics | None = None,
                **extra: str) -> TestClient[Any, Any]:
    app = provider_app(settings(**extra), verifier,
                       metrics.provider_request_refused if metrics else None)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


def basic(password: str, user: str = "account") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def send(client: TestClient[Any, Any], vendor: str, data: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, str]:
    path = f"/providers/{vendor}"
    if data["method"] == "GET":
        resp = await client.get(path, params=data["query"], headers=headers)
    elif "form" in data:
        resp = await client.post(path, data=data["form"], headers=headers)
    else:
        resp = await client.post(path, json=data["json"], headers=headers)
    return resp.status, await resp.text()


CASES = [
    ("privacyidea", "privacyidea_gtx_get", basic(TOKEN)),
    ("privacyidea", "privacyidea_twilio_post", basic(TOKEN, "ACcountSid")),
    ("privacyidea", "privacyidea_gtx_get", {"Authorization": f"Bearer {TOKEN}"}),
    ("authentik", "authentik_generic", {"Authorization": f"Bearer {TOKEN}"}),
    ("authentik", "authentik_generic", basic(TOKEN)),
    ("okta", "okta_telephony_hook", {"X-Callmfa-Hook": TOKEN}),
    ("linotp", "linotp_custom_voice", basic(TOKEN)),
]


class TestFixtures:
    @pytest.mark.parametrize(("vendor", "name", "headers"), CASES)
    async def test_payload_becomes_an_otp_call(
        self, vendor: str, name: str, headers: dict[str, str]
    ) -> None:
        """The vendor's documented payload, unchanged: one otp request with its code and
        number, and the vendor's success reply."""
        data = fixture(name)
        verifier = FakeVerifier()
        client = await serve(verifier, **data.get("settings", {}))
        try:
            status, text = await send(client, vendor, data, headers)
        finally:
            await client.close()
        assert status == 200, text
        [req] = verifier.submitted
        assert (req["mode"], req["otp"], req["phone"]) == ("otp", data["code"], data["phone"])
        assert req["context"]["vendor"] == vendor
        assert data["code"] not in json.dumps(req["context"])
        assert req["expires_in_s"] == 1.5
        if vendor == "okta":
            body = json.loads(text)
            [command] = body["commands"]
            assert command["type"] == "com.okta.telephony.action"
            assert command["value"][0]["status"] == "SUCCESSFUL"
            assert command["value"][0]["transactionId"] == RID
            assert req["user"] == "test.user@okta.com"
            assert req["lang"] == "en"
        elif vendor == "privacyidea":
            assert text.startswith("ACCEPTED")
            assert "FAILED" not in text
        assert RID in text

    @pytest.mark.parametrize(("vendor", "name", "headers"), [
        ("privacyidea", "privacyidea_gtx_get", basic("wrong")),
        ("privacyidea", "privacyidea_gtx_get", {}),
        ("authentik", "authentik_generic", {"Authorization": "Bearer wrong"}),
        ("authentik", "authentik_generic", {"Authorization": f"Token {TOKEN}"}),
        ("okta", "okta_telephony_hook", {"X-Callmfa-Hook": "wrong"}),
        ("okta", "okta_telephony_hook", {"Authorization": TOKEN}),
        ("linotp", "linotp_custom_voice", {}),
        ("authentik", "authentik_generic", {"Authorization": "Basic é"}),
    ])
    async def test_bad_credential_is_refused_logged_and_counted(
        self, vendor: str, name: str, headers: dict[str, str]
    ) -> None:
        """A wrong or missing credential: the vendor's failure reply (401), no request."""
        verifier = FakeVerifier()
        metrics = Metrics()
        client = await serve(verifier, metrics, **fixture(name).get("settings", {}))
        try:
            status, text = await send(client, vendor, fixture(name), headers)
            gateway = client.server.app[GATEWAY]
        finally:
            await client.close()
        assert status == 401
        assert verifier.submitted == []
        assert gateway.refused[vendor, "unauthorized"] == 1
        assert metrics.registry.get_sample_value(
            "callmfa_provider_requests_refused_total",
            {"vendor": vendor, "reason": "unauthorized"}) == 1
        if vendor == "okta":
            assert json.loads(text)["error"]["errorSummary"]
        if vendor == "privacyidea":
            assert "FAILED" in text
            assert "ACCEPTED" not in text

    async def test_linotp_twilio_auth_token_authenticates(self) -> None:
        """LinOTP's own twilioConfig authToken, set to the token, is a credential too."""
        data = fixture("linotp_custom_voice")
        data["json"]["call"]["twilio"]["authToken"] = TOKEN
        verifier = FakeVerifier()
        client = await serve(verifier)
        try:
            status, _ = await send(client, "linotp", data, {})
        finally:
            await client.close()
        assert status == 200
        assert verifier.submitted[0]["otp"] == "98018932"

    async def test_a_token_that_is_not_text_is_refused_and_counted(self) -> None:
        """LinOTP's authToken holding a lone surrogate (valid JSON, not encodable): 401 and
        counted, as any wrong token (it was a 500)."""
        data = fixture("linotp_custom_voice")
        data["json"]["call"]["twilio"]["authToken"] = "\ud800"
        verifier = FakeVerifier()
        client = await serve(verifier)
        try:
            status, _ = await send(client, "linotp", data, {})
            gateway = client.server.app[GATEWAY]
        finally:
            await client.close()
        assert status == 401
        assert gateway.refused["linotp", "unauthorized"] == 1

    async def test_no_token_configured_refuses_everything(self) -> None:
        verifier = FakeVerifier()
        client = await serve(verifier, CALLMFA_PROVIDER_AUTHENTIK_TOKEN="")
        try:
            status, _ = await send(client, "authentik", fixture("authentik_generic"),
                                   {"Authorization": "Bearer "})
        finally:
            await client.close()
        assert status == 401
        assert verifier.submitted == []

    @pytest.mark.parametrize(("outcome", "status"), [("throttled", 429), ("rejected", 503)])
    async def test_a_call_refused_by_callmfa_is_the_vendor_failure(
        self, outcome: str, status: int
    ) -> None:
        """The request ended before a call (throttled, rejected): Okta gets FAILED with the
        transactionId, authentik a 4xx/5xx."""
        verifier = FakeVerifier(outcome)
        client = await serve(verifier)
        try:
            ok_status, ok_text = await send(client, "okta", fixture("okta_telephony_hook"),
                                            {"X-Callmfa-Hook": TOKEN})
            ak_status, _ = await send(client, "authentik", fixture("authentik_generic"),
                                      {"Authorization": f"Bearer {TOKEN}"})
        finally:
            await client.close()
        value = json.loads(ok_text)["commands"][0]["value"][0]
        assert (ok_status, value["status"], value["transactionId"]) == (200, "FAILED", RID)
        assert ak_status == status

    @pytest.mark.parametrize(("vendor", "payload"), [
        ("authentik", {"To": "+4917012345678", "Body": "no code here"}),
        ("authentik", {"To": "not a number", "Body": "123456"}),
        ("okta", {"data": {}}),
        ("linotp", {"call": {"calleeNumber": "+4917012345678", "otp": "12"}}),
    ])
    async def test_bad_payload_is_refused(self, vendor: str, payload: dict[str, Any]) -> None:
        verifier = FakeVerifier()
        client = await serve(verifier)
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Callmfa-Hook": TOKEN}
        try:
            status, text = await send(client, vendor, {"method": "POST", "json": payload},
                                      headers)
        finally:
            await client.close()
        assert verifier.submitted == []
        if vendor == "okta":
            assert json.loads(text)["commands"][0]["value"][0]["status"] == "FAILED"
        else:
            assert status == 400


class BrokenVerifier(FakeVerifier):
    async def submit(self, *, user: str, phone: str, **options: Any) -> str:
        raise ConnectionError("Redis is down")


async def test_redis_down_is_a_failure_reply_not_a_crash() -> None:
    """Redis unreachable: Okta gets FAILED (not a 500), and the refusal is counted."""
    client = await serve(BrokenVerifier())
    try:
        status, text = await send(client, "okta", fixture("okta_telephony_hook"),
                                  {"X-Callmfa-Hook": TOKEN})
        gateway = client.server.app[GATEWAY]
    finally:
        await client.close()
    assert status == 200
    assert json.loads(text)["commands"][0]["value"][0]["status"] == "FAILED"
    assert gateway.refused["okta", "unavailable"] == 1


class TestTranslation:
    @pytest.mark.parametrize(("text", "code"), [
        ("(HOOK)Your code is 11111", "11111"), ("Your OTP value is 718234.", "718234"),
        ("904417", "904417"), ("Code 4829, valid for 5 minutes", "4829"),
    ])
    def test_code_in_text(self, text: str, code: str) -> None:
        assert code_in(text) == code

    @pytest.mark.parametrize("text", ["no code", "123", "1234 and 5678", "12345678901", None])
    def test_no_single_code(self, text: str | None) -> None:
        with pytest.raises(ProviderError):
            code_in(text)

    @pytest.mark.parametrize(("raw", "region", "number"), [
        ("9876543210", "US", "+19876543210"), ("+4917012345678", "US", "+4917012345678"),
        ("004917012345678", "US", "+4917012345678"), ("01701234567", "DE", "+491701234567"),
    ])
    def test_phone(self, raw: str, region: str, number: str) -> None:
        assert e164(raw, region) == number

    @pytest.mark.parametrize(("locale", "lang"), [
        ("EN-US", "en-US"), ("de_DE", "de-DE"), ("fr", "fr"), ("", "es"), (None, "es"),
    ])
    def test_locale(self, locale: str | None, lang: str) -> None:
        assert language(locale, "es") == lang

    @given(st.text(max_size=200))
    def test_code_in_never_raises_anything_else(self, text: str) -> None:
        with contextlib.suppress(ProviderError):
            assert 4 <= len(code_in(text)) <= 10


class TestBodies:
    """Bodies as a network delivers them: in pieces, chunked past the limit, or never."""

    async def test_a_body_in_pieces_is_read_whole(self) -> None:
        """A valid request sent at 1 kB/s (curl) was refused as not JSON: only its first
        piece had been read."""
        verifier = FakeVerifier()
        client = await serve(verifier)
        body = json.dumps({**fixture("authentik_generic")["json"],
                           "padding": "x" * 2500}).encode()
        try:
            status, text = await curl_slowly(
                str(client.make_url("/providers/authentik")), body,
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        finally:
            await client.close()
        assert status == 200, text
        assert len(verifier.submitted) == 1

    async def test_a_chunked_body_past_the_limit_is_refused_whole(self) -> None:
        """Its first chunk a valid request, then 200 kB more: it was accepted, the rest
        unread; it is too large, and counted."""
        verifier = FakeVerifier()
        metrics = Metrics()
        client = await serve(verifier, metrics)
        first = json.dumps(fixture("authentik_generic")["json"]).encode()
        try:
            answer = await exchange(
                client.port or 0,
                post_head("/providers/authentik", {"Authorization": f"Bearer {TOKEN}"}, None)
                + chunk(first), chunk(b" " * 200_000) + b"0\r\n\r\n")
        finally:
            await client.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"too_large" in answer
        assert verifier.submitted == []
        assert client.app[GATEWAY].refused["authentik", "too_large"] == 1

    async def test_a_body_that_never_comes_is_refused_after_its_deadline(self) -> None:
        """The headers promise 100 bytes that never come: the request held its connection
        for ever (and LinOTP reads the body before the credential, so without one); it
        ends after BODY_TIMEOUT_S, refused and counted."""
        client = await serve(FakeVerifier())
        try:
            answer = await exchange(client.port or 0, post_head(
                "/providers/authentik", {"Authorization": f"Bearer {TOKEN}"}, 100),
                wait_s=BODY_TIMEOUT_S + 10)
        finally:
            await client.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"body_timeout" in answer
        assert client.app[GATEWAY].refused["authentik", "body_timeout"] == 1
