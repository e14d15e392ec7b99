"""The Entra EAM through the real chain: the sandbox's own `callmfa serve` (role api, the
Entra settings of sandbox.sh) serves the EAM; the fake Entra, on the port sandbox.sh points
CALLMFA_ENTRA_DISCOVERY_URL at, serves its keys, mints the hints and holds callmfa's JWKS
as Entra does (cached 24 h); the sandbox's originator calls the sipp phone through
Asterisk, and the answer form comes back as Entra reads it.

This module's serve blocks a user after 0# (CALLMFA_FRAUD_BLOCK_S, 0 elsewhere in the
suite), as a production one does."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc.jwk import RSAKey
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ivr.storage.keys import REQUESTS
from tests.fake_entra import FakeEntra
from tests.integration.test_entra import posted

from ..conftest import Sandbox
from .chromium import Chromium
from .conftest import PhoneFactory, restart_serve
from .test_modes import _callmfa
from .test_operations import run_cli, scrape

ENTRA_PORT = 4591  # sandbox.sh's CALLMFA_ENTRA_DISCOVERY_URL
FRAUD_BLOCK_S = "86400"
_MATCH = re.compile(r'<div id="match">(\d+)</div>')


@pytest.fixture(scope="module")
def blocking(sandbox: Sandbox) -> Iterator[None]:
    """The sandbox's serve, for this module, with blocks after 0#; put back after."""
    restart_serve(sandbox, CALLMFA_FRAUD_BLOCK_S=FRAUD_BLOCK_S)
    try:
        yield
    finally:
        restart_serve(sandbox)


@pytest.fixture(scope="module")
def fake_entra(sandbox: Sandbox) -> FakeEntra:
    """One fake Entra (one signing key: serve caches Entra's keys) for the module."""
    entra = FakeEntra(base=f"http://127.0.0.1:{ENTRA_PORT}",
                      client_id=sandbox.env["CALLMFA_ENTRA_CLIENT_ID"])
    assert sandbox.env["CALLMFA_ENTRA_DISCOVERY_URL"] == entra.discovery_url
    return entra


@dataclass
class Eam:
    """The user's browser (``http``, on the sandbox's API) and Entra."""

    sandbox: Sandbox
    http: aiohttp.ClientSession
    entra: FakeEntra
    api: str

    @property
    def issuer(self) -> str:
        return self.sandbox.env["CALLMFA_ENTRA_ISSUER"]

    async def provider_keys(self) -> tuple[str, dict[str, Any]]:
        """callmfa's issuer and JWKS as Entra holds them (fetched once, cached 24 h): the
        issuer's host is the sandbox's API here."""
        origin = re.match(r"https://[^/]+", self.issuer)
        assert origin
        return await self.entra.provider_keys(
            self.http, f"{self.issuer}/.well-known/openid-configuration",
            hosts={origin.group(0): self.api})

    async def authorize(self, form: dict[str, str]) -> str:
        """The browser's form POST to the authorization endpoint; the page it gets."""
        async with self.http.post(f"{self.api}/entra/authorize", data=form) as response:
            assert response.status == 200
            return await response.text()

    async def follow(self, page: str, timeout_s: float = 45) -> list[str]:
        """What the waiting page does: read the SSE stream until ``finished``."""
        url = re.search(r'new EventSource\("([^"]+)"\)', page)
        assert url
        async with asyncio.timeout(timeout_s), self.http.get(self.api + url.group(1)) as r:
            text = await r.text()
        return re.findall(r"^event: (\w+)$", text, re.M)

    async def answer(self, page: str, form: dict[str, str]) -> dict[str, str]:
        """The answer the page loads once the call ended: the fields it form-POSTs to
        ``redirect_uri``, with ``state`` echoed."""
        url = re.search(r'window\.location\.assign\("([^"]+)"\)', page)
        assert url
        async with self.http.get(self.api + url.group(1)) as response:
            assert response.status == 200
            target, fields = posted(await response.text())
        assert target == form["redirect_uri"]
        assert fields["state"] == form["state"]
        return fields

    def form(self, oid: str, **hint: Any) -> tuple[dict[str, str], str]:
        """An authorize form for ``oid`` as Entra makes the browser send it; its hint."""
        token = self.entra.hint(oid=oid, **hint)
        return self.entra.authorize_form(token, redirect_uri=self.entra.redirect_uri), token

    async def valid(self, fields: dict[str, str], form: dict[str, str],
                    hint: str) -> dict[str, Any]:
        """The id_token's claims, once Entra's checks pass (with its cached JWKS)."""
        issuer, jwks = await self.provider_keys()
        assert issuer == self.issuer
        return FakeEntra.validate_id_token(fields["id_token"], jwks, issuer=issuer, form=form,
                                           hint=hint)


@pytest.fixture
async def eam(sandbox: Sandbox, blocking: None, fake_entra: FakeEntra) -> AsyncIterator[Eam]:
    """The fake Entra listening on its port for one test, and a browser."""
    runner = web.AppRunner(fake_entra.app())
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", ENTRA_PORT).start()
        fake_entra.received.clear()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield Eam(sandbox, http, fake_entra,
                      f"http://127.0.0.1:{sandbox.env['CALLMFA_API_PORT']}")
    finally:
        await runner.cleanup()


async def user(sandbox: Sandbox, number: str, *options: str) -> str:
    """A new Entra user (its oid) in `callmfa user`'s directory, at ``number``."""
    oid = str(uuid.uuid4())
    out = await asyncio.to_thread(_callmfa, sandbox, "user", "set", oid, "--phone", number,
                                  *options)
    assert out.returncode == 0, out.stderr
    return oid


async def sign_in(eam: Eam, oid: str) -> tuple[dict[str, str], str, dict[str, str], list[str]]:
    """A whole sign-in of ``oid``: the form, its hint, the answer's fields, the events."""
    form, hint = eam.form(oid)
    page = await eam.authorize(form)
    events = await eam.follow(page)
    return form, hint, await eam.answer(page, form), events


async def requests_added(sandbox: Sandbox) -> int:
    """Requests ever added to callmfa:requests (settled ones are deleted, not uncounted)."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        info = await redis.xinfo_stream(REQUESTS)
    except ResponseError:  # no such key: nothing was ever queued
        return 0
    finally:
        await redis.aclose()
    return int(info["entries-added"])


class TestEntraSignIn:
    async def test_the_phone_presses_hash_and_entra_gets_a_valid_id_token(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        oid = await user(sandbox, "+12015550191")
        p = phone(keys="#")
        form, hint, fields, events = await sign_in(eam, oid)
        assert events[-1] == "finished"
        assert "answered" in events
        claims = await eam.valid(fields, form, hint)
        assert claims["oid"] == oid
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550191": 1}

    async def test_0_hash_is_access_denied_and_the_user_is_then_blocked_uncalled(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        oid = await user(sandbox, "+12015550192")
        p = phone(keys="0#")
        _, _, fields, _ = await sign_in(eam, oid)
        assert fields["error"] == "access_denied"
        assert fields["error_description"] == "callmfa: fraud_reported"
        assert "id_token" not in fields
        assert p.wait(20) == 0, p.errors()
        blocked = await asyncio.to_thread(run_cli, sandbox, "blocked")
        assert oid in blocked.stdout, blocked.stdout + blocked.stderr
        # The user's next Entra sign-in: refused, and the phone does not ring.
        again = phone(keys="#")
        _, _, fields, _ = await sign_in(eam, oid)
        assert fields["error"] == "access_denied"
        assert fields["error_description"] == "callmfa: blocked"
        assert again.received("INVITE") == 0

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


BAD_HINTS = {  # what is wrong -> the hint's fields, the reason logged and counted
    "bad_signature": ({"key": "forged"}, "invalid_hint"),
    "wrong_issuer": ({"iss": "https://login.microsoftonline.com/evil/v2.0"}, "wrong_issuer"),
    "wrong_audience": ({"aud": "another-application"}, "wrong_audience"),
    "unknown_user": ({}, "unknown_user"),
    "older_than_5_minutes": ({"age_s": 301}, "stale_request"),
}


class TestRefusedBeforeAnyCall:
    @pytest.mark.parametrize("wrong", list(BAD_HINTS))
    async def test_a_bad_hint_is_access_denied_with_no_call(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, wrong: str) -> None:
        """Refused back to Entra, logged and counted on the sandbox's /metrics; no request
        is queued, the phone gets no INVITE."""
        fields_of_hint, reason = BAD_HINTS[wrong]
        hint = dict(fields_of_hint)
        if hint.get("key") == "forged":  # Entra's kid, another key
            hint["key"] = RSAKey.generate_key(2048, parameters={"kid": eam.entra.key.kid})
        oid = str(uuid.uuid4()) if wrong == "unknown_user" else await user(
            sandbox, "+12015550193")
        p = phone(keys="#")
        metric = f"callmfa_entra_requests_refused_total{{reason={reason}}}"
        counted, queued = scrape().get(metric, 0), await requests_added(sandbox)
        log = sandbox.directory / "logs" / "callmfa.log"
        offset = log.stat().st_size
        form, _ = eam.form(oid, **hint)
        target, fields = posted(await eam.authorize(form))
        assert target == form["redirect_uri"]
        assert fields == {"error": "access_denied", "state": form["state"],
                          "error_description": f"callmfa: {reason}"}
        assert await requests_added(sandbox) == queued
        assert scrape()[metric] == counted + 1
        with log.open() as f:
            f.seek(offset)
            logged = [json.loads(line) for line in f if line.startswith("{")]
        assert [e["reason"] for e in logged if e["event"] == "entra_request_refused"] == [
            reason]
        assert p.received("INVITE") == 0


class TestMatchMode:
    @pytest.mark.parametrize("right", [True, False], ids=["right_number", "wrong_number"])
    async def test_the_phone_keys_what_the_page_shows(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, right: bool) -> None:
        """The number is drawn by serve and shown only on the page: the phone keys it (or
        another), then #."""
        oid = await user(sandbox, "+12015550196", "--mode", "match")
        p = phone(keys="??#")
        form, hint = eam.form(oid)
        page = await eam.authorize(form)
        shown = _MATCH.search(page)
        assert shown, page
        number = shown.group(1)
        p.give_keys(number if right else f"{(int(number) + 1) % 100:02d}")
        await eam.follow(page)
        fields = await eam.answer(page, form)
        if right:
            assert (await eam.valid(fields, form, hint))["oid"] == oid
        else:
            assert "id_token" not in fields
            assert fields["error"] == "access_denied"
            assert fields["error_description"] == "callmfa: denied"
        assert p.wait(20) == 0, p.errors()


class TestKeyRotation:
    async def test_entras_cached_jwks_still_validates_after_callmfa_keys_rotate(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory) -> None:
        """`callmfa keys rotate` while serve runs: the new key is published at once, the old
        one still signs (2 days), so Entra's copy of the JWKS, fetched before, validates."""
        _, cached = await eam.provider_keys()
        fetches = eam.entra.provider_fetches
        key_file = Path(sandbox.env["CALLMFA_ENTRA_SIGNING_KEY_FILE"])
        before = await asyncio.to_thread(key_file.read_text)
        old = [k["kid"] for k in cached["keys"]]
        signing = signing_now(await asyncio.to_thread(run_cli, sandbox, "keys", "list"))
        try:
            out = await asyncio.to_thread(run_cli, sandbox, "keys", "rotate")
            assert out.returncode == 0, out.stdout + out.stderr
            async with eam.http.get(f"{eam.api}/entra/jwks") as r:
                published = [k["kid"] for k in (await r.json())["keys"]]
            assert published[:-1] == old
            new = published[-1]
            assert new not in old
            listed = await asyncio.to_thread(run_cli, sandbox, "keys", "list")
            assert signing_now(listed) == signing  # the new key signs in 2 days
            oid = await user(sandbox, "+12015550198")
            p = phone(keys="#")
            form, hint, fields, _ = await sign_in(eam, oid)
            header = json.loads(_b64(fields["id_token"].split(".")[0]))
            assert header["kid"] == signing
            assert (await eam.valid(fields, form, hint))["oid"] == oid
            assert eam.entra.provider_fetches == fetches  # Entra's cached copy, not a fresh one
            assert p.wait(20) == 0, p.errors()
        finally:
            # The sandbox's key file as it was (serve reads it again when it changes).
            await asyncio.to_thread(restore, key_file, before)


def restore(key_file: Path, text: str) -> None:
    """Put the key file back, atomically and 0600, as `callmfa keys rotate` writes it."""
    tmp = key_file.with_suffix(".restore")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    tmp.replace(key_file)


def signing_now(listed: subprocess.CompletedProcess[str]) -> str:
    """The kid `callmfa keys list` says signs now."""
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (kid,) = [line.split("\t")[0] for line in listed.stdout.splitlines()
              if line.endswith("signing now")]
    return kid


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TestEntraInChromium:
    async def test_the_browser_is_called_then_carries_the_id_token_to_entra(
            self, sandbox: Sandbox, eam: Eam, phone: PhoneFactory, tmp_path: Path) -> None:
        """Entra's page POSTs the authorize form from headless Chromium; the calling page
        (the screenshot in docs/entra.md) follows the call; its answer reaches Entra."""
        oid = await user(sandbox, "+12015550195")
        p = phone(keys="#", key_delay_ms=2500)
        form, hint = eam.form(oid)
        start = eam.entra.start_url(f"{eam.api}/entra/authorize", form)
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
        await eam.valid(fields, form, hint)
        assert p.wait(20) == 0, p.errors()
