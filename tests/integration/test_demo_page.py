"""The demo page's script in headless Chromium, against the real API application on a real
listener and a real redis-server; the call's progress is written into Redis as the
originator and the IVR write it. What the page does when the network, the listener or the
event stream fails."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts.api import ApiParts, build_app
from ivr.fronts.web import HttpListener
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.guard import Guard
from ivr.storage.keys import REQUESTS
from ivr.storage.store import Store

from ..conftest import free_port
from ..e2e.chromium import Chromium
from .conftest import eventually

KEY = "k" * 40
DONE = ("document.getElementById('outcome').textContent && "
        "!document.getElementById('go').disabled")


class Demo:
    """The API with the demo page on a fixed port, which can be restarted."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.port = free_port()
        self.listener: HttpListener | None = None
        self.store = Store(redis, result_ttl_s=60, events_maxlen=1000,
                           signing_key=KEY.encode())

    async def start(self, *, demo: bool = True) -> None:
        settings = Settings(signing_key=KEY)
        parts = ApiParts.for_redis(settings, self.redis, Guard(self.redis, limits(settings)))
        self.listener = HttpListener(build_app(parts, with_demo=demo), host="127.0.0.1",
                                     port=self.port, name="api", idle_timeout_s=75.0)
        await self.listener.start()

    async def stop(self) -> None:
        assert self.listener is not None
        await self.listener.close()
        self.listener = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/demo"

    async def queued_id(self) -> str:
        await eventually(lambda: self.redis.xlen(REQUESTS), what="a queued request")
        entries: Any = await self.redis.xrange(REQUESTS)
        rid: str = json.loads(entries[-1][1][b"request"])["id"]
        return rid

    async def finish(self, rid: str, outcome: Outcome = Outcome.APPROVED) -> None:
        now = time.time()
        await self.store.store_outcome(OutcomeRecord(
            id=rid, user="demo-alice", outcome=outcome, requested_at=now,
            call_started_at=now, answered_at=now, input_at=now, finished_at=now),
            input_at=now)


@pytest.fixture
async def demo(redis: Redis) -> AsyncIterator[Demo]:
    d = Demo(redis)
    await d.start()
    yield d
    if d.listener is not None:
        await d.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium(tmp_path / "chromium") as b:
        yield b


async def _text(browser: Chromium, element: str) -> str:
    text: str = await browser.evaluate(f"document.getElementById('{element}').textContent")
    return text


async def _sign_in(browser: Chromium, demo: Demo) -> None:
    await browser.goto(demo.url)
    await browser.evaluate("document.getElementById('go').click()")


class TestDemoPage:
    async def test_a_call_to_approved(self, demo: Demo, browser: Chromium) -> None:
        """The happy path, as the e2e test sees it, without Asterisk."""
        await _sign_in(browser, demo)
        rid = await demo.queued_id()
        for name in ("queued", "dialing", "ringing", "answered"):
            await demo.store.event(rid, name)
        await demo.finish(rid)
        assert await browser.until("document.getElementById('outcome').dataset.outcome",
                                   15) == "approved"
        assert await _text(browser, "progress") == (
            "Calling +1 201 ••• 0100 … ringing … answered … approved")

    async def test_an_unreachable_server_is_said_and_the_form_comes_back(
        self, demo: Demo, browser: Chromium
    ) -> None:
        """The listener is gone when the user signs in: fetch fails. The page said nothing
        and kept its button disabled for ever (an unhandled rejection)."""
        await browser.goto(demo.url)
        await demo.stop()
        await browser.evaluate("document.getElementById('go').click()")
        await browser.until(DONE, 10)
        assert "try again" in await _text(browser, "outcome")

    async def test_a_server_restart_mid_call_shows_each_step_once(
        self, demo: Demo, browser: Chromium
    ) -> None:
        """The listener restarts while the phone rings: EventSource reconnects and the
        server sends the events from the first again. The page said them all twice
        ("Calling … ringing … Calling … ringing … answered …")."""
        await _sign_in(browser, demo)
        rid = await demo.queued_id()
        for name in ("queued", "dialing", "ringing"):
            await demo.store.event(rid, name)
        await browser.until("document.getElementById('progress').textContent"
                            ".endsWith('ringing')", 10)
        await demo.stop()
        await demo.start()
        await demo.store.event(rid, "answered")
        await demo.finish(rid)
        assert await browser.until("document.getElementById('outcome').dataset.outcome",
                                   20) == "approved"
        assert await _text(browser, "progress") == (
            "Calling +1 201 ••• 0100 … ringing … answered … approved")

    async def test_a_stream_that_cannot_come_back_is_said_and_the_form_comes_back(
        self, demo: Demo, browser: Chromium
    ) -> None:
        """The listener comes back without the demo (404 for the event stream):
        EventSource gives up. The page waited for ever with its button disabled."""
        await _sign_in(browser, demo)
        rid = await demo.queued_id()
        await demo.store.event(rid, "dialing")
        await browser.until("document.getElementById('progress').textContent", 10)
        await demo.stop()
        await demo.start(demo=False)
        await browser.until(DONE, 20)
        assert await browser.evaluate(
            "document.getElementById('outcome').dataset.outcome") is None
