"""The Entra EAM through the real chain: a fake Entra (its keys served by aiohttp) mints the
hint, the browser's authorize form goes to callmfa's EAM endpoints (run here over the
sandbox's Redis, with `callmfa user` entries as the directory), the sandbox's originator
calls the sipp phone through Asterisk, and the answer form comes back as Entra reads it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ivr.fronts.api import ApiParts, build_app
from ivr.fronts.entra import EntraFront, SigningKeys, generate_pem
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.directory import LocalDirectory
from ivr.storage.guard import Guard
from tests.fake_entra import CLIENT_ID, FakeEntra
from tests.integration.test_entra import Eam, posted

from ..conftest import Sandbox
from .chromium import Chromium
from .conftest import PhoneFactory
from .test_modes import _callmfa

ISSUER = "https://mfa.example.com/entra"
MATCH = "42"


@pytest.fixture
async def eam(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[Eam]:
    entra = FakeEntra()
    redis = Redis.from_url(sandbox.redis_url)
    async with TestServer(entra.app()) as entra_server:
        entra.base = str(entra_server.make_url("")).rstrip("/")
        key_file = tmp_path / "entra.pem"
        key_file.write_text(generate_pem())
        settings = Settings(signing_key=sandbox.env["CALLMFA_SIGNING_KEY"],
                            entra_issuer=ISSUER, entra_client_id=CLIENT_ID,
                            entra_signing_key_file=str(key_file),
                            entra_discovery_url=entra.discovery_url,
                            entra_redirect_uris=entra.redirect_uri)
        # The number to key is drawn at random; here it is known, so the phone can key it.
        front = EntraFront(settings, SigningKeys.from_file(key_file), LocalDirectory(redis),
                           redis, draw_match=lambda: MATCH)
        parts = ApiParts.for_redis(settings, redis, Guard(redis, limits(settings)))
        app = build_app(parts, extra=[front.routes()])
        app.on_startup.append(front.start)
        app.on_cleanup.append(front.close)
        try:
            async with TestClient(TestServer(app)) as http:
                yield Eam(http, entra, front, redis)
        finally:
            await redis.aclose()


async def user(sandbox: Sandbox, number: str, *options: str) -> str:
    """A new Entra user (its oid) in `callmfa user`'s directory, at ``number``."""
    oid = str(uuid.uuid4())
    out = await asyncio.to_thread(_callmfa, sandbox, "user", "set", oid, "--phone", number,
                                  *options)
    assert out.returncode == 0, out.stderr
    return oid


async def follow(eam: Eam, page: str, timeout_s: float = 45) -> list[str]:
    """What the waiting page does: read the SSE stream until ``finished``."""
    url = re.search(r'new EventSource\("([^"]+)"\)', page)
    assert url
    async with asyncio.timeout(timeout_s):
        response = await eam.http.get(url.group(1))
        text = await response.text()
    return re.findall(r"^event: (\w+)$", text, re.M)


async def sign_in(eam: Eam, oid: str) -> tuple[dict[str, str], str, dict[str, str], list[str]]:
    hint = eam.entra.hint(oid=oid)
    form = eam.entra.authorize_form(hint, redirect_uri=eam.entra.redirect_uri)
    page = await eam.authorize(form)
    events = await follow(eam, page)
    url, fields = posted(await eam.answer(page))
    assert url == form["redirect_uri"]
    assert fields["state"] == form["state"]
    return form, hint, fields, events


class TestEntraSignIn:
    async def test_the_phone_presses_hash_and_entra_gets_a_valid_id_token(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        oid = await user(sandbox, "+12015550191")
        p = phone(keys="#")
        form, hint, fields, events = await sign_in(eam, oid)
        assert events[-1] == "finished"
        assert "answered" in events
        claims = FakeEntra.validate_id_token(fields["id_token"], eam.front.keys.jwks(),
                                             issuer=ISSUER, form=form, hint=hint)
        assert claims["oid"] == oid
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550191": 1}

    async def test_0_hash_is_access_denied(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        oid = await user(sandbox, "+12015550192")
        p = phone(keys="0#")
        _, _, fields, _ = await sign_in(eam, oid)
        assert fields["error"] == "access_denied"
        assert fields["error_description"] == "callmfa: fraud_reported"
        assert "id_token" not in fields
        assert p.wait(20) == 0, p.errors()

    @pytest.mark.parametrize(("behaviour", "outcome"), [
        ({"reject_with": 486}, "busy"), ({"ring_forever": True}, "no_answer")])
    async def test_busy_or_no_answer_is_access_denied(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, behaviour: dict[str, Any],
            outcome: str) -> None:
        oid = await user(sandbox, "+12015550197")
        p = phone(**behaviour)
        _, _, fields, _ = await sign_in(eam, oid)
        assert fields["error"] == "access_denied"
        assert fields["error_description"] == f"callmfa: {outcome}"
        assert p.received("INVITE") == 1

    async def test_a_blocked_user_is_access_denied_uncalled(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        """The suite runs with CALLMFA_FRAUD_BLOCK_S=0 (no block after 0#; that block is
        proven in test_security): the user is blocked as 0# would, with `callmfa block`."""
        oid = await user(sandbox, "+12015550194")
        out = await asyncio.to_thread(_callmfa, sandbox, "block", oid, "--for", "1h")
        assert out.returncode == 0, out.stderr
        p = phone(keys="#")
        _, _, fields, _ = await sign_in(eam, oid)
        assert fields["error"] == "access_denied"
        assert fields["error_description"] == "callmfa: blocked"
        assert p.received("INVITE") == 0

    async def test_a_forged_hint_places_no_call(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        from joserfc.jwk import RSAKey
        oid = await user(sandbox, "+12015550193")
        p = phone(keys="#")
        forger = RSAKey.generate_key(2048, parameters={"kid": "entra-1"})
        form = eam.entra.authorize_form(eam.entra.hint(oid=oid, key=forger),
                                        redirect_uri=eam.entra.redirect_uri)
        _, fields = posted(await eam.authorize(form))
        assert fields["error_description"] == "callmfa: invalid_hint"
        assert p.received("INVITE") == 0



class TestMatchMode:
    @pytest.mark.parametrize(("keys", "approved"), [(f"{MATCH}#", True), ("17#", False)])
    async def test_the_right_number_approves_a_wrong_one_is_refused(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, keys: str,
            approved: bool) -> None:
        oid = await user(sandbox, "+12015550196", "--mode", "match")
        p = phone(keys=keys)
        hint = eam.entra.hint(oid=oid)
        form = eam.entra.authorize_form(hint, redirect_uri=eam.entra.redirect_uri)
        page = await eam.authorize(form)
        assert f'<div id="match">{MATCH}</div>' in page
        await follow(eam, page)
        _, fields = posted(await eam.answer(page))
        assert fields["state"] == form["state"]
        assert ("id_token" in fields) is approved
        if not approved:
            assert fields["error"] == "access_denied"
            assert fields["error_description"] == "callmfa: denied"
        assert p.wait(20) == 0, p.errors()


class TestEntraInChromium:
    async def test_the_browser_is_called_then_carries_the_id_token_to_entra(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, tmp_path: Path) -> None:
        """Entra's page POSTs the authorize form from headless Chromium; the calling page
        (the screenshot in docs/entra.md) follows the call; its answer reaches Entra."""
        oid = await user(sandbox, "+12015550195")
        p = phone(keys="#", key_delay_ms=2500)
        hint = eam.entra.hint(oid=oid)
        form = eam.entra.authorize_form(hint, redirect_uri=eam.entra.redirect_uri)
        start = eam.entra.start_url(str(eam.http.make_url("/entra/authorize")), form)
        async with Chromium(tmp_path / "chromium", height=360) as browser:
            await browser.goto(start)
            await browser.until("(document.getElementById('progress') || {}).textContent"
                                " === 'Answered: follow the call.'", 30)
            calling = await browser.evaluate("document.getElementById('calling').textContent")
            assert calling == "We're calling +1 201 ••• 0195. Answer and press #."
            shot = tmp_path / "entra-calling.png"
            await browser.screenshot(shot)
            await browser.until("document.body && document.body.dataset.done", 45)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if target := os.environ.get("CALLMFA_ENTRA_SCREENSHOT"):  # docs/entra-calling.png
            shutil.copy(shot, target)
        (fields,) = eam.entra.received
        assert fields["state"] == form["state"]
        FakeEntra.validate_id_token(fields["id_token"], eam.front.keys.jwks(), issuer=ISSUER,
                                    form=form, hint=hint)
        assert p.wait(20) == 0, p.errors()
