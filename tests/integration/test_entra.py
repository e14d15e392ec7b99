"""The Entra EAM endpoints on the HTTP API, with a real Redis and a fake Entra (its keys
served by aiohttp): the authorize form, the waiting page, the answer form-POSTed back, and
the attacks refused before any call."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import html
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ivr.app import serve
from ivr.domain.codes import check_code
from ivr.domain.directory import DirectoryEntry
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.exceptions import DirectoryError
from ivr.fronts.api import ApiParts, build_app
from ivr.fronts.entra import EntraFront, SigningKeys, generate_pem
from ivr.fronts.entra.keys import rotated, write_keys
from ivr.fronts.web import BODY_TIMEOUT_S
from ivr.metrics import Metrics
from ivr.ops import keyscli
from ivr.ops.eamcheck import check_eam
from ivr.ops.results import Status
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.guard import Guard
from ivr.storage.keys import REQUESTS
from ivr.storage.store import Store
from ivr.testing import StaticDirectory
from tests.fake_entra import CLIENT_ID, FakeEntra

from ..conftest import RedisServer, free_port
from ..http_bodies import exchange, post_head
from .conftest import eventually

KEY = "k" * 40
ISSUER = "https://mfa.example.com/entra"
OID = "0a1b2c3d-0000-0000-0000-00000000a11c"
_FORM = re.compile(r'<form method="post" action="([^"]*)">(.*?)</form>', re.S)
_INPUT = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


@dataclass
class Eam:
    http: TestClient[Any, Any]
    entra: FakeEntra
    front: EntraFront
    redis: Redis
    metrics: Metrics | None = None

    async def authorize(self, form: dict[str, str], expect: int = 200) -> str:
        response = await self.http.post("/entra/authorize", data=form)
        assert response.status == expect
        if response.content_type == "text/html":  # no other site may frame a sign-in page
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        return await response.text()

    async def answer(self, page: str, expect: int = 200) -> str:
        answer = re.search(r'window\.location\.assign\("([^"]+)"\)', page)
        assert answer
        response = await self.http.get(answer.group(1))
        assert response.status == expect
        return await response.text()


def posted(page: str) -> tuple[str, dict[str, str]]:
    """Where the answer page form-POSTs, and its fields."""
    found = _FORM.search(page)
    assert found, page
    fields = {html.unescape(k): html.unescape(v) for k, v in _INPUT.findall(found.group(2))}
    return html.unescape(found.group(1)), fields


async def queued(redis: Redis) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(REQUESTS)
    return [json.loads(f[b"request"]) for _, f in entries]


@pytest.fixture
async def eam(redis: Redis, tmp_path: Path) -> AsyncIterator[Eam]:
    entra = FakeEntra()
    metrics = Metrics()
    async with TestServer(entra.app()) as entra_server:
        entra.base = str(entra_server.make_url("")).rstrip("/")
        key_file = tmp_path / "entra.pem"
        key_file.write_text(generate_pem())
        settings = Settings(signing_key=KEY, entra_issuer=ISSUER, entra_client_id=CLIENT_ID,
                            entra_signing_key_file=str(key_file),
                            entra_discovery_url=entra.discovery_url)
        directory = StaticDirectory(
            DirectoryEntry(OID, "+12015550100"),
            DirectoryEntry("carol@contoso.example", "+12015550101", mode="match"))
        front = EntraFront(settings, SigningKeys.from_file(key_file), directory, redis,
                           on_refused=metrics.entra_request_refused)
        parts = ApiParts.for_redis(settings, redis, Guard(redis, limits(settings)))
        app = build_app(parts, extra=[front.routes()])
        app.on_startup.append(front.start)
        app.on_cleanup.append(front.close)
        async with TestClient(TestServer(app)) as http:
            yield Eam(http, entra, front, redis, metrics)


async def finish(redis: Redis, rid: str, user: str, outcome: Outcome) -> None:
    now = time.time()
    store = Store(redis, result_ttl_s=60, events_maxlen=1000, signing_key=KEY.encode())
    await store.store_outcome(OutcomeRecord(id=rid, user=user, outcome=outcome,
                                            requested_at=now, finished_at=now))


class TestEndpoints:
    async def test_discovery_and_jwks_over_http(self, eam: Eam) -> None:
        doc = await (await eam.http.get("/entra/.well-known/openid-configuration")).json()
        assert doc["issuer"] == ISSUER
        jwks = await (await eam.http.get("/entra/jwks")).json()
        assert jwks == eam.front.keys.jwks()

    async def test_a_rotation_is_published_without_a_restart(self, eam: Eam) -> None:
        path = eam.front.settings.entra_signing_key_file
        before = eam.front.keys
        write_keys(path, rotated(before, time.time()))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse clock
        jwks = await (await eam.http.get("/entra/jwks")).json()
        assert len(jwks["keys"]) == 2
        assert eam.front.keys.signing.kid == before.signing.kid  # the old key signs 2 days


class TestSignIn:
    async def test_approved_the_id_token_reaches_redirect_uri_with_state(self, eam: Eam) -> None:
        hint = eam.entra.hint(oid=OID)
        form = eam.entra.authorize_form(hint)
        page = await eam.authorize(form)
        assert "We're calling +1 201 ••• 0100" in page
        (request,) = await queued(eam.redis)
        assert request["user"] == OID.lower()
        assert request["context"]["front"] == "entra"
        await finish(eam.redis, request["id"], request["user"], Outcome.APPROVED)
        url, fields = posted(await eam.answer(page))
        assert url == form["redirect_uri"]
        assert fields["state"] == form["state"]
        claims = FakeEntra.validate_id_token(fields["id_token"], eam.front.keys.jwks(),
                                             issuer=ISSUER, form=form, hint=hint)
        assert claims["oid"] == OID
        await eam.answer(page, expect=404)  # the answer is taken once

    @pytest.mark.parametrize("outcome", [Outcome.FRAUD_REPORTED, Outcome.NO_ANSWER,
                                         Outcome.BUSY, Outcome.DENIED])
    async def test_any_other_outcome_is_access_denied(self, eam: Eam, outcome: Outcome) -> None:
        form = eam.entra.authorize_form(eam.entra.hint(oid=OID))
        page = await eam.authorize(form)
        (request,) = await queued(eam.redis)
        await finish(eam.redis, request["id"], request["user"], outcome)
        url, fields = posted(await eam.answer(page))
        assert url == form["redirect_uri"]
        assert fields == {"error": "access_denied", "state": form["state"],
                          "error_description": f"callmfa: {outcome.value}"}

    async def test_the_preferred_username_finds_a_match_mode_user(self, eam: Eam) -> None:
        form = eam.entra.authorize_form(eam.entra.hint(oid="o-carol",
                                                       username="Carol@Contoso.example"))
        page = await eam.authorize(form)
        match = re.search(r'<div id="match">(\d\d)</div>', page)
        assert match, "the page shows the number to key"
        (request,) = await queued(eam.redis)
        assert request["mode"] == "match"
        assert check_code(match.group(1), request["match_hash"])  # only its hash is sent
        assert set(request) == {"id", "user", "mode", "match_hash", "context", "expires_at"}


def _listeners() -> int:
    return sum(t.get_name() == "result-listener" and not t.done() for t in asyncio.all_tasks())


class TestClose:
    async def test_the_subscription_an_answer_started_ends_with_the_front(self, eam: Eam) -> None:
        """The first answer subscribes to the outcomes; close() ends that task (left to
        asyncio.Runner, it hung serve's exit under uvloop)."""
        before = _listeners()  # the API's own, started with the app
        page = await eam.authorize(eam.entra.authorize_form(eam.entra.hint(oid=OID)))
        (request,) = await queued(eam.redis)
        await finish(eam.redis, request["id"], request["user"], Outcome.APPROVED)
        await eam.answer(page)
        assert _listeners() == before + 1
        await eam.front.close()
        assert _listeners() == before


class TestRefusedBeforeAnyCall:
    async def _refused(self, eam: Eam, form: dict[str, str], reason: str) -> None:
        url, fields = posted(await eam.authorize(form))
        assert url == form["redirect_uri"]
        assert fields["error"] == "access_denied"
        assert fields["state"] == form["state"]
        assert fields["error_description"] == f"callmfa: {reason}"
        assert await queued(eam.redis) == []
        assert eam.front.refused[reason] == 1
        assert eam.metrics is not None
        assert eam.metrics.registry.get_sample_value(
            "callmfa_entra_requests_refused_total", {"reason": reason}) == 1

    async def test_a_bad_signature(self, eam: Eam) -> None:
        from joserfc.jwk import RSAKey
        forger = RSAKey.generate_key(2048, parameters={"kid": "entra-1"})
        await self._refused(eam, eam.entra.authorize_form(eam.entra.hint(key=forger)),
                            "invalid_hint")

    async def test_a_wrong_issuer(self, eam: Eam) -> None:
        hint = eam.entra.hint(iss="https://login.microsoftonline.com/evil/v2.0")
        await self._refused(eam, eam.entra.authorize_form(hint), "wrong_issuer")

    async def test_a_wrong_audience(self, eam: Eam) -> None:
        await self._refused(eam, eam.entra.authorize_form(eam.entra.hint(aud="other")),
                            "wrong_audience")

    async def test_an_unknown_user(self, eam: Eam) -> None:
        await self._refused(eam, eam.entra.authorize_form(eam.entra.hint(oid="nobody")),
                            "unknown_user")

    async def test_a_directory_that_fails_is_answered_to_entra(
        self, eam: Eam, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """LDAP down: Entra gets callmfa's refusal (not a 500 page), and no call."""
        async def down(user: str) -> DirectoryEntry | None:
            raise DirectoryError("LDAP server ldap://ldap.example failed: Can't contact")

        monkeypatch.setattr(eam.front._directory, "lookup", down)
        await self._refused(eam, eam.entra.authorize_form(eam.entra.hint(oid=OID)),
                            "unavailable")

    async def test_claims_nested_too_deep_is_an_invalid_request(self, eam: Eam) -> None:
        """A claims parameter of 2,000 "[" (within the form's size limit) is refused back to
        Entra as invalid_request, not a 500."""
        form = eam.entra.authorize_form(eam.entra.hint(oid=OID), claims="[" * 2000)
        url, fields = posted(await eam.authorize(form))
        assert (url, fields["error"]) == (form["redirect_uri"], "invalid_request")
        assert await queued(eam.redis) == []

    @pytest.mark.parametrize("header", [
        b"[" * 5000,  # nested too deep for json
        b'{"alg":"RS256","kid":"entra-1","crit":[1]}',  # joserfc: TypeError
    ], ids=["deep", "crit"])
    async def test_a_hint_whose_header_is_malformed(self, eam: Eam, header: bytes) -> None:
        """Refused as invalid_hint back to Entra, counted, no call (it was a 500)."""
        hint = base64.urlsafe_b64encode(header).rstrip(b"=").decode() + ".e30.AAAA"
        await self._refused(eam, eam.entra.authorize_form(hint), "invalid_hint")

    @pytest.mark.parametrize(("body", "content_type"), [
        (b"a=\xff", "application/x-www-form-urlencoded"),
        (b"a=b", "application/x-www-form-urlencoded; charset=bogus"),
    ], ids=["not-utf-8", "unknown-charset"])
    async def test_a_form_that_cannot_be_read_is_400(
        self, eam: Eam, body: bytes, content_type: str
    ) -> None:
        """No redirect_uri to answer to: an error page, the refusal counted."""
        response = await eam.http.post("/entra/authorize", data=body,
                                       headers={"Content-Type": content_type})
        assert response.status == 400
        assert "cannot be read" in await response.text()
        assert eam.front.refused["invalid_request"] == 1
        assert await queued(eam.redis) == []

    async def test_a_form_that_never_comes_is_refused_after_its_deadline(
        self, eam: Eam
    ) -> None:
        """The headers promise a form that never comes: the request held its connection for
        ever; it ends after BODY_TIMEOUT_S in an error page, the refusal counted."""
        answer = await exchange(eam.http.port or 0, post_head(
            "/entra/authorize", {"Content-Type": "application/x-www-form-urlencoded"}, 100),
            wait_s=BODY_TIMEOUT_S + 10)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"did not arrive" in answer
        assert eam.front.refused["body_timeout"] == 1
        assert await queued(eam.redis) == []

    async def test_a_request_older_than_5_minutes(self, eam: Eam) -> None:
        await self._refused(eam, eam.entra.authorize_form(eam.entra.hint(age_s=301)),
                            "stale_request")

    async def test_a_replayed_request_places_no_second_call(self, eam: Eam) -> None:
        form = eam.entra.authorize_form(eam.entra.hint(oid=OID))
        await eam.authorize(form)
        _, fields = posted(await eam.authorize(form))
        assert fields["error_description"] == "callmfa: replayed"
        assert len(await queued(eam.redis)) == 1
        assert eam.front.refused["replayed"] == 1

    async def test_a_redirect_uri_not_allowed_gets_an_error_page(self, eam: Eam) -> None:
        form = eam.entra.authorize_form(eam.entra.hint(),
                                        redirect_uri="https://evil.example/collect")
        page = await eam.authorize(form, expect=400)
        assert "<form" not in page
        assert "evil.example" not in page
        assert await queued(eam.redis) == []
        assert eam.front.refused["redirect_uri_not_allowed"] == 1


class TestTrust:
    async def test_an_outcome_signed_with_another_key_is_access_denied(self, eam: Eam) -> None:
        form = eam.entra.authorize_form(eam.entra.hint(oid=OID))
        page = await eam.authorize(form)
        (request,) = await queued(eam.redis)
        now = time.time()
        forger = Store(eam.redis, result_ttl_s=60, events_maxlen=1000,
                       signing_key=b"f" * 40)
        await forger.store_outcome(OutcomeRecord(id=request["id"], user=request["user"],
                                                 outcome=Outcome.APPROVED, requested_at=now,
                                                 finished_at=now))
        _, fields = posted(await eam.answer(page))
        assert fields["error"] == "access_denied"
        assert "id_token" not in fields
        assert eam.front.refused["outcome_refused"] == 1

    async def test_the_page_follows_the_call_until_finished(self, eam: Eam) -> None:
        page = await eam.authorize(eam.entra.authorize_form(eam.entra.hint(oid=OID)))
        (request,) = await queued(eam.redis)
        await finish(eam.redis, request["id"], request["user"], Outcome.APPROVED)
        events = re.search(r'new EventSource\("([^"]+)"\)', page)
        assert events
        response = await eam.http.get(events.group(1))
        assert response.headers["Content-Type"] == "text/event-stream"
        assert "event: finished" in await response.text()

    async def test_an_unknown_session_is_404(self, eam: Eam) -> None:
        response = await eam.http.get(f"/entra/sessions/{'A' * 32}/answer")
        assert response.status == 404


class TestCheckLine:
    async def test_ok_when_the_api_serves_the_file_keys(self, eam: Eam) -> None:
        s = dataclasses.replace(eam.front.settings, api_host="127.0.0.1",
                                api_port=eam.http.port or 0)
        result = await check_eam(s)
        assert result is not None
        assert result.status is Status.OK, result.message

    async def test_fail_on_another_issuer_and_on_no_listener(self, eam: Eam) -> None:
        s = dataclasses.replace(eam.front.settings, api_host="127.0.0.1",
                                api_port=eam.http.port or 0,
                                entra_issuer="https://mfa.example.com/entra/")
        other = await check_eam(s)
        assert other is not None
        assert other.status is Status.FAIL
        assert "not CALLMFA_ENTRA_ISSUER" in other.message
        down = await check_eam(dataclasses.replace(s, api_port=9))
        assert down is not None
        assert down.status is Status.FAIL

    async def test_fail_on_a_bad_key_file(self, eam: Eam, tmp_path: Path) -> None:
        (tmp_path / "bad.pem").write_text("nope")
        s = dataclasses.replace(eam.front.settings,
                                entra_signing_key_file=str(tmp_path / "bad.pem"))
        result = await check_eam(s)
        assert result is not None
        assert result.status is Status.FAIL
        assert await check_eam(Settings()) is None


class TestServe:
    async def test_serve_with_the_api_role_serves_the_eam_and_the_check_passes(
            self, redis_server: RedisServer, redis: Redis, tmp_path: Path) -> None:
        """`callmfa keys rotate` makes the key file; `callmfa serve` (role api) serves the
        EAM endpoints under the issuer's path; `callmfa check`'s eam line is ok."""
        key_file = tmp_path / "entra.pem"
        port = free_port()
        settings = Settings(redis_url=redis_server.url, roles="api", api_port=port,
                            health_port=0, signing_key=KEY, entra_issuer=ISSUER,
                            entra_client_id=CLIENT_ID, entra_signing_key_file=str(key_file))
        assert keyscli.run(settings, argparse.Namespace(action="rotate")) == 0
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop))

        async def up() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(
                        f"http://127.0.0.1:{port}/entra/.well-known/openid-configuration") as r:
                    return r.status == 200 and (await r.json())["issuer"] == ISSUER
            return False

        try:
            await eventually(up, timeout_s=10, what="the EAM endpoints")
            result = await check_eam(settings)
            assert result is not None
            assert result.status is Status.OK, result.message
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
