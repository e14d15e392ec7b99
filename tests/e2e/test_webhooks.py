"""Webhooks and fraud alert e-mails on the real chain (docs/webhooks.md).

The sandbox's `callmfa serve` is restarted for this module with a webhook URL, a secret and
alert e-mail settings that point at a real aiohttp receiver and a real aiosmtpd server in
this test process, which has joined the sandbox's network namespace, so serve reaches them
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.domain.signing import verified
from ivr.storage.keys import WEBHOOKS

from ..conftest import Sandbox, free_port
from ..integration.conftest import eventually
from ..webhook_receiver import MailCatcher, WebhookReceiver
from .conftest import PhoneFactory, restart_serve

SECRET = "whsec_" + "c2FuZGJveC13ZWJob29rLXNlY3JldC0zMmJ5dGVzIQ=="
PHONE = "+12015550100"


class Ports:
    def __init__(self) -> None:
        self.hook = free_port()
        self.callback = free_port()
        self.mail = MailCatcher()

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.hook}/hook"

    def env(self) -> dict[str, str]:
        return {
            "CALLMFA_WEBHOOK_URL": self.hook_url,
            "CALLMFA_WEBHOOK_SECRET": SECRET,
            "CALLMFA_WEBHOOK_ALLOWED_URLS": f"http://127.0.0.1:{self.callback}/cb",
            # Short back-off: 1 s, then 2 s at most, so retries fit in a test.
            "CALLMFA_WEBHOOK_BACKOFF_BASE_S": "1",
            "CALLMFA_WEBHOOK_BACKOFF_MAX_S": "2",
            "CALLMFA_WEBHOOK_TIMEOUT_S": "3",
            "CALLMFA_ALERT_EMAIL": "security@example.com",
            "CALLMFA_SMTP_HOST": "127.0.0.1",
            "CALLMFA_SMTP_PORT": str(self.mail.port),
            "CALLMFA_SMTP_STARTTLS": "off",
            "CALLMFA_SMTP_FROM": "callmfa@example.com",
        }


@pytest.fixture(scope="module")
def ports(sandbox: Sandbox) -> Iterator[Ports]:
    """serve with this module's webhook and alert settings; the suite's settings after."""
    p = Ports()
    p.mail.start()
    restart_serve(sandbox, **p.env())
    try:
        yield p
    finally:
        p.mail.stop()
        restart_serve(sandbox)


async def _receiver(port: int) -> WebhookReceiver:
    r = WebhookReceiver(SECRET)
    await r.start(port)
    return r


@pytest.fixture
async def receiver(ports: Ports) -> AsyncIterator[WebhookReceiver]:
    r = await _receiver(ports.hook)
    yield r
    await r.close()


async def _queue_empty(sandbox: Sandbox) -> bool:
    redis = Redis.from_url(sandbox.redis_url)
    try:
        return await redis.xlen(WEBHOOKS) == 0
    finally:
        await redis.aclose()


def _log(sandbox: Sandbox) -> str:
    return (Path(sandbox.directory) / "logs" / "callmfa.log").read_text(errors="replace")


class TestOutcomeWebhook:
    async def test_the_receiver_gets_the_signed_outcome_of_a_real_call(
            self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
            receiver: WebhookReceiver) -> None:
        p = phone(keys="#")
        record = await client.verify(user="alice", phone=PHONE, timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        await eventually(lambda: len(receiver.of_type("verification.finished")) == 1,
                         timeout_s=10, what="the outcome's webhook")
        got = receiver.of_type("verification.finished")[0]
        assert got.body["data"]["id"] == record.id
        # The data is the outcome exactly as stored: its HMAC (CALLMFA_SIGNING_KEY) checks.
        key = sandbox.env["CALLMFA_SIGNING_KEY"].encode()
        redis = Redis.from_url(sandbox.redis_url)
        try:
            stored = json.loads(await redis.get(f"callmfa:result:{record.id}"))
        finally:
            await redis.aclose()
        assert got.body["data"] == stored
        assert verified(key, json.dumps(got.body["data"])) == record
        assert receiver.refused == 0
        assert p.wait(20) == 0, p.errors()

    async def test_down_for_3_attempts_and_a_serve_restart_between_still_exactly_once(
            self, sandbox: Sandbox, client: VerificationClient, ports: Ports,
            receiver: WebhookReceiver) -> None:
        receiver.fail_first = 3
        # A request that cannot be read ends `rejected` at once: an outcome with no call.
        rid = await client.submit(user="alice", phone="not-a-number")
        await eventually(lambda: receiver.attempts >= 2, timeout_s=10,
                         what="two failed attempts")
        # Restart serve (in a thread: this loop keeps the receiver answering meanwhile).
        await asyncio.to_thread(restart_serve, sandbox, **ports.env())
        restarted = time.monotonic()
        await eventually(lambda: len(receiver.received) == 1, timeout_s=20,
                         what="the webhook after the restart")
        await eventually(lambda: _queue_empty(sandbox), timeout_s=10, what="the queue")
        got = receiver.received[0]
        assert got.body["data"]["id"] == rid
        assert got.body["data"]["outcome"] == "rejected"
        assert got.at > restarted  # delivered by the new serve, after the restart
        assert receiver.attempts == 4
        assert len(receiver.ids()) == len(set(receiver.ids())) == 1

    async def test_the_requests_callback_url_gets_it_and_one_outside_the_list_is_refused(
            self, sandbox: Sandbox, client: VerificationClient, ports: Ports,
            receiver: WebhookReceiver) -> None:
        callback = await _receiver(ports.callback)
        try:
            # Already expired: it ends `expired`, uncalled, and its outcome goes to the
            # callback_url, which was checked and kept.
            good = await client.submit(user="alice", phone=PHONE, expires_in_s=-10,
                                       callback_url=f"http://127.0.0.1:{ports.callback}/cb")
            # The attack: send the outcome elsewhere (an attacker's server, or an internal
            # service to probe). It is rejected and nothing goes there.
            evil = await client.submit(user="alice", phone=PHONE,
                                       callback_url=f"http://127.0.0.1:{ports.hook}/steal")
            # Or out of the allowed prefix by dot segments (the HTTP client resolves them:
            # /cb/../steal would be posted to /steal).
            dots = await client.submit(user="alice", phone=PHONE,
                                       callback_url=f"http://127.0.0.1:{ports.callback}"
                                                    "/cb/%2e%2e/steal")
            for attack in (evil, dots):
                refused = await client.wait(attack, 20)
                assert refused is not None
                assert (refused.outcome, refused.detail) == (Outcome.REJECTED,
                                                             "invalid_callback_url")
            expired = await client.wait(good, 20)
            assert expired is not None
            assert expired.outcome is Outcome.EXPIRED
            await eventually(lambda: len(callback.received) == 1, timeout_s=10,
                             what="the callback")
            await eventually(lambda: _queue_empty(sandbox), timeout_s=10, what="the queue")
            assert callback.received[0].body["data"]["id"] == good
            assert callback.received[0].body["data"]["outcome"] == "expired"
            assert callback.paths == ["/cb"]
            assert "/steal" not in receiver.paths
            # The refusal's own outcome goes to the default URL, never to the URL refused.
            assert sorted(r.body["data"]["id"] for r in receiver.received) == sorted(
                [evil, dots])
        finally:
            await callback.close()
        assert "request_rejected" in _log(sandbox)


class TestFraudAlert:
    async def test_zero_pound_sends_the_alert_email_and_the_security_webhook(
            self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
            ports: Ports, receiver: WebhookReceiver) -> None:
        before = len(ports.mail.messages)
        p = phone(keys="0#")
        record = await client.verify(user="mallory-target", phone=PHONE, timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.FRAUD_REPORTED
        await eventually(lambda: len(receiver.of_type("security.fraud_reported")) == 1
                         and len(ports.mail.messages) > before, timeout_s=15,
                         what="the security webhook and the alert e-mail")
        event = receiver.of_type("security.fraud_reported")[0].body["data"]
        assert (event["user"], event["id"]) == ("mallory-target", record.id)
        mail = ports.mail.messages[-1]
        assert "fraud" in mail["Subject"]
        assert "mallory-target" in mail["Subject"]
        text = mail.get_content()
        assert record.id in text
        assert "+120•••0100" in text
        assert PHONE not in text
        assert ports.mail.box.envelopes[-1] == ("callmfa@example.com",
                                                ["security@example.com"])
        assert p.wait(20) == 0, p.errors()


class TestClassicScript:
    async def test_the_classic_scripts_outcome_is_sent_too(
            self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
            ports: Ports, receiver: WebhookReceiver) -> None:
        """The classic AGI script (one process per call, its own settings) stores the outcome
        with the same script, so its webhook is queued in the same step."""
        # The classic script's settings file is written when the sandbox's Asterisk starts:
        # give it this module's webhook settings for the test, and put it back after.
        env_file = (Path(sandbox.env["CALLMFA_ASTERISK_ROOT"]) / "etc" /
                    f"asterisk-{sandbox.netns}" / "callmfa.env")
        original = env_file.read_text()
        env_file.write_text(original + "".join(f"export {k}={v}\n"
                                               for k, v in ports.env().items()))
        await asyncio.to_thread(restart_serve, sandbox, CALLMFA_AGI_MODE="classic",
                                **ports.env())
        try:
            p = phone(keys="#")
            record = await client.verify(user="alice", phone=PHONE, timeout_s=40)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            await eventually(lambda: len(receiver.of_type("verification.finished")) == 1,
                             timeout_s=10, what="the classic outcome's webhook")
            assert receiver.received[0].body["data"]["id"] == record.id
            assert p.wait(20) == 0, p.errors()
        finally:
            env_file.write_text(original)
            await asyncio.to_thread(restart_serve, sandbox, **ports.env())
