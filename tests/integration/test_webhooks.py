"""The delivery worker against a real redis-server, a real aiohttp receiver and aiosmtpd."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts.alerts import MailSender
from ivr.fronts.webhooks import Deliverer, Sender, WebhookSender, http_session
from ivr.metrics import Metrics
from ivr.ops.doctor import Status, _webhooks_state
from ivr.settings import Settings
from ivr.storage.guard import Guard, Limits
from ivr.storage.keys import AUDIT, AUDIT_GROUP, WEBHOOK_DEAD, WEBHOOKS, fraud_report_args
from ivr.storage.store import Store, call_key
from ivr.storage.webhooks import Delivery, DeliveryQueue

from ..conftest import RedisServer
from ..webhook_receiver import MailCatcher, WebhookReceiver
from .conftest import eventually

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _settings(redis_server: RedisServer, **env: str) -> Settings:
    return Settings.from_env({
        "CALLMFA_REDIS_URL": redis_server.url,
        "CALLMFA_WEBHOOK_SECRET": SECRET,
        "CALLMFA_WEBHOOK_BACKOFF_BASE_S": "0.2",
        "CALLMFA_WEBHOOK_BACKOFF_MAX_S": "0.5",
        "CALLMFA_WEBHOOK_TIMEOUT_S": "2",
        "CALLMFA_CONSUMER": f"w-{uuid.uuid4().hex[:6]}",
        "CALLMFA_SMTP_STARTTLS": "off",
        **env,
    })


class Worker:
    """One delivery worker as `callmfa serve` runs it (its own HTTP session)."""

    def __init__(self, settings: Settings, redis: Redis,
                 reclaim_idle_s: float | None = None) -> None:
        self.settings = settings
        self.reclaim_idle_s = reclaim_idle_s
        self.queue = DeliveryQueue(redis)
        self.metrics = Metrics()
        self.deliverer: Deliverer | None = None

    async def __aenter__(self) -> Worker:
        self.session = http_session(self.settings)
        senders: dict[str, Sender] = {"webhook": WebhookSender(self.session, SECRET)}
        if self.settings.alert_recipients:  # as `callmfa serve` does
            senders["email"] = MailSender(self.settings)
        self.deliverer = Deliverer(self.settings, self.queue, senders, observer=self.metrics,
                                   reclaim_idle_s=self.reclaim_idle_s)
        await self.deliverer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.deliverer is not None
        await self.deliverer.stop(1.0)
        await self.session.close()

    def count(self, channel: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "callmfa_webhook_attempts_total", {"channel": channel, "result": result})
        return value or 0.0


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver(SECRET).start()
    yield r
    await r.close()


@pytest.fixture
def mail() -> Iterator[MailCatcher]:
    m = MailCatcher().start()
    yield m
    m.stop()


def _record(user: str = "alice") -> OutcomeRecord:
    now = time.time()
    return OutcomeRecord(id=str(uuid.uuid4()), user=user, outcome=Outcome.APPROVED,
                         requested_at=now - 2, finished_at=now)


async def _store(redis: Redis, url: str) -> Store:
    return Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=b"k" * 32,
                 webhook_url=url)


async def _drained(queue: DeliveryQueue) -> bool:
    return (await queue.figures()).pending == 0


class TestOutcomeWebhooks:
    async def test_the_signed_outcome_arrives(self, redis: Redis, redis_server: RedisServer,
                                              receiver: WebhookReceiver) -> None:
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url)
        store = await _store(redis, receiver.url)
        record = _record()
        async with Worker(s, redis) as w:
            assert await store.store_outcome(record)
            await eventually(lambda: len(receiver.received) == 1, what="the webhook")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
        got = receiver.received[0]
        stored = (await redis.get(f"callmfa:result:{record.id}")).decode()
        assert got.body["type"] == "verification.finished"
        assert got.body["data"]["outcome"] == "approved"
        assert got.body["data"]["sig"]  # the outcome exactly as stored, its signature kept
        assert OutcomeRecord.from_wire(got.body["data"]) == OutcomeRecord.from_json(stored)
        assert got.webhook_id == f"msg_{record.id}_{int(record.finished_at * 1000)}"  # type: ignore[operator]

    async def test_down_for_3_attempts_and_a_worker_restart_still_exactly_once(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        receiver.fail_first = 3
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url)
        store = await _store(redis, receiver.url)
        record = _record()
        async with Worker(s, redis) as first:
            assert await store.store_outcome(record)
            await eventually(lambda: receiver.attempts >= 2, what="two failed attempts")
        assert receiver.received == []
        # The worker is gone; the retry waits in Redis. A new process (a new consumer) goes on.
        assert (await DeliveryQueue(redis).figures()).pending == 1
        again = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url)
        async with Worker(again, redis) as second:
            await eventually(lambda: len(receiver.received) == 1, what="the webhook")
            await eventually(lambda: _drained(second.queue), what="the queue to empty")
        assert receiver.attempts == 4
        assert receiver.ids() == [f"msg_{record.id}_{int(record.finished_at * 1000)}"]  # type: ignore[operator]
        assert first.count("webhook", "failed") + second.count("webhook", "failed") == 3
        assert second.count("webhook", "delivered") == 1
        assert await redis.hlen("callmfa:webhooks:failures") == 0
        assert await redis.zcard("callmfa:webhooks:retry") == 0

    async def test_a_first_attempt_lost_with_its_process_is_taken_over(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url)
        store = await _store(redis, receiver.url)
        record = _record()
        await store.store_outcome(record)
        queue = DeliveryQueue(redis)
        await queue.ensure_groups()
        # A process read it and died before it settled it (no ack, no retry scheduled).
        assert len(await queue.read_new("crashed-1", 10, 0)) == 1
        async with Worker(s, redis, reclaim_idle_s=0.2) as w:
            await eventually(lambda: len(receiver.received) == 1, what="the taken-over webhook")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
        assert receiver.received[0].body["data"]["id"] == record.id

    async def test_the_requests_callback_url_wins_over_the_default(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        other = await WebhookReceiver(SECRET).start()
        try:
            s = _settings(redis_server, CALLMFA_WEBHOOK_URL=other.url)
            store = await _store(redis, other.url)
            marked, passed, default = _record(), _record(), _record()
            # The IVR's outcome: the callback_url is on the call marker the originator wrote.
            await redis.hset(call_key(marked.id), "callback_url", receiver.url)
            async with Worker(s, redis) as w:
                await store.store_outcome(marked)
                await store.store_outcome(passed, callback_url=receiver.url)
                await store.store_outcome(default)
                await eventually(lambda: len(receiver.received) == 2 and
                                 len(other.received) == 1, what="the webhooks")
                await eventually(lambda: _drained(w.queue), what="the queue to empty")
            assert {r.body["data"]["id"] for r in receiver.received} == {marked.id, passed.id}
            assert other.received[0].body["data"]["id"] == default.id
        finally:
            await other.close()

    async def test_no_url_no_webhook_and_a_second_outcome_is_no_second_webhook(
            self, redis: Redis) -> None:
        quiet = await _store(redis, "")
        await quiet.store_outcome(_record())
        assert await redis.xlen(WEBHOOKS) == 0
        loud = await _store(redis, "https://h.example/")
        record = _record()
        assert await loud.store_outcome(record)
        assert await loud.store_outcome(record)  # the same again (a retried write): stored
        assert not await loud.store_outcome(dataclasses.replace(record, outcome=Outcome.DENIED))
        assert await redis.xlen(WEBHOOKS) == 1

    async def test_given_up_after_the_window_dead_lettered_and_counted(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        receiver.fail_first = 1000
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url,
                      CALLMFA_WEBHOOK_GIVE_UP_S="1")
        store = await _store(redis, receiver.url)
        async with Worker(s, redis) as w:
            await store.store_outcome(_record())
            await eventually(lambda: _dead(redis), timeout_s=10, what="the dead letter")
            figures = await w.queue.figures()
            assert w.count("webhook", "dead_lettered") == 1
        assert (figures.pending, figures.scheduled, figures.dead) == (0, 0, 1)
        letter = (await w.queue.dead_letters())[0]
        assert letter["error"] == "http_503"
        assert int(letter["attempts"]) == receiver.attempts >= 2
        assert letter["type"] == "verification.finished"
        await w.metrics.refresh_queue(redis)
        assert w.metrics.registry.get_sample_value("callmfa_webhooks_dead_letters") == 1
        # `callmfa check` shows it, with what to do.
        check = await _webhooks_state(redis, s)
        assert check.status is Status.WARN
        assert "1 dead-lettered" in check.message
        assert "http_503" in check.message
        assert check.fix is not None
        assert WEBHOOK_DEAD in check.fix

    async def test_an_unreachable_receiver_is_retried(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        port = receiver.port
        await receiver.close()  # connection refused
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook")
        store = await _store(redis, s.webhook_url)
        async with Worker(s, redis) as w:
            await store.store_outcome(_record())
            await eventually(lambda: w.count("webhook", "failed") >= 2, what="retries")
        assert await redis.zcard("callmfa:webhooks:retry") == 1


class _Broken:
    async def send(self, d: Delivery) -> None:
        raise RuntimeError("a bug")


async def test_a_sender_that_crashes_fails_the_attempt_and_is_dead_lettered_in_the_end(
        redis: Redis, redis_server: RedisServer) -> None:
    """A bug (or a poisonous entry) never leaves a delivery stuck: it is retried, then
    given up on, like any failure."""
    s = _settings(redis_server, CALLMFA_WEBHOOK_URL="https://h.example/",
                  CALLMFA_WEBHOOK_GIVE_UP_S="0.5")
    store = await _store(redis, s.webhook_url)
    deliverer = Deliverer(s, DeliveryQueue(redis), {"webhook": _Broken()})
    await deliverer.start()
    try:
        await store.store_outcome(_record())
        await eventually(lambda: _dead(redis), timeout_s=10, what="the dead letter")
    finally:
        await deliverer.stop(1.0)
    letter = (await DeliveryQueue(redis).dead_letters())[0]
    assert letter["error"] == "RuntimeError: a bug"
    assert await redis.xlen(WEBHOOKS) == 0


async def test_a_channel_no_process_sends_is_dead_lettered_once_too_old(
        redis: Redis, redis_server: RedisServer) -> None:
    """An e-mail queued where no process has the alert settings: put back, no failure
    counted, and given up on at the end of its window."""
    s = _settings(redis_server, CALLMFA_WEBHOOK_GIVE_UP_S="1", CALLMFA_WEBHOOK_TIMEOUT_S="0.2")
    await DeliveryQueue(redis).ensure_groups()
    await redis.xadd(WEBHOOKS, {"channel": "email", "target": "sec@example.com",
                                "webhook_id": "msg_x_email1", "created_at": str(time.time()),
                                "payload": "{}"})
    async with Worker(s, redis) as w:
        await eventually(lambda: _dead(redis), timeout_s=10, what="the dead letter")
    letter = (await w.queue.dead_letters())[0]
    assert letter["error"] == "no process sent its email"
    assert w.count("email", "failed") == 0


async def _dead(redis: Redis) -> bool:
    return bool(await redis.xlen(WEBHOOK_DEAD))


def _guard(redis: Redis) -> Guard:
    return Guard(redis, Limits(user_cooldown_s=0, number_cooldown_s=0, user_per_hour=0,
                               number_per_hour=0, global_per_hour=0, lock_ttl_s=60))


async def _fraud_report(redis: Redis) -> None:
    """alice presses 0# (no block made)."""
    await _guard(redis).apply(*fraud_report_args(
        rid=str(uuid.uuid4()), user="alice", number="+12015550100", context="{}", block_s=0))


class TestSecurityEvents:
    async def test_a_fraud_report_sends_the_security_webhook_and_the_alert_email(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver,
            mail: MailCatcher) -> None:
        s = _settings(redis_server, CALLMFA_SECURITY_WEBHOOK_URL=receiver.url,
                      CALLMFA_ALERT_EMAIL="sec@example.com,soc@example.com",
                      CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port),
                      CALLMFA_SMTP_FROM="callmfa@example.com")
        guard = _guard(redis)
        rid = str(uuid.uuid4())
        async with Worker(s, redis) as w:
            await guard.record("unblocked", "nobody", actor="cli")  # not a security webhook
            await guard.apply(*fraud_report_args(rid=rid, user="alice", number="+12015550100",
                                                 context="{}", block_s=3600))
            await eventually(lambda: len(receiver.received) == 1 and len(mail.messages) == 2,
                             what="the webhook and the e-mails")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
        body = receiver.received[0].body
        assert body["type"] == "security.fraud_reported"
        assert body["data"]["user"] == "alice"
        assert body["data"]["id"] == rid
        msg = mail.messages[0]
        assert "fraud" in msg["Subject"]
        assert "alice" in msg["Subject"]
        assert sorted(mail.box.envelopes) == [("callmfa@example.com", ["sec@example.com"]),
                                              ("callmfa@example.com", ["soc@example.com"])]
        text = msg.get_content()
        assert rid in text
        assert "+120•••0100" in text
        assert "callmfa unblock alice" in text
        assert w.count("email", "delivered") == 2

    async def test_a_greylisted_mailbox_is_tried_again_alone(
            self, redis: Redis, redis_server: RedisServer, mail: MailCatcher) -> None:
        """A 450 to one of two recipients: the other has its alert at once, and only the
        refused one is tried again (it used to be dropped, the alert counted delivered)."""
        mail.box.refuse_first["soc@example.com"] = 1
        s = _settings(redis_server, CALLMFA_ALERT_EMAIL="sec@example.com,soc@example.com",
                      CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port))
        async with Worker(s, redis) as w:
            await _fraud_report(redis)
            await eventually(lambda: len(mail.messages) == 2, what="both e-mails")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
        assert [rcpt for _, rcpt in mail.box.envelopes] == [["sec@example.com"],
                                                           ["soc@example.com"]]
        assert (w.count("email", "failed"), w.count("email", "delivered")) == (1, 2)

    async def test_a_relay_slow_to_answer_quit_gets_the_alert_once(
            self, redis: Redis, redis_server: RedisServer, mail: MailCatcher) -> None:
        """The mail is the relay's once DATA is answered: a QUIT answered after the timeout
        neither fails the delivery nor sends it again (it was sent on every retry)."""
        mail.box.quit_delay_s = 5.0
        s = _settings(redis_server, CALLMFA_ALERT_EMAIL="sec@example.com",
                      CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port),
                      CALLMFA_WEBHOOK_TIMEOUT_S="1")
        async with Worker(s, redis) as w:
            await _fraud_report(redis)
            await eventually(lambda: w.count("email", "delivered") == 1, what="delivered")
            await asyncio.sleep(1.5)  # past the timeout and a retry's backoff
        assert len(mail.messages) == 1
        assert w.count("email", "failed") == 0

    async def test_bypass_used_and_pin_lockout_are_sent_and_e_mailed_when_asked(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver,
            mail: MailCatcher) -> None:
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url,
                      CALLMFA_ALERT_EMAIL="sec@example.com", CALLMFA_SMTP_HOST="127.0.0.1",
                      CALLMFA_SMTP_PORT=str(mail.port),
                      CALLMFA_ALERT_EVENTS="fraud_reported,pin_locked_out")
        guard = _guard(redis)
        async with Worker(s, redis) as w:
            await guard.grant_bypass("bob", 60, actor="cli")
            await guard.admit(str(uuid.uuid4()), "bob", "+12015550100")  # bypass_used
            await guard.record("pin_locked_out", "carol", actor="ivr", number="+12015550101")
            await eventually(lambda: len(receiver.received) == 2 and len(mail.messages) == 1,
                             what="two webhooks and one e-mail")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
        assert sorted(r.body["type"] for r in receiver.received) == [
            "security.bypass_used", "security.pin_locked_out"]
        assert "locked out" in mail.messages[0]["Subject"]

    async def test_an_smtp_server_that_is_down_is_retried(
            self, redis: Redis, redis_server: RedisServer, mail: MailCatcher) -> None:
        mail.stop()
        s = _settings(redis_server, CALLMFA_ALERT_EMAIL="sec@example.com",
                      CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port))
        async with Worker(s, redis) as w:
            await _fraud_report(redis)
            await eventually(lambda: w.count("email", "failed") >= 1, what="a failed attempt")
        assert await redis.zcard("callmfa:webhooks:retry") == 1

    async def test_a_stalled_relay_holds_up_no_webhook(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        """A relay that takes the connection and never greets: e-mails get a quarter of
        the slots, the others wait in the schedule, and an outcome's webhook goes at once
        (it waited behind every e-mail's timeout)."""
        held: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        stalled = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = stalled.sockets[0].getsockname()[1]
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url,
                      CALLMFA_ALERT_EMAIL="sec@example.com", CALLMFA_SMTP_HOST="127.0.0.1",
                      CALLMFA_SMTP_PORT=str(port), CALLMFA_WEBHOOK_CONCURRENCY="4",
                      CALLMFA_WEBHOOK_TIMEOUT_S="3")
        store = await _store(redis, receiver.url)
        record = _record()
        try:
            async with Worker(s, redis) as w:
                for _ in range(4):
                    await _fraud_report(redis)
                await eventually(lambda: len(receiver.of_type("security.fraud_reported")) == 4,
                                 what="the security webhooks")
                assert await store.store_outcome(record)
                await eventually(lambda: len(receiver.of_type("verification.finished")) == 1,
                                 what="the outcome's webhook")
                assert w.count("email", "failed") == 0  # no e-mail attempt has ended yet
        finally:
            for writer in held:
                writer.close()
            stalled.close()
            await stalled.wait_closed()

    async def test_every_alert_is_e_mailed_when_only_one_sender_has_the_alert_settings(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver,
            mail: MailCatcher) -> None:
        """An originator with only the webhook URL beside a sender with the alert and SMTP
        settings: each fraud report is one security webhook and one e-mail, and the
        originator tries no e-mail (it took audit entries and dropped their e-mail, 9 of
        20 here, and failed the e-mails it picked up against its default SMTP host)."""
        mailer = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url,
                           CALLMFA_ALERT_EMAIL="sec@example.com",
                           CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port),
                           CALLMFA_WEBHOOK_TIMEOUT_S="0.5")
        plain = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url,
                          CALLMFA_WEBHOOK_TIMEOUT_S="0.5")
        async with Worker(mailer, redis) as a, Worker(plain, redis) as b:
            for _ in range(20):
                await _fraud_report(redis)
            await eventually(lambda: len(mail.messages) == 20
                             and len(receiver.of_type("security.fraud_reported")) == 20,
                             timeout_s=20, what="20 e-mails and 20 webhooks")
            await eventually(lambda: _drained(a.queue), what="the queue to empty")
        assert len({r.webhook_id for r in receiver.received}) == 20
        assert sum(b.count("email", r) for r in ("delivered", "failed")) == 0
        assert a.count("email", "failed") == 0

    async def test_an_upgrade_e_mails_what_the_old_group_had_not_read(
            self, redis: Redis, redis_server: RedisServer, mail: MailCatcher) -> None:
        """Before the e-mails had a group of their own, the webhooks group queued them:
        the new group starts where that one is, so a fraud report written while serve was
        being upgraded is still e-mailed, and one the old version had read is not again."""
        await redis.xgroup_create(AUDIT, AUDIT_GROUP, id="$", mkstream=True)
        await _fraud_report(redis)  # read by the old version, its e-mail sent then
        await redis.xreadgroup(AUDIT_GROUP, "old", {AUDIT: ">"})
        await _fraud_report(redis)  # written during the upgrade
        s = _settings(redis_server, CALLMFA_ALERT_EMAIL="sec@example.com",
                      CALLMFA_SMTP_HOST="127.0.0.1", CALLMFA_SMTP_PORT=str(mail.port))
        async with Worker(s, redis) as w:
            await eventually(lambda: len(mail.messages) == 1, what="the e-mail")
            await eventually(lambda: _drained(w.queue), what="the queue to empty")
            await asyncio.sleep(0.5)
        assert len(mail.messages) == 1

    async def test_a_routed_audit_entry_is_acknowledged(
            self, redis: Redis, redis_server: RedisServer, receiver: WebhookReceiver) -> None:
        s = _settings(redis_server, CALLMFA_WEBHOOK_URL=receiver.url)
        async with Worker(s, redis):
            await _guard(redis).block("dave", 60, actor="cli", reason="left the company")
            await eventually(lambda: len(receiver.received) == 1, what="the webhook")
        info: Any = await redis.xinfo_groups(AUDIT)
        group = next(g for g in info if g["name"].decode() == AUDIT_GROUP)
        assert group["pending"] == 0
        assert receiver.received[0].body["data"]["reason"] == "left the company"
