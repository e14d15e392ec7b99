"""The demo page in headless Chromium on the real chain: to approved (the screenshot in
docs/quickstart.md), to fraud_reported, and the number to key in match mode."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..conftest import Sandbox
from .chromium import Chromium
from .conftest import PhoneFactory

DEMO = "http://127.0.0.1:4581/demo"


async def sign_in(browser: Chromium, user: str, mode: str = "standard") -> str:
    """Fill the form, click, and return the outcome the page shows."""
    await browser.goto(DEMO)
    await browser.evaluate(
        f"document.getElementById('user').value = {json.dumps(user)};"
        "document.getElementById('phone').value = '+12015550100';"
        f"document.getElementById('mode').value = {json.dumps(mode)};"
        "document.getElementById('go').click()")
    outcome: str = await browser.until(
        "document.getElementById('outcome').dataset.outcome", 45)
    return outcome


async def progress(browser: Chromium) -> str:
    text: str = await browser.evaluate("document.getElementById('progress').textContent")
    return text


class TestDemoPage:
    async def test_the_page_drives_a_call_to_approved(
        self, sandbox: Sandbox, phone: PhoneFactory, tmp_path: Path
    ) -> None:
        p = phone(keys="#")
        async with Chromium(tmp_path / "chromium") as browser:
            assert await sign_in(browser, "demo-alice") == "approved"
            assert await progress(browser) == (
                "Calling +1 201 ••• 0100 … ringing … answered … approved")
            shot = tmp_path / "demo.png"
            await browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if target := os.environ.get("CALLMFA_DEMO_SCREENSHOT"):  # docs/demo.png, by hand
            shutil.copy(shot, target)
        assert p.wait(20) == 0, p.errors()

    async def test_the_page_shows_a_fraud_report(
        self, sandbox: Sandbox, phone: PhoneFactory, tmp_path: Path
    ) -> None:
        p = phone(keys="0#")
        async with Chromium(tmp_path / "chromium") as browser:
            assert await sign_in(browser, "demo-bob") == "fraud_reported"
            assert (await progress(browser)).endswith("answered … fraud reported")
            text = await browser.evaluate("document.getElementById('outcome').textContent")
            assert "fraud" in text
        assert p.wait(20) == 0, p.errors()

    async def test_match_mode_shows_the_number_to_key(
        self, sandbox: Sandbox, phone: PhoneFactory, tmp_path: Path
    ) -> None:
        """The page shows two digits; a phone that keys three is not approved."""
        p = phone(keys="123#")
        async with Chromium(tmp_path / "chromium") as browser:
            assert await sign_in(browser, "demo-carol", mode="match") in ("denied", "no_input")
            shown = await browser.evaluate("document.getElementById('match').textContent")
            assert len(shown) == 2
            assert shown.isdigit()
        assert p.wait(20) == 0, p.errors()
