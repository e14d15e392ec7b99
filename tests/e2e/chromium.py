"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, with
aiohttp's WebSocket client: enough to fill a form, click, read the page and screenshot it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest

from ..conftest import free_port


class Chromium:
    """One headless browser with one page."""

    def __init__(self, workdir: Path, *, width: int = 760, height: int = 520) -> None:
        self._workdir = workdir
        self._size = (width, height)
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._log: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Self:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is missing: run 'make deps' (apt-get install chromium)")
        port = free_port()
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._log = (self._workdir / "chromium.log").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self._workdir / 'profile'}",
            f"--window-size={self._size[0]},{self._size[1]}", "about:blank",
            stdout=subprocess.DEVNULL, stderr=self._log)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        deadline = time.monotonic() + 30
        while True:
            try:
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline or self._proc.returncode is not None:
                pytest.fail("chromium did not start: "
                            + (self._workdir / "chromium.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                                  max_msg_size=0)
        await self.send("Emulation.setDeviceMetricsOverride", width=self._size[0],
                        height=self._size[1], deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._log is not None:
            self._log.close()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        assert self._ws is not None
        rid = next(self._ids)
        await self._ws.send_str(json.dumps({"id": rid, "method": method, "params": params}))
        async with asyncio.timeout(15):
            while True:
                message = json.loads((await self._ws.receive()).data)
                if message.get("id") == rid:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        """Load ``url`` and wait until it is loaded."""
        await self.send("Page.navigate", url=url)
        await self.until("document.readyState === 'complete' && location.href !== "
                         "'about:blank'", 15)

    async def until(self, expression: str, timeout_s: float) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                body = await self.evaluate("document.body ? document.body.innerText : ''")
                pytest.fail(f"{expression!r} not true after {timeout_s}s; page: {body!r}")
            await asyncio.sleep(0.1)
        return value

    async def screenshot(self, path: Path) -> None:
        """The page as PNG."""
        data = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data["data"]))
