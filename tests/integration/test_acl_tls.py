"""The shipped Redis ACL file over TLS: each side can do its job and nothing more."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError

from ivr.client import VerificationClient
from ivr.domain.codes import hash_code
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.exceptions import OutcomeSignatureError
from ivr.ops.doctor import Status, check_redis
from ivr.ops.report import collect
from ivr.security import Security
from ivr.settings import Settings
from ivr.storage.pins import PinStore
from ivr.storage.store import Store, connect, result_key
from ivr.storage.sync import SyncStore
from ivr.tasks import cancel_and_wait

from ..secured_redis import SecuredRedis, secured_redis

KEY = b"integration-signing-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """redis-server with the shipped ACL file on a TLS port."""
    with secured_redis(tmp_path_factory.mktemp("tls")) as s:
        yield s


def _redis(server: SecuredRedis, user: str) -> Redis:
    return connect(server.url(user), max_connections=5, timeout_s=5)


class _CountingProxy:
    """A TCP relay to 127.0.0.1:``port`` that counts the connections it is asked for."""

    def __init__(self, port: int) -> None:
        self._target = port
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _CountingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await cancel_and_wait(*self._relays)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        relays = [asyncio.create_task(pipe(reader, up_writer)),
                  asyncio.create_task(pipe(up_reader, writer))]
        self._relays.update(relays)
        try:
            await asyncio.gather(*relays, return_exceptions=True)
        finally:
            self._relays.difference_update(relays)
            writer.close()
            up_writer.close()


class TestAcl:
    async def test_service_side_does_its_whole_job(self, server: SecuredRedis) -> None:
        """The service user reads requests, screens, claims, stores a signed outcome."""
        redis = _redis(server, "callmfa-service")
        try:
            store = Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
            await store.ensure_group()
            await store.read_requests("c1", count=10, block_ms=10)
            security = Security.for_redis(Settings(), redis)
            rid = str(uuid.uuid4())
            assert (await security.guard.admit(rid, "alice", "+12015550100")).verdict == "admitted"
            await store.claim_call(rid, {"user": "alice"})
            await store.event(rid, "queued")
            await security.report_fraud(rid=rid, user="bob", number="+12015550100", context="{}")
            assert await store.store_outcome(
                OutcomeRecord(id=rid, user="alice", outcome=Outcome.BUSY))
            assert [b.user for b in await security.guard.blocked()] == ["bob"]
        finally:
            await redis.aclose()

    async def test_service_side_takes_over_counts_pins_and_reports(
        self, server: SecuredRedis
    ) -> None:
        """The rest of the service's job under the generated list: take-over (XPENDING,
        XCLAIM, MGET, DEL), PIN denials (HINCRBY in a script), the admin commands, the
        report, and the classic AGI script's sync client (EVAL)."""
        redis = _redis(server, "callmfa-service")
        try:
            store = Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
            await store.ensure_group()
            await redis.xadd("callmfa:requests", {"request": "{}"})
            [entry] = await store.read_requests("c1", count=1, block_ms=10)
            await store.heartbeat("c1", 1000)
            assert await store.alive({"c1", "c2"}) == {"c1"}
            await store.retire("c1")
            [pending] = await store.pending(0, 10)
            [taken] = await store.claim("c2", [pending.entry_id], 0)
            assert taken.entry_id == entry.entry_id
            await store.ack(taken.entry_id)
            pins = PinStore.for_settings(redis, Settings(pin_lockout_after=1))
            await pins.set_hash("alice", hash_code("1234"), actor="test")
            assert await pins.record_denial("alice")
            assert await pins.reset("alice")
            guard = Security.for_redis(Settings(), redis).guard
            assert await guard.block("eve", 60, actor="test", reason="manual")
            assert "eve" in [b.user for b in await guard.blocked()]
            assert await guard.unblock("eve", actor="test")
            await guard.grant_bypass("eve", 60, actor="test")
            assert [e["event"] for e in await guard.audit()][:2] == [
                "bypass_granted", "unblocked"]
            assert (await collect(redis)).audit
        finally:
            await redis.aclose()
        sync = SyncStore.connect(Settings(redis_url=server.url("callmfa-service"),
                                          signing_key=KEY.decode(), fraud_block_s=60))
        try:
            rid = str(uuid.uuid4())
            sync.event(rid, "answered")
            sync.report_fraud(rid=rid, user="mallory", number="+12015550100", context="{}")
            assert sync.store_outcome(
                OutcomeRecord(id=rid, user="mallory", outcome=Outcome.FRAUD_REPORTED))
        finally:
            sync.close()

    async def test_the_doctor_passes_with_the_shipped_service_user(
        self, server: SecuredRedis
    ) -> None:
        """`callmfa check` asks ACL DRYRUN for every command and finds them allowed."""
        settings = Settings(redis_url=server.url("callmfa-service"), connect_timeout_s=5)
        [first, *_] = [r async for r in check_redis(settings)]
        assert (first.name, first.status) == ("redis", Status.OK), first
        assert "ACL DRYRUN" in first.message

    async def test_security_user_gets_the_alerts_and_reads_the_audit(
        self, server: SecuredRedis
    ) -> None:
        """callmfa-security: SUBSCRIBE callmfa:security and read callmfa:audit; nothing
        else (no user could subscribe to callmfa:security before)."""
        security = _redis(server, "callmfa-security")
        service = _redis(server, "callmfa-service")
        pubsub = security.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe("callmfa:security")
            confirmed = await pubsub.get_message(timeout=5)  # the subscribe confirmation
            assert confirmed is None
            await Security.for_redis(Settings(), service).report_fraud(
                rid="r1", user="mallory", number="+12015550100", context="{}")
            message = None
            for _ in range(50):
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    break
            assert message is not None
            assert b'"user":"mallory"' in message["data"]
            assert await security.xrevrange("callmfa:audit", count=1)
            for command in (("PUBLISH", "callmfa:security", "forged"),
                            ("GET", "callmfa:blocked"), ("XADD", "callmfa:audit", "*", "a", "b"),
                            ("XRANGE", "callmfa:events", "-", "+")):
                with pytest.raises(NoPermissionError):
                    await security.execute_command(*command)
            other = security.pubsub()
            try:
                await other.subscribe("callmfa:results")
                with pytest.raises(NoPermissionError):
                    await other.get_message(timeout=5)  # the refusal arrives here
            finally:
                await other.aclose()  # type: ignore[no-untyped-call]
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await security.aclose()
            await service.aclose()

    async def test_signin_side_submits_and_reads_but_cannot_forge(
        self, server: SecuredRedis
    ) -> None:
        """The sign-in user adds requests and reads outcomes; writing an outcome is denied."""
        service = _redis(server, "callmfa-service")
        try:
            async with VerificationClient.from_url(
                server.url("callmfa-signin"), signing_key=KEY
            ) as client:
                rid = await client.submit(user="alice", phone="+12015550100")
                store = Store(service, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
                await store.store_outcome(
                    OutcomeRecord(id=rid, user="alice", outcome=Outcome.APPROVED,
                                  requested_at=time.time()))
                record = await client.wait(rid, 5)
                assert record is not None
                assert record.outcome is Outcome.APPROVED
            signin = _redis(server, "callmfa-signin")
            try:
                with pytest.raises(NoPermissionError):
                    await signin.set(result_key(str(uuid.uuid4())), "{}")
                with pytest.raises(NoPermissionError):
                    await signin.get("callmfa:blocked")
                with pytest.raises(NoPermissionError):
                    await signin.publish("callmfa:results", "{}")
            finally:
                await signin.aclose()
        finally:
            await service.aclose()

    async def test_service_cannot_administer_redis(self, server: SecuredRedis) -> None:
        """No FLUSHALL, CONFIG or KEYS for the service user, nor keys outside callmfa:*."""
        redis = _redis(server, "callmfa-service")
        try:
            for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"),
                            ("GET", "session:1")):
                with pytest.raises(NoPermissionError):
                    await redis.execute_command(*command)
        finally:
            await redis.aclose()

    @pytest.mark.parametrize("login", ["none", "wrong"])
    async def test_default_user_is_off_and_a_refused_login_is_not_retried(
        self, server: SecuredRedis, login: str
    ) -> None:
        """No anonymous access; a missing or wrong password is refused on the one
        connection it was tried on (redis-py's retries had opened 36 for no password)."""
        signin = server.url("callmfa-signin")
        password = server.passwords["callmfa-signin"]
        url = (signin.replace(f"callmfa-signin:{password}@", "") if login == "none"
               else signin.replace(password, "wrong"))
        async with _CountingProxy(server.port) as proxy:
            redis = connect(url.replace(f":{server.port}/", f":{proxy.port}/"),
                            max_connections=1, timeout_s=5)
            try:
                with pytest.raises(AuthenticationError):
                    await redis.ping()
            finally:
                await redis.aclose()
        assert proxy.connections == 1


class TestSignedOutcomes:
    async def test_tampered_outcome_is_refused(self, server: SecuredRedis) -> None:
        """An outcome rewritten in Redis (fraud_reported -> approved) is refused."""
        service = _redis(server, "callmfa-service")
        try:
            store = Store(service, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
            rid = str(uuid.uuid4())
            await store.store_outcome(
                OutcomeRecord(id=rid, user="alice", outcome=Outcome.FRAUD_REPORTED))
            raw = (await service.get(result_key(rid))).decode()
            await service.set(result_key(rid), raw.replace("fraud_reported", "approved"))
            async with VerificationClient.from_url(
                server.url("callmfa-signin"), signing_key=KEY
            ) as client:
                with pytest.raises(OutcomeSignatureError, match="mismatch"):
                    await client.wait(rid, 5)
        finally:
            await service.aclose()

    async def test_unsigned_outcome_is_refused(self, server: SecuredRedis) -> None:
        """A client with a key refuses an outcome written without one."""
        service = _redis(server, "callmfa-service")
        try:
            rid = str(uuid.uuid4())
            await Store(service, result_ttl_s=60, events_maxlen=100).store_outcome(
                OutcomeRecord(id=rid, user="alice", outcome=Outcome.APPROVED))
            async with VerificationClient.from_url(
                server.url("callmfa-signin"), signing_key=KEY
            ) as client:
                with pytest.raises(OutcomeSignatureError, match="unsigned"):
                    await client.wait(rid, 5)
        finally:
            await service.aclose()

    async def test_forged_publication_is_ignored_and_the_real_outcome_wins(
        self, server: SecuredRedis
    ) -> None:
        """A forged message on callmfa:results is dropped; the signed outcome is returned."""
        service = _redis(server, "callmfa-service")
        try:
            async with VerificationClient.from_url(
                server.url("callmfa-signin"), signing_key=KEY
            ) as client:
                rid = str(uuid.uuid4())
                task = asyncio.create_task(client.wait(rid, 5))
                await asyncio.sleep(0.2)  # let the waiter register before publishing
                forged = OutcomeRecord(id=rid, user="alice", outcome=Outcome.APPROVED)
                await service.publish("callmfa:results", forged.to_json())
                store = Store(service, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
                await store.store_outcome(
                    OutcomeRecord(id=rid, user="alice", outcome=Outcome.NO_ANSWER))
                record = await task
                assert record is not None
                assert record.outcome is Outcome.NO_ANSWER
        finally:
            await service.aclose()


class TestAclSettlesRequests:
    async def test_service_acks_and_deletes_a_settled_request(
        self, server: SecuredRedis
    ) -> None:
        """The shipped ACL lets the service settle a request: XACK and XDEL in MULTI."""
        signin = _redis(server, "callmfa-signin")
        service = _redis(server, "callmfa-service")
        try:
            store = Store(service, result_ttl_s=60, events_maxlen=100, signing_key=KEY)
            await store.ensure_group()
            added = (await signin.xadd("callmfa:requests", {"request": "{}"})).decode()
            entries = await store.read_requests("c-settle", count=100, block_ms=10)
            assert added in [e.entry_id for e in entries]
            for entry in entries:
                await store.ack(entry.entry_id)
            assert await service.xrange("callmfa:requests", min=added, max=added) == []
        finally:
            await signin.aclose()
            await service.aclose()
