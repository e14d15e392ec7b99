"""A real webhook receiver (aiohttp) and a real SMTP server (aiosmtpd), for the tests.

The receiver verifies each POST with the ``standardwebhooks`` package, as a sign-in service
would, answers 503 to the first ``fail_first`` attempts (it is "down"), and keeps what it
accepted by webhook-id, so a test sees duplicates.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .conftest import free_port


@dataclass
class Received:
    """One accepted POST."""

    webhook_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class WebhookReceiver:
    """An aiohttp server on 127.0.0.1 that verifies and records webhooks."""

    secret: str
    fail_first: int = 0
    attempts: int = 0
    refused: int = 0  # bad signatures
    received: list[Received] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)  # any path: callbacks have their own
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.paths.append(request.path)
        data = await request.text()
        if self.attempts <= self.fail_first:
            return web.Response(status=503, text="down")
        try:
            body = Webhook(self.secret).verify(data, dict(request.headers))
        except WebhookVerificationError:
            self.refused += 1
            return web.Response(status=401)
        self.received.append(Received(request.headers["webhook-id"], dict(request.headers),
                                      body))
        return web.Response(status=204)

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.received]

    def of_type(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.body.get("type") == kind]


class _Mailbox:
    """Keeps what it accepts. ``refuse_first[address]``: RCPT answers 450 (greylisted) that
    many times first; ``quit_delay_s``: QUIT is answered that late (a slow relay)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse_first: dict[str, int] = {}
        self.quit_delay_s = 0.0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                          address: str, rcpt_options: list[str]) -> str:
        if self.refuse_first.get(address, 0) > 0:
            self.refuse_first[address] -= 1
            return "450 4.2.0 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        await asyncio.sleep(self.quit_delay_s)
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)  # type: ignore[arg-type]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class MailCatcher:
    """aiosmtpd on 127.0.0.1 (its own thread, as aiosmtpd's Controller runs)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.box = _Mailbox()
        self._controller = Controller(self.box, hostname="127.0.0.1", port=self.port)

    def start(self) -> MailCatcher:
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller.loop.is_running():
            self._controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.box.messages

