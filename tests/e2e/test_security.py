"""Security and anti-fraud through the real chain (docs/security.md).

A second ``callmfa serve`` runs here as production should: Redis over TLS with the shipped
ACL users, signed outcomes, and the throttling defaults of the issue (5/h per user and per
number, 500/h in all; cooldowns off so that the test can place calls back to back). It
shares the sandbox's Asterisk and phone; its FastAGI listens on 4574.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.exceptions import OutcomeSignatureError
from ivr.security import number_policy
from ivr.settings import Settings
from ivr.storage.keys import AUDIT, SECURITY_CHANNEL
from ivr.storage.store import EVENTS, call_key, connect, result_key

from ..conftest import E2E_SETTINGS, SECOND_SERVICE, Sandbox, wait_until
from ..secured_redis import SecuredRedis, secured_redis
from .conftest import PhoneFactory

CALLMFA = Path(sys.executable).parent / "callmfa"
POLICY = number_policy(Settings())


@dataclass(frozen=True)
class Secured:
    redis: SecuredRedis
    signing_key: str
    env: dict[str, str]
    log: Path

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``callmfa`` admin command against this service's Redis."""
        return subprocess.run([str(CALLMFA), *args], env=self.env, capture_output=True,
                              text=True, timeout=30)


@pytest.fixture(scope="module")
def secured(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """``callmfa serve`` on TLS Redis with ACL users, signing, and the throttles on."""
    directory = tmp_path_factory.mktemp("secured")
    with secured_redis(directory / "redis") as redis:
        key = secrets.token_hex(32)
        key_file = directory / "signing-key"
        key_file.write_text(key)
        env = {**os.environ, **E2E_SETTINGS, **sandbox.env, **SECOND_SERVICE,
               "CALLMFA_REDIS_URL": redis.url("callmfa-service"),
               "CALLMFA_AGI_PORT": "4574", "CALLMFA_AGI_URL": "agi://127.0.0.1:4574/verify",
               "CALLMFA_SIGNING_KEY_FILE": str(key_file), "CALLMFA_CONSUMER": "secured",
               "CALLMFA_THROTTLE_USER_PER_HOUR": "5", "CALLMFA_THROTTLE_NUMBER_PER_HOUR": "5",
               "CALLMFA_THROTTLE_GLOBAL_PER_HOUR": "500", "CALLMFA_FRAUD_BLOCK_S": "7776000"}
        # Not an Entra EAM: its API is on an ephemeral port, which `check`'s eam line can't find.
        env = {k: v for k, v in env.items() if not k.startswith("CALLMFA_ENTRA_")}
        log = directory / "callmfa.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(CALLMFA), "serve"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"callmfa serve exited:\n{log.read_text()[-3000:]}")
            return b'"service_ready"' in log.read_bytes()

        try:
            wait_until(ready, 30, "secured callmfa serve")
            yield Secured(redis, key, env, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def signin(secured: Secured) -> AsyncIterator[VerificationClient]:
    """The sign-in service: the callmfa-signin ACL user, verifying signatures."""
    async with VerificationClient.from_url(
        secured.redis.url("callmfa-signin"), signing_key=secured.signing_key
    ) as c:
        yield c


@pytest.fixture
async def service_redis(secured: Secured) -> AsyncIterator[Redis]:
    """The service's own view of Redis (to read the audit stream, or to tamper)."""
    redis = connect(secured.redis.url("callmfa-service"), max_connections=2, timeout_s=5)
    yield redis
    await redis.aclose()


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def _number() -> str:
    """A fresh valid US number in a fictional 555-01XX range (the per-number caps)."""
    while True:
        number = f"+1{200 + secrets.randbelow(800)}55501{secrets.randbelow(100):02d}"
        if POLICY.refusal(number) is None:
            return number


async def _verify(client: VerificationClient, user: str, phone: str) -> OutcomeRecord:
    record = await client.verify(user=user, phone=phone, timeout_s=40)
    assert record is not None, "no outcome within 40 s"
    return record


async def _audit(redis: Redis, user: str) -> list[dict[str, str]]:
    entries = await redis.xrange(AUDIT)
    decoded = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
    return [e for e in decoded if e["user"] == user]


class TestThrottling:
    async def test_second_concurrent_request_is_throttled(
        self, signin: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Two requests for one user at once: one call; the other throttled, call_in_progress."""
        p = phone(keys="#", key_delay_ms=1500)
        user, number = _user(), _number()
        records = await asyncio.gather(_verify(signin, user, number),
                                       _verify(signin, user, number))
        by_outcome = {r.outcome: r for r in records}
        assert set(by_outcome) == {Outcome.APPROVED, Outcome.THROTTLED}
        throttled = by_outcome[Outcome.THROTTLED]
        assert throttled.detail == "call_in_progress"
        assert throttled.retry_after is not None
        assert throttled.call_started_at is None
        assert by_outcome[Outcome.APPROVED].retry_after is None
        assert p.wait(20) == 0, p.errors()
        assert p.received("INVITE") == 1

    async def test_sixth_call_in_an_hour_is_throttled(
        self, signin: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Five calls to a user in an hour are placed; the sixth is throttled, retry_after."""
        p = phone(calls=5, reject_with=486)
        user, number = _user(), _number()
        for _ in range(5):
            assert (await _verify(signin, user, number)).outcome is Outcome.BUSY
        sixth = await _verify(signin, user, number)
        assert (sixth.outcome, sixth.detail) == (Outcome.THROTTLED, "user_hourly_cap")
        assert sixth.retry_after is not None
        assert 3500 < sixth.retry_after <= 3600
        assert p.wait(20) == 0, p.errors()
        assert p.received("INVITE") == 5


class TestFraudAlert:
    async def test_zero_pound_blocks_until_unblocked(
        self, secured: Secured, signin: VerificationClient, service_redis: Redis,
        phone: PhoneFactory,
    ) -> None:
        """0# blocks the user (audited); their next request is blocked with no INVITE;
        `callmfa unblock` lets calls through again."""
        user, number = _user(), _number()
        p = phone(keys="0#")
        record = await signin.verify(user=user, phone=number, timeout_s=40,
                                     context={"app": "vpn", "ip": "198.51.100.7"})
        assert record is not None
        assert record.outcome is Outcome.FRAUD_REPORTED
        assert p.wait(20) == 0, p.errors()
        [entry] = await _audit(service_redis, user)
        assert (entry["event"], entry["reason"], entry["actor"]) == (
            "blocked", "fraud_reported", "ivr")
        assert (entry["id"], entry["number"]) == (record.id, number)
        assert json.loads(entry["context"]) == {"app": "vpn", "ip": "198.51.100.7"}
        listed = secured.admin("blocked")
        assert listed.returncode == 0
        assert user in listed.stdout

        p2 = phone(keys="#")
        blocked = await _verify(signin, user, number)
        assert blocked.outcome is Outcome.BLOCKED
        assert p2.received("INVITE") == 0

        unblock = secured.admin("unblock", user)
        assert unblock.returncode == 0, unblock.stderr
        assert user not in secured.admin("blocked").stdout
        assert (await _verify(signin, user, number)).outcome is Outcome.APPROVED
        assert p2.wait(20) == 0, p2.errors()
        assert p2.received("INVITE") == 1
        audit = await _audit(service_redis, user)
        assert [e["event"] for e in audit] == ["blocked", "request_refused", "unblocked"]
        assert (audit[1]["outcome"], audit[1]["id"]) == ("blocked", blocked.id)

    async def test_manual_block(
        self, secured: Secured, signin: VerificationClient, phone: PhoneFactory
    ) -> None:
        """`callmfa block USER --for 1h`: their request is blocked, no call."""
        user = _user()
        done = secured.admin("block", user, "--for", "1h", "--reason", "offboarded")
        assert done.returncode == 0, done.stderr
        p = phone(keys="#")
        assert (await _verify(signin, user, _number())).outcome is Outcome.BLOCKED
        assert p.received("INVITE") == 0


    async def test_a_block_is_only_lengthened_and_the_report_shows_it(
        self, secured: Secured, signin: VerificationClient, service_redis: Redis,
        phone: PhoneFactory,
    ) -> None:
        """`callmfa block` cut a 90-day block short; now only --replace does, and
        `callmfa report` (under the service's ACL user) lists every audited change."""
        user = _user()
        assert secured.admin("block", user, "--for", "90d", "--reason", "fraud").returncode == 0
        shorter = secured.admin("block", user, "--for", "1h", "--reason", "oops")
        assert shorter.returncode == 1, shorter.stdout + shorter.stderr
        assert "already blocked until" in shorter.stdout
        assert "--replace" in shorter.stdout
        p = phone(keys="#")
        assert (await _verify(signin, user, _number())).outcome is Outcome.BLOCKED
        assert p.received("INVITE") == 0
        until = await service_redis.zscore("callmfa:blocked", user)
        assert until is not None
        assert until / 1000 > time.time() + 89 * 86400
        replaced = secured.admin("block", user, "--for", "1h", "--reason", "cleared",
                                 "--replace")
        assert replaced.returncode == 0, replaced.stderr
        until = await service_redis.zscore("callmfa:blocked", user)
        assert until is not None
        assert until / 1000 < time.time() + 3700
        audit = await _audit(service_redis, user)
        # The refused request between the two blocks is audited too (request_refused).
        assert [e["event"] for e in audit] == ["blocked", "request_refused", "blocked"]
        assert [audit[0]["reason"], audit[1]["outcome"], audit[2]["reason"]] == [
            "fraud", "blocked", "cleared"]
        assert audit[2]["replace"] == "yes"
        report = secured.admin("report", "--csv")
        assert report.returncode == 0, report.stderr
        assert any(row.endswith(f",{user},audit:blocked,2") for row in report.stdout.splitlines())


class TestCheckCall:
    def test_check_call_verifies_the_signature(self, secured: Secured, phone: PhoneFactory
                                               ) -> None:
        """`callmfa check --call` through the secured service: every check passes under the
        shipped ACL user (ACL DRYRUN), and the call's outcome is signature-checked; with
        the wrong key the same approved call fails the check (it ignored the key)."""
        number = _number()
        p = phone(keys="#")
        ok = secured.admin("check", "--call", number)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"{number}: approved, signature verified - the whole chain works" in ok.stdout
        assert "(ACL DRYRUN)" in ok.stdout
        assert p.wait(20) == 0, p.errors()
        p = phone(keys="#")
        env = {k: v for k, v in secured.env.items() if k != "CALLMFA_SIGNING_KEY_FILE"}
        forged = subprocess.run(
            [str(CALLMFA), "check", "--call", _number(), "--call-timeout", "15"],
            env={**env, "CALLMFA_SIGNING_KEY": "not-the-service-key"}, capture_output=True,
            text=True, timeout=60)
        assert forged.returncode == 1, forged.stdout + forged.stderr
        assert "FAIL  call" in forged.stdout
        assert "signature does not verify" in forged.stdout
        assert p.wait(20) == 0, p.errors()


class TestBypass:
    async def test_bypass_once_then_calls_again(
        self, secured: Secured, signin: VerificationClient, service_redis: Redis,
        phone: PhoneFactory,
    ) -> None:
        """`callmfa bypass USER --for 10m`: the next request is bypassed with no call,
        audited; the one after is a real call."""
        user, number = _user(), _number()
        alerts = service_redis.pubsub(ignore_subscribe_messages=True)
        await alerts.subscribe(SECURITY_CHANNEL)
        try:
            done = secured.admin("bypass", user, "--for", "10m", "--reason", "lost phone")
            assert done.returncode == 0, done.stderr
            p = phone(keys="#")
            bypassed = await _verify(signin, user, number)
            assert bypassed.outcome is Outcome.BYPASSED
            assert p.received("INVITE") == 0
            assert (await _verify(signin, user, number)).outcome is Outcome.APPROVED
            assert p.wait(20) == 0, p.errors()
            published = []
            for _ in range(100):  # what the security team's subscriber saw: up to 10 s
                message = await alerts.get_message(timeout=0.1)
                if message is not None and json.loads(message["data"])["user"] == user:
                    published.append(json.loads(message["data"]))
                if len(published) == 2:
                    break
        finally:
            await alerts.aclose()  # type: ignore[no-untyped-call]
        audit = await _audit(service_redis, user)
        assert [e["event"] for e in audit] == ["bypass_granted", "bypass_used"]
        assert audit[0]["actor"].startswith("cli:")
        assert audit[0]["reason"] == "lost phone"
        assert audit[1]["id"] == bypassed.id
        assert published == audit  # every audit entry is published, bypass_used included


class TestTollFraud:
    @pytest.mark.parametrize("number", ["+8816123456789", "+88212345678", "+19005550100",
                                        "+18765550100", "+447700900123"])
    async def test_premium_satellite_and_foreign_numbers_are_never_dialled(
        self, signin: VerificationClient, service_redis: Redis, phone: PhoneFactory,
        number: str,
    ) -> None:
        """+881/+882, premium, Caribbean NANP and non-allowed countries: rejected, no call."""
        p = phone(keys="#")
        record = await _verify(signin, _user(), number)
        assert (record.outcome, record.detail) == (Outcome.REJECTED, "number_not_allowed")
        assert not await service_redis.exists(call_key(record.id))
        events = await service_redis.xrange(EVENTS)
        assert not any(f[b"id"].decode() == record.id and f[b"event"] == b"dialing"
                       for _, f in events)
        assert p.received("INVITE") == 0


class TestSignedOutcomes:
    async def test_real_outcome_verifies_and_a_tampered_one_is_refused(
        self, secured: Secured, signin: VerificationClient, service_redis: Redis,
        phone: PhoneFactory,
    ) -> None:
        """The service's signature verifies; fraud_reported rewritten to approved does not."""
        p = phone(keys="0#")
        user = _user()
        record = await _verify(signin, user, _number())
        assert record.outcome is Outcome.FRAUD_REPORTED
        assert p.wait(20) == 0, p.errors()
        raw = (await service_redis.get(result_key(record.id))).decode()
        assert json.loads(raw)["sig"]
        await service_redis.set(result_key(record.id),
                                raw.replace('"fraud_reported"', '"approved"'))
        with pytest.raises(OutcomeSignatureError):
            await signin.wait(record.id, 5)
        secured.admin("unblock", user)


# --- hardening of the sandbox's own service and Asterisk ---

async def _idle_connection(host: str, port: int, source: str | None = None) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None)


class TestFastAgiHardening:
    async def test_slowloris_does_not_stop_a_real_call(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """100 connections that send half a header and go idle; a real call still approves."""
        conns = await asyncio.gather(*(_idle_connection("127.0.0.1", 4573) for _ in range(100)))
        try:
            for _, writer in conns:
                writer.write(b"agi_network: yes\n")
            await asyncio.gather(*(w.drain() for _, w in conns))
            p = phone(keys="#")
            record = await client.verify(user="alice", phone="+12015550100", timeout_s=40)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            assert p.wait(20) == 0, p.errors()
            # The header deadline ends every idle connection.
            closed = await asyncio.wait_for(
                asyncio.gather(*(r.read() for r, _ in conns)), 30)
            assert closed == [b""] * 100
        finally:
            for _, writer in conns:
                writer.close()

    async def test_peer_outside_the_allow_list_is_refused(self, sandbox: Sandbox) -> None:
        """A FastAGI connection from 127.0.0.2 (not in CALLMFA_AGI_ALLOWED_PEERS) is closed
        at once, before any header is read."""
        reader, writer = await _idle_connection("127.0.0.1", 4573, source="127.0.0.2")
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        log = (sandbox.directory / "logs" / "callmfa.log").read_text()
        assert "fastagi_peer_refused" in log
        assert "127.0.0.2" in log


def _ami_secret(sandbox: Sandbox) -> str:
    return Path(sandbox.env["CALLMFA_AMI_SECRET_FILE"]).read_text().strip()


async def _ami_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        action: str) -> str:
    writer.write(action.replace("\n", "\r\n").encode() + b"\r\n")
    await writer.drain()
    return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()


class TestAmiAccount:
    async def test_callmfa_account_can_originate_only(self, sandbox: Sandbox) -> None:
        """The shipped AMI account logs in, but Command and Originate of a System app are
        refused: read = call, write = originate (no system), nothing else."""
        secret = _ami_secret(sandbox)
        reader, writer = await asyncio.open_connection("127.0.0.1", 5038)
        try:
            await asyncio.wait_for(reader.readline(), 10)  # the banner
            login = await _ami_exchange(
                reader, writer,
                f"Action: Login\nUsername: callmfa\nSecret: {secret}\nEvents: off\n")
            assert "Response: Success" in login
            command = await _ami_exchange(
                reader, writer, "Action: Command\nCommand: core show version\n")
            assert "Response: Error" in command
            assert "Permission denied" in command
            system = await _ami_exchange(
                reader, writer,
                "Action: Originate\nChannel: Local/s@callmfa-verify\nApplication: System\n"
                "Data: touch /tmp/callmfa-pwned\n")
            assert "Response: Error" in system
            assert "Forbidden" in system
        finally:
            writer.close()
