"""The originator against real Redis, with a hand-written fake AMI.

Requests go in the way the sign-in service adds them (XADD callmfa:requests); outcomes
come out through a ResultListener. The fake AMI records every Originate and plays the
telephone network: answered (and the IVR stores an outcome), busy, no answer, errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import ivr.domain.request
import ivr.originator
from ivr.client import VerificationClient
from ivr.domain.calltoken import token_hash
from ivr.domain.codes import hash_code
from ivr.domain.directory import DirectoryEntry, UserDirectory
from ivr.domain.outcome import Outcome, OutcomeRecord, iso
from ivr.domain.request import MAX_EXPIRES_IN_S, MAX_REQUEST_BYTES
from ivr.exceptions import AmiConnectError, AmiError, DirectoryError
from ivr.metrics import Metrics
from ivr.originator import Originator
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.directory import LocalDirectory
from ivr.storage.guard import Guard
from ivr.storage.results import ResultListener
from ivr.storage.store import (
    DEADLETTER,
    DEADLETTER_PAYLOAD_BYTES,
    GROUP,
    REQUESTS,
    Store,
    call_key,
    result_key,
)
from ivr.tasks import cancel_and_wait
from ivr.transport.ami import ChannelWatch, OriginateResult
from ivr.transport.ami_pool import AmiPool

from .conftest import eventually
from .fake_asterisk import events_of

WAIT_S = 5.0


@dataclass(frozen=True)
class OriginateCall:
    """One Originate the fake received."""

    fields: dict[str, str]
    variables: dict[str, str]
    timeout_s: float


Network = Callable[["FakeAmi", OriginateCall, ChannelWatch], Awaitable[OriginateResult]]


@dataclass
class FakeAmi:
    """What the originator uses of AmiClient: watch, unwatch and originate.

    ``network`` decides what happens to each call; it may raise AmiError.
    """

    store: Store
    network: Network
    calls: list[OriginateCall] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    watches: dict[str, ChannelWatch] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # after a lost connection

    endpoint = "fake-asterisk:5038"

    # The AmiPool side: one fake Asterisk with unlimited room.
    async def acquire(self, timeout_s: float) -> FakeAmi:
        return self

    async def release(self, client: FakeAmi) -> None:
        pass

    def watch(self, uniqueid: str) -> ChannelWatch:
        self.log.append(("watch", uniqueid))
        self.watches[uniqueid] = ChannelWatch()
        return self.watches[uniqueid]

    def unwatch(self, uniqueid: str) -> None:
        self.log.append(("unwatch", uniqueid))
        self.watches.pop(uniqueid, None)

    async def originate(
        self, fields: Mapping[str, str], variables: Mapping[str, str], *, timeout_s: float
    ) -> OriginateResult:
        call = OriginateCall(dict(fields), dict(variables), timeout_s)
        self.calls.append(call)
        self.log.append(("originate", fields["ChannelId"]))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self.network(self, call, self.watches[fields["ChannelId"]])
        finally:
            self.active -= 1

    def later(self, coro: Awaitable[None]) -> None:
        """Run what happens after the answer (the IVR, the hang-up) in the background."""
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)


# --- what the network does with a call ---

def answered_then(outcome: Outcome | None, cause: int = 16, *,
                  ring_after_s: float | None = None) -> Network:
    """The phone answers; the IVR stores ``outcome`` (None: nothing), then the channel
    hangs up with ``cause``. With ``ring_after_s``, its ring (the Newstate) comes that long
    after the answer (OriginateResponse), as Asterisk's message bus may deliver it."""
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        rid = call.fields["ChannelId"]
        if ring_after_s is not None:
            asyncio.get_running_loop().call_later(ring_after_s, watch.ring)

        async def ivr_then_hangup() -> None:
            # The IVR starts once the originator has seen the answer (as on a real line,
            # where the greeting alone outlasts that).
            async def answer_noted() -> bool:
                return bool(await ami.store.redis.hexists(call_key(rid), "answered_at"))
            await eventually(answer_noted, what="answered_at in the call marker")
            if outcome is not None:
                await ami.store.store_outcome(OutcomeRecord(
                    id=rid, user="alice", outcome=outcome, input_at=time.time(),
                    finished_at=time.time(),
                ))
            watch.hangup.set_result(cause)

        ami.later(ivr_then_hangup())
        return OriginateResult(True, 4, {"Response": "Success", "Reason": "4"})
    return network


async def approved_after(store: Store, rid: str, delay_s: float) -> None:
    """The IVR of a call that goes on: the user's '#', ``delay_s`` from now."""
    await asyncio.sleep(delay_s)
    await store.store_outcome(OutcomeRecord(id=rid, user="alice", outcome=Outcome.APPROVED,
                                            input_at=time.time(), finished_at=time.time()))


def failed(reason: int, cause: int | None) -> Network:
    """The call fails with OriginateResponse ``reason``; a Hangup event with ``cause``
    comes first (None: no Hangup event at all)."""
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        if cause is not None:
            watch.hangup.set_result(cause)
        return OriginateResult(False, reason, {"Response": "Failure", "Reason": str(reason)})
    return network


def busy_when(ring: asyncio.Event) -> Network:
    """The phone rings until ``ring`` is set, then the call fails busy (cause 17)."""
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        await ring.wait()
        watch.hangup.set_result(17)
        return OriginateResult(False, 0, {})
    return network


def raising(error: AmiError) -> Network:
    async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch) -> OriginateResult:
        raise error
    return network


@dataclass
class Harness:
    """A running originator and what the tests need around it."""

    originator: Originator
    ami: FakeAmi
    results: ResultListener
    store: Store
    redis: Redis
    task: asyncio.Task[None]

    async def submit(
        self, *, rid: str | None = None, phone: str = "+12015550100",
        expires_in_s: float | None = 120, **extra: Any,
    ) -> tuple[str, str]:
        """XADD a request shaped like VerificationClient.submit's; (id, entry id)."""
        rid = rid or str(uuid.uuid4())
        request: dict[str, Any] = {
            "id": rid, "user": "alice", "phone": phone, "mode": "standard", "lang": "en",
            "context": {"ip": "192.0.2.1"}, **extra,
        }
        if expires_in_s is not None:
            request["expires_at"] = iso(time.time() + expires_in_s)
        return rid, await self.add_raw(json.dumps(request))

    async def add_raw(self, payload: str | bytes | None) -> str:
        fields: dict[Any, Any] = {"request": payload} if payload is not None else {"x": "y"}
        entry: bytes = await self.redis.xadd(REQUESTS, fields)
        return entry.decode()

    async def outcome(self, rid: str) -> OutcomeRecord:
        record = await self.results.wait(rid, WAIT_S)
        assert record is not None, f"no outcome for {rid} within {WAIT_S}s"
        return record

    async def pending(self) -> int:
        summary: Any = await self.redis.xpending(REQUESTS, GROUP)
        return int(summary["pending"])

    async def all_acked(self) -> None:
        """Wait until the group has no pending entry (acks follow the outcome)."""
        async def none_pending() -> bool:
            return await self.pending() == 0
        await eventually(none_pending, timeout_s=WAIT_S, what="every entry acked")

    async def events_of(self, rid: str) -> list[dict[str, str]]:
        return await events_of(self.redis, rid)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dial_template": "PJSIP/{number}@trunk",
        "caller_id": '"Sign-in" <+15550000>',
        "context": "callmfa-verify",
        "agi_url": "agi://127.0.0.1:4573/verify",
        "ring_timeout_s": 3.0,
        "max_call_s": 60,
        "max_in_flight": 10,
        "outcome_grace_s": 0.2,
        "request_ttl_s": 120,
        "result_ttl_s": 60,
        "consumer": "test-originator",
        # Any valid number, no cooldowns or caps: the security policy is tested in
        # test_guard.py and tests/unit/test_numbers.py.
        "allowed_prefixes": "+",
        "allowed_regions": "*",
        "denied_number_types": "",
        "throttle_user_cooldown_s": 0,
        "throttle_number_cooldown_s": 0,
        "throttle_user_per_hour": 0,
        "throttle_number_per_hour": 0,
        "throttle_global_per_hour": 0,
    }
    values.update(overrides)
    return Settings(**values)


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(redis: Redis) -> AsyncIterator[Start]:
    """Start an originator (real Store, ResultListener and Redis) on a FakeAmi."""
    harnesses: list[Harness] = []

    async def run(network: Network, *, observer: Metrics | None = None,
                  ivr_store: Store | None = None, directory: UserDirectory | None = None,
                  **settings: Any) -> Harness:
        store = Store(redis, result_ttl_s=60, events_maxlen=1000, observer=observer)
        results = ResultListener(redis)
        await results.start()
        ami = FakeAmi(ivr_store or store, network)
        originator = Originator(make_settings(**settings), store, cast(AmiPool, ami), results,
                                directory=directory)
        task = asyncio.create_task(originator.run())
        harness = Harness(originator, ami, results, store, redis, task)
        harnesses.append(harness)
        # run() creates the group first: wait for it, so no test races the XADD.
        async def group_exists() -> bool:
            return bool(await redis.exists(REQUESTS)) and bool(
                await redis.xinfo_groups(REQUESTS)
            )
        await eventually(group_exists, what="consumer group")
        return harness

    yield run
    for h in harnesses:
        await h.originator.stop(grace_s=1.0)
        await cancel_and_wait(h.task, *h.ami.background)
        await h.results.close()


class TestRefusedBeforeDialling:
    async def test_expired_request(self, start: Start) -> None:
        """expires_at in the past: outcome expired, no call placed, entry acked."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit(expires_in_s=-1)

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.EXPIRED, None)  # as docs/contract.md
        assert record.user == "alice"
        assert h.ami.calls == []
        assert h.ami.log == []
        await h.all_acked()

    async def test_a_block_on_alice_also_refuses_alice_in_another_case(
        self, start: Start
    ) -> None:
        """The attack of issue 12: alice is blocked, so the attacker asks for Alice, ALICE,
        a fullwidth Alice (U+FF21...). Every request ends blocked with the normalised user, no call
        is placed, and a name with U+2028 is rejected."""
        h = await start(answered_then(Outcome.APPROVED))
        guard = Guard(h.redis, limits(make_settings()))
        await guard.block("alice", 3600, actor="test", reason="manual")

        for user in ("Alice", "ALICE", "\uff21\uff4c\uff49\uff43\uff45"):
            rid, _ = await h.submit(user=user)
            record = await h.outcome(rid)
            assert (record.outcome, record.user) == (Outcome.BLOCKED, "alice"), user
        rid, _ = await h.submit(user="alice\u2028")
        assert (await h.outcome(rid)).detail == "invalid_user"
        assert h.ami.calls == []
        await h.all_acked()

    @pytest.mark.parametrize("phone", [
        "+1555\r\n0100", "+1555abc0100", "+" + "1" * 40, "", "12015550100", "+12015550100\n",
        "+05550100", "+12015550100x", "+12015550100x12345678901", "+1 555 0100",
    ])
    async def test_bad_phone_is_rejected(self, start: Start, phone: str) -> None:
        """A malformed phone: outcome rejected/invalid_phone, nothing reaches AMI."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit(phone=phone)

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.REJECTED, "invalid_phone")
        assert h.ami.calls == []
        assert not await h.redis.exists(call_key(rid))
        await h.all_acked()

    @pytest.mark.parametrize(("phone", "reason"), [
        ("+16585551234", "region_not_allowed"), ("+1011882123456", "invalid_number"),
    ])
    async def test_number_not_allowed_carries_its_reason(
        self, start: Start, phone: str, reason: str
    ) -> None:
        """Under the default policy: rejected/number_not_allowed with the reason in the
        outcome the sign-in service reads; nothing reaches AMI."""
        h = await start(answered_then(Outcome.APPROVED), allowed_regions="US,CA",
                        denied_number_types=Settings().denied_number_types)
        rid, _ = await h.submit(phone=phone)

        record = await h.outcome(rid)

        assert (record.outcome, record.detail, record.reason) == (
            Outcome.REJECTED, "number_not_allowed", reason)
        raw = await h.redis.get(result_key(rid))
        assert json.loads(raw)["reason"] == reason
        assert h.ami.calls == []
        assert not await h.redis.exists(call_key(rid))
        await h.all_acked()

    async def test_an_expires_at_the_api_took_is_not_rejected_for_clock_skew(
        self, start: Start
    ) -> None:
        """The API checks the hour's bound on its own clock, the originator on the stream
        entry's (Redis's): a front a few seconds ahead of Redis got 202 for a request at
        the bound, which then ended rejected. A minute of skew is allowed here."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit(expires_in_s=MAX_EXPIRES_IN_S + 30)
        assert (await h.outcome(rid)).outcome is Outcome.APPROVED
        rid, _ = await h.submit(expires_in_s=MAX_EXPIRES_IN_S + 120)
        assert (await h.outcome(rid)).detail == "invalid_expires_at"

    @pytest.mark.parametrize(("change", "detail"), [
        ({"mode": "sms"}, "unsupported_mode"),
        ({"lang": "english!"}, "invalid_lang"),
        ({"expires_at": "2030-01-01T00:00:00"}, "invalid_expires_at"),
        ({"user": ""}, "invalid_user"),
        ({"user": "al\nice"}, "invalid_user"),
        ({"context": [1]}, "invalid_context"),
        ({"extra": 1}, "unknown_field"),
        ({"mode": "match"}, "invalid_match_hash"),
        ({"mode": "match", "match_hash": "42"}, "invalid_match_hash"),
        ({"match_hash": "scrypt$14$8$1$x$y"}, "invalid_match_hash"),
        # dklen 64 (86 characters) was accepted, never matched, and the call ended denied.
        ({"mode": "match", "match_hash": "scrypt$10$8$1$" + "A" * 22 + "$" + "B" * 86},
         "invalid_match_hash"),
    ])
    async def test_other_invalid_fields_are_rejected(
        self, start: Start, change: dict[str, Any], detail: str
    ) -> None:
        """Each invalid field gets its rejected detail, and no call."""
        h = await start(answered_then(Outcome.APPROVED))
        rid = str(uuid.uuid4())
        request = {"id": rid, "user": "alice", "phone": "+12015550100", **change}
        await h.add_raw(json.dumps(request))

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.REJECTED, detail)
        assert h.ami.calls == []

    @pytest.mark.parametrize("payload", [
        b"not json", b"\xff\xfe", b"[1, 2]", b'{"user": "alice"}', b"", None,
    ])
    async def test_request_without_id_goes_to_deadletter(
        self, start: Start, payload: bytes | None
    ) -> None:
        """A request with no readable id cannot get an outcome: it is copied to
        callmfa:deadletter with the reason, and acked."""
        h = await start(answered_then(Outcome.APPROVED))
        entry_id = await h.add_raw(payload)

        async def dead_lettered() -> bool:
            return await h.redis.xlen(DEADLETTER) == 1
        await eventually(dead_lettered, what="deadletter entry")
        await h.all_acked()

        [(_, fields)] = await h.redis.xrange(DEADLETTER)
        assert fields[b"entry_id"].decode() == entry_id
        assert fields[b"request"] == (payload or b"")
        assert fields[b"request_bytes"] == str(len(payload or b"")).encode()
        assert fields[b"truncated"] == b"0"
        assert fields[b"error"]
        assert h.ami.calls == []
        assert await h.redis.keys("callmfa:result:*") == []
        assert await h.redis.xlen(REQUESTS) == 0


class FailingDirectory:
    async def lookup(self, user: str) -> DirectoryEntry | None:
        raise DirectoryError("LDAP server ldap://192.0.2.9 failed: timeout")


class TestDirectoryFallback:
    """A request without phone is completed from the directory (docs/contract.md)."""

    async def test_the_directory_number_mode_and_lang_are_used(
        self, start: Start, redis: Redis
    ) -> None:
        await LocalDirectory(redis).set(
            DirectoryEntry(user="alice", phone="+12015550177x42", mode="pin", lang="fr"),
            actor="test")
        h = await start(answered_then(Outcome.APPROVED), directory=LocalDirectory(redis))
        rid = str(uuid.uuid4())
        await h.add_raw(json.dumps({"id": rid, "user": "Alice"}))
        record = await h.outcome(rid)
        assert (record.outcome, record.user) == (Outcome.APPROVED, "alice")
        [call] = h.ami.calls
        assert call.fields["Channel"] == "PJSIP/+12015550177@trunk"
        assert call.variables["CALLMFA_EXTENSION"] == "42"
        marker = await h.store.call_info(rid)
        assert (marker["number"], marker["mode"], marker["lang"]) == ("+12015550177", "pin",
                                                                      "fr")

    @pytest.mark.parametrize("with_directory", [True, False])
    async def test_an_unknown_user_is_rejected_uncalled(
        self, start: Start, redis: Redis, with_directory: bool
    ) -> None:
        h = await start(answered_then(Outcome.APPROVED),
                        directory=LocalDirectory(redis) if with_directory else None)
        rid = str(uuid.uuid4())
        await h.add_raw(json.dumps({"id": rid, "user": "mallory"}))
        record = await h.outcome(rid)
        assert (record.outcome, record.detail) == (Outcome.REJECTED, "unknown_user")
        assert h.ami.calls == []
        await h.all_acked()

    async def test_a_failing_directory_fails_closed(self, start: Start) -> None:
        """LDAP down: error/directory_unavailable, nothing dialled, the entry settled."""
        h = await start(answered_then(Outcome.APPROVED), directory=FailingDirectory())
        rid = str(uuid.uuid4())
        await h.add_raw(json.dumps({"id": rid, "user": "alice"}))
        record = await h.outcome(rid)
        assert (record.outcome, record.detail) == (Outcome.ERROR, "directory_unavailable")
        assert h.ami.calls == []
        await h.all_acked()

    async def test_a_request_with_a_phone_does_not_ask(self, start: Start) -> None:
        h = await start(answered_then(Outcome.APPROVED), directory=FailingDirectory())
        rid, _ = await h.submit()
        assert (await h.outcome(rid)).outcome is Outcome.APPROVED


class TestOriginate:
    async def test_originate_fields_and_variables(self, start: Start) -> None:
        """The Originate carries the dial string from the template, the request id as
        ChannelId, the ring timeout in ms, the caller ID, and the dialplan's variables
        (answering-machine detection on by default; early keys kept: '#' is no secret)."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit(phone="+12015550100x1234")

        await h.outcome(rid)

        [call] = h.ami.calls
        token = call.variables.pop("CALLMFA_TOKEN")
        marker = await h.store.call_info(rid)
        assert marker["token_hash"] == token_hash(token)
        assert token not in str(marker)
        assert call.fields == {
            "Channel": "PJSIP/+12015550100@trunk",
            "Context": "callmfa-verify",
            "Exten": "s",
            "Priority": "1",
            "Timeout": "3000",
            "ChannelId": rid,
            "CallerID": '"Sign-in" <+15550000>',
        }
        assert call.variables == {
            "CALLMFA_ID": rid,
            "CALLMFA_EXTENSION": "1234",
            "CALLMFA_AGI": "agi://127.0.0.1:4573/verify",
            "CALLMFA_MAX_SECS": "60",
            "CALLMFA_AMD": "on",
            "CALLMFA_AMD_SILENCE": "2500",
            "CALLMFA_AMD_GREETING": "1500",
            "CALLMFA_AMD_TOTAL": "5000",
            "CALLMFA_KEEP_KEYS": "on",
        }
        assert call.timeout_s > 3.0, "the wait for OriginateResponse outlasts the ringing"
        await h.all_acked()
        assert h.ami.log == [("watch", rid), ("originate", rid), ("unwatch", rid)]

    async def test_every_call_gets_its_own_token(self, start: Start) -> None:
        """Each Originate hands Asterisk a fresh 192-bit token (CALLMFA_TOKEN) that the IVR
        must give back; no two calls share one."""
        h = await start(answered_then(Outcome.APPROVED))
        for user in ("alice", "bob", "carol"):
            rid, _ = await h.submit(user=user)
            await h.outcome(rid)

        tokens = [call.variables["CALLMFA_TOKEN"] for call in h.ami.calls]
        assert len(set(tokens)) == 3
        assert all(len(t) == 48 for t in tokens)

    async def test_digits_template_and_no_caller_id(self, start: Start) -> None:
        """{digits} is the number without '+'; no CallerID field without a caller_id;
        no extension gives an empty CALLMFA_EXTENSION."""
        h = await start(
            answered_then(Outcome.APPROVED), dial_template="SIP/{digits}@gw", caller_id=""
        )
        rid, _ = await h.submit(phone="+4930123456")

        await h.outcome(rid)

        [call] = h.ami.calls
        assert call.fields["Channel"] == "SIP/4930123456@gw"
        assert "CallerID" not in call.fields
        assert call.variables["CALLMFA_EXTENSION"] == ""

    async def test_amd_off_reaches_the_dialplan(self, start: Start) -> None:
        """CALLMFA_AMD=off is passed on as the channel variable CALLMFA_AMD=off, which
        makes the dialplan skip AMD()."""
        h = await start(answered_then(Outcome.APPROVED), amd="off")
        rid, _ = await h.submit()

        await h.outcome(rid)

        assert h.ami.calls[0].variables["CALLMFA_AMD"] == "off"

    async def test_classic_agi_mode_uses_the_classic_context(self, start: Start) -> None:
        """agi_mode classic sends the call to <context>-classic, where the dialplan runs
        the classic AGI script."""
        h = await start(answered_then(Outcome.APPROVED), agi_mode="classic")
        rid, _ = await h.submit()

        await h.outcome(rid)

        assert h.ami.calls[0].fields["Context"] == "callmfa-verify-classic"

    async def test_match_request_reaches_the_ivr_in_the_call_marker(self, start: Start) -> None:
        """A match request's mode, lang and match_hash are in the call marker by the time
        the call is placed (the IVR checks the keys against it: test_ivr_modes.py); the
        hash goes to no AMI header or channel variable."""
        markers: list[dict[str, str]] = []
        approve = answered_then(Outcome.APPROVED)

        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            markers.append(await ami.store.call_info(call.fields["ChannelId"]))
            return await approve(ami, call, watch)

        h = await start(network)
        code_hash = hash_code("42")
        rid, _ = await h.submit(mode="match", match_hash=code_hash, lang="fr-CA")

        assert (await h.outcome(rid)).outcome is Outcome.APPROVED

        [marker] = markers
        assert (marker["mode"], marker["lang"], marker["match_hash"]) == (
            "match", "fr-CA", code_hash)
        assert code_hash not in repr(h.ami.calls)
        # Keys before the prompt would be the code, in a variable Asterisk publishes.
        assert h.ami.calls[0].variables["CALLMFA_KEEP_KEYS"] == "off"

    async def test_otp_code_goes_only_to_the_stream_entry(self, start: Start) -> None:
        """An otp request: the call marker names the request's stream entry (where the IVR
        reads the code) and holds no code; no AMI header or variable has it; once settled
        the entry is deleted, so the code is in no key at all."""
        code = "4829173"
        seen: list[tuple[dict[str, str], bytes | None]] = []
        deliver = answered_then(Outcome.DELIVERED)

        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            marker = await ami.store.call_info(call.fields["ChannelId"])
            seen.append((marker, await ami.store.request_payload(marker.get("entry_id", ""))))
            return await deliver(ami, call, watch)

        h = await start(network)
        rid, entry_id = await h.submit(mode="otp", otp=code)

        assert (await h.outcome(rid)).outcome is Outcome.DELIVERED
        [(marker, payload)] = seen
        assert marker["entry_id"] == entry_id
        assert code not in repr(marker)
        assert payload is not None
        assert code in payload.decode()  # the IVR's one copy, while the call lasts
        assert code not in repr(h.ami.calls)
        await h.all_acked()
        assert await h.redis.xlen(REQUESTS) == 0
        assert await h.store.request_payload(entry_id) is None
        keys = [k async for k in h.redis.scan_iter()]
        for key in keys:
            if (await h.redis.type(key)) == b"hash":
                assert code not in repr(await h.redis.hgetall(key))
            elif (await h.redis.type(key)) == b"string":
                assert code.encode() not in (await h.redis.get(key) or b"")

    async def test_uppercase_id_is_normalised(self, start: Start) -> None:
        """An upper-case UUID is dialled and answered under its lower-case form."""
        h = await start(answered_then(Outcome.APPROVED))
        rid = str(uuid.uuid4())
        await h.submit(rid=rid.upper())

        record = await h.outcome(rid)

        assert record.outcome is Outcome.APPROVED
        assert h.ami.calls[0].fields["ChannelId"] == rid


class TestOutcomeMetric:
    @pytest.mark.parametrize("agi_mode", ["fastagi", "classic"])
    async def test_each_answered_outcome_is_counted_once(self, start: Start, redis: Redis,
                                                         agi_mode: str) -> None:
        """callmfa_outcomes_total: in classic mode the AGI script (its own process, no
        metrics) stores the outcome, and serve counted nothing; the originator counts it
        now. In fastagi mode the IVR in this process counts it, and only it."""
        metrics = Metrics()
        ivr_store = None
        if agi_mode == "classic":  # the script's store: no observer
            ivr_store = Store(redis, result_ttl_s=60, events_maxlen=1000)
        h = await start(answered_then(Outcome.APPROVED), observer=metrics, ivr_store=ivr_store,
                        agi_mode=agi_mode)
        rid, _ = await h.submit()
        await h.outcome(rid)
        await h.all_acked()

        def count(outcome: Outcome) -> float | None:
            return metrics.registry.get_sample_value(
                "callmfa_outcomes_total", {"outcome": outcome.value})

        assert count(Outcome.APPROVED) == 1
        assert all(count(o) == 0 for o in Outcome if o is not Outcome.APPROVED)


class TestCallOutcomes:
    async def test_answered_keeps_the_ivr_outcome(self, start: Start) -> None:
        """An answered call ends with the IVR's outcome; the marker gets answered_at and
        the events go queued, dialing, answered, finished."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit()

        record = await h.outcome(rid)
        await h.all_acked()

        assert record.outcome is Outcome.APPROVED
        assert (await h.redis.hget(call_key(rid), "answered_at")) is not None
        events = [e["event"] for e in await h.events_of(rid)]
        assert events == ["queued", "dialing", "answered", "finished"]

    async def test_a_ring_seen_after_the_answer_precedes_it(self, start: Start) -> None:
        """The Newstate of the ring may trail the OriginateResponse of the answer: the
        answer waits for it, so the events still go ringing, answered (the ring dated to the
        answer, never after it)."""
        h = await start(answered_then(Outcome.APPROVED, ring_after_s=0.02))
        rid, _ = await h.submit()

        await h.outcome(rid)

        events = {e["event"]: e for e in await h.events_of(rid)}
        assert list(events) == ["queued", "dialing", "ringing", "answered", "finished"]
        assert events["ringing"]["at"] == events["answered"]["at"]

    async def test_a_call_waiting_for_room_keeps_its_user_locked(self, start: Start) -> None:
        """No Asterisk with room at admission: the call may wait until the request expires,
        and the user's in-flight lock lasts that long more (it lapsed after the longest
        call's time, so a second call to the same user could start; found in review)."""
        ttls: list[int] = []
        answer = answered_then(Outcome.APPROVED)

        async def network(ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
                          ) -> OriginateResult:
            ttls.append(await ami.store.redis.ttl("callmfa:inflight:alice"))
            return await answer(ami, call, watch)

        h = await start(network, result_ttl_s=3600)
        lock_ttl = limits(make_settings()).lock_ttl_s

        async def no_room_now(timeout_s: float) -> FakeAmi | None:
            return None if timeout_s == 0 else h.ami
        h.ami.acquire = no_room_now  # type: ignore[method-assign]
        rid, _ = await h.submit(expires_in_s=600)
        assert (await h.outcome(rid)).outcome is Outcome.APPROVED
        assert ttls[0] > lock_ttl + 590
        # Never past the outcome's key, which frees it (an expired outcome left it locked).
        rid, _ = await h.submit(expires_in_s=3600)
        await h.outcome(rid)
        assert ttls[1] <= 3600

    async def test_busy(self, start: Start) -> None:
        """A failed Originate (Reason 0) after a Hangup with cause 17 is busy."""
        h = await start(failed(0, 17))
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail, record.hangup_cause) == (
            Outcome.BUSY, "user_busy", 17)
        assert record.call_started_at is not None
        await h.all_acked()

    async def test_no_answer_without_hangup_event(
        self, start: Start, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Reason 3 (ring timeout) and no Hangup event within the wait is no_answer."""
        monkeypatch.setattr(ivr.originator, "HANGUP_EVENT_WAIT_S", 0.1)
        h = await start(failed(3, None))
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail, record.hangup_cause) == (
            Outcome.NO_ANSWER, "no_answer", None)
        await h.all_acked()

    async def test_unreachable_cause(self, start: Start) -> None:
        """A failed Originate with an unreachable cause (1) is unreachable."""
        h = await start(failed(0, 1))
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert record.outcome is Outcome.UNREACHABLE
        assert record.hangup_cause == 1

    async def test_ami_error_is_originate_failed(self, start: Start) -> None:
        """Originate raising AmiError gives error/originate_failed."""
        h = await start(raising(AmiError("Originate refused: Permission denied")))
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.ERROR, "originate_failed")
        await h.all_acked()
        assert h.ami.log[-1] == ("unwatch", rid)

    async def test_ami_connection_lost_is_asterisk_lost(self, start: Start) -> None:
        """Originate raising AmiConnectError gives error/asterisk_lost."""
        h = await start(raising(AmiConnectError("AMI connection lost")))
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.ERROR, "asterisk_lost")
        await h.all_acked()

    async def test_answered_without_ivr_outcome(self, start: Start) -> None:
        """Answered, then hung up with no IVR outcome within outcome_grace_s:
        error/no_ivr_outcome with the hang-up cause."""
        h = await start(answered_then(None, cause=16), outcome_grace_s=0.2)
        rid, _ = await h.submit()
        started = time.monotonic()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail, record.hangup_cause) == (
            Outcome.ERROR, "no_ivr_outcome", 16)
        assert time.monotonic() - started >= 0.2
        await h.all_acked()

    async def test_ami_lost_during_answered_call(self, start: Start) -> None:
        """The AMI connection dropping during an answered call (the watch fails) with no
        IVR outcome gives error/asterisk_lost."""
        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            watch.hangup.set_exception(AmiConnectError("AMI connection lost"))
            return OriginateResult(True, 4, {})

        h = await start(network)
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.ERROR, "asterisk_lost")

    @pytest.mark.parametrize(("agi_mode", "outcome"), [("fastagi", Outcome.APPROVED),
                                                        ("classic", Outcome.ERROR)])
    async def test_ami_lost_and_back_during_answered_call_keeps_the_ivr_outcome(
        self, start: Start, agi_mode: str, outcome: Outcome
    ) -> None:
        """Only the AMI connection dropped (it is back within outcome_grace_s): over
        FastAGI the call goes on, and the user's '#' keyed a second later is the outcome
        (it was ended error/asterisk_lost after the grace time, and the IVR's approval
        refused). A classic script that died with a restarted Asterisk would tell no one,
        so there the grace time still ends it."""
        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            watch.hangup.set_exception(AmiConnectError("AMI connection lost"))
            ami.connected.set()
            ami.later(approved_after(ami.store, call.fields["ChannelId"], 1.0))
            return OriginateResult(True, 4, {})

        h = await start(network, outcome_grace_s=0.2, agi_mode=agi_mode)
        rid, _ = await h.submit()

        record = await h.outcome(rid)

        assert record.outcome is outcome


class TestDeliveryAndConcurrency:
    async def test_same_id_twice_places_one_call(self, start: Start) -> None:
        """Two entries with the same id (added together): one Originate, one outcome,
        both entries acked."""
        h = await start(answered_then(Outcome.APPROVED))
        rid = str(uuid.uuid4())
        await h.submit(rid=rid)
        await h.submit(rid=rid)

        record = await h.outcome(rid)
        await h.all_acked()

        assert record.outcome is Outcome.APPROVED
        assert len(h.ami.calls) == 1
        finished = [e for e in await h.events_of(rid) if e["event"] == "finished"]
        assert len(finished) == 1
        info = (await h.redis.xinfo_groups(REQUESTS))[0]
        assert info["entries-read"] == 2

    async def test_same_id_after_its_outcome(self, start: Start) -> None:
        """A request id that already has an outcome is acked without a second call."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit()
        first = await h.outcome(rid)
        _, second_entry = await h.submit(rid=rid)

        async def delivered_and_acked() -> bool:
            info = (await h.redis.xinfo_groups(REQUESTS))[0]
            return info["last-delivered-id"].decode() == second_entry and info["pending"] == 0
        await eventually(delivered_and_acked, what="second entry settled")

        assert len(h.ami.calls) == 1
        assert await h.store.get_outcome(rid) == first

    async def test_entries_acked_only_after_outcome(self, start: Start) -> None:
        """While a call rings the entry stays pending; once the outcome is stored, every
        entry is acked."""
        ring = asyncio.Event()
        h = await start(busy_when(ring))
        # One user per call: a user has at most one call in flight (docs/security.md).
        ids = [(await h.submit(user=f"user{i}"))[0] for i in range(3)]

        async def all_ringing() -> bool:
            return h.ami.active == 3
        await eventually(all_ringing, what="three calls ringing")
        assert await h.pending() == 3
        ring.set()
        records = [await h.outcome(rid) for rid in ids]
        await h.all_acked()

        assert [r.outcome for r in records] == [Outcome.BUSY] * 3

    async def test_max_in_flight_limits_concurrent_calls(self, start: Start) -> None:
        """max_in_flight=2 with 5 slow calls: never more than 2 Originates at once, and
        all 5 get their outcome."""
        gate = asyncio.Event()

        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            await gate.wait()
            watch.hangup.set_result(17)
            return OriginateResult(False, 0, {})

        h = await start(network, max_in_flight=2)
        ids = [(await h.submit(user=f"user{i}"))[0] for i in range(5)]

        async def two_ringing() -> bool:
            return h.ami.active == 2
        await eventually(two_ringing, what="two calls in progress")
        assert len(h.ami.calls) == 2
        assert await h.pending() == 2, "the others are not even read yet"
        gate.set()
        for rid in ids:
            assert (await h.outcome(rid)).outcome is Outcome.BUSY
        await h.all_acked()

        assert len(h.ami.calls) == 5
        assert h.ami.max_active == 2


class TestStop:
    async def test_stop_cancels_overrunning_call_and_leaves_it_pending(
        self, start: Start
    ) -> None:
        """A call still running after the grace period is cancelled: no outcome, and its
        entry stays pending (not acked) in the group."""
        never = asyncio.Event()

        async def network(
            ami: FakeAmi, call: OriginateCall, watch: ChannelWatch
        ) -> OriginateResult:
            await never.wait()
            raise AssertionError("unreachable")

        h = await start(network)
        rid, _ = await h.submit()

        async def dialling() -> bool:
            return h.ami.active == 1
        await eventually(dialling, what="the call in progress")

        await asyncio.wait_for(h.originator.stop(grace_s=0.1), 2)

        assert h.originator.in_flight == 0
        assert await h.store.get_outcome(rid) is None
        assert await h.pending() == 1
        assert h.ami.log[-1] == ("unwatch", rid)

    async def test_stop_lets_a_call_finish_within_grace(self, start: Start) -> None:
        """A call that ends within the grace period gets its outcome and its ack."""
        ring = asyncio.Event()
        h = await start(busy_when(ring))
        rid, _ = await h.submit()

        async def dialling() -> bool:
            return h.ami.active == 1
        await eventually(dialling, what="the call in progress")
        stopping = asyncio.create_task(h.originator.stop(grace_s=5))
        ring.set()
        await asyncio.wait_for(stopping, 2)

        record = await h.store.get_outcome(rid)
        assert record is not None
        assert record.outcome is Outcome.BUSY
        assert await h.pending() == 0

    async def test_no_new_call_after_stop(self, start: Start) -> None:
        """After stop() the originator takes no new request: one added while run() is
        blocked reading is not dialled, and run() ends with nothing in flight."""
        h = await start(answered_then(Outcome.APPROVED))

        async def reading() -> bool:
            clients = await h.redis.client_list()
            return any(
                c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in clients
            )
        await eventually(reading, what="run() blocked in XREADGROUP")

        await h.originator.stop(grace_s=1.0)
        rid, _ = await h.submit()
        await asyncio.wait_for(h.task, 3)  # run() returns at the end of its read

        assert h.originator.in_flight == 0
        assert h.ami.calls == []
        assert await h.store.get_outcome(rid) is None


class TestBoundedQueue:
    """Settled entries leave callmfa:requests: it holds only what waits or is in progress."""

    async def test_every_kind_of_settled_entry_is_deleted(self, start: Start) -> None:
        """Approved, busy, expired, rejected, a duplicate and a dead letter: all acked and
        deleted, so XLEN ends at 0 (no phone number or context is left behind)."""
        h = await start(answered_then(Outcome.APPROVED))
        approved, _ = await h.submit(user="u1")
        expired, _ = await h.submit(user="u2", expires_in_s=-1)
        rejected, _ = await h.submit(user="u3", phone="+1555abc0100")
        await h.submit(rid=approved, user="u1")  # a duplicate delivery of the same id
        await h.add_raw(b"not json")  # no id: dead-lettered

        outcomes = [(await h.outcome(rid)).outcome for rid in (approved, expired, rejected)]

        assert outcomes == [Outcome.APPROVED, Outcome.EXPIRED, Outcome.REJECTED]
        await h.all_acked()
        async def emptied() -> bool:
            return await h.redis.xlen(REQUESTS) == 0
        await eventually(emptied, what="callmfa:requests emptied")
        assert await h.redis.xlen(DEADLETTER) == 1

    async def test_oversized_request_with_leading_id_is_rejected_unparsed(
        self, start: Start, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry over MAX_REQUEST_BYTES whose id comes first ends rejected/too_large,
        is deleted, and is never handed to the JSON parser."""
        parsed: list[int] = []
        real_loads = json.loads

        def loads(raw: Any, *args: Any, **kwargs: Any) -> Any:
            parsed.append(len(raw))
            return real_loads(raw, *args, **kwargs)

        monkeypatch.setattr(ivr.domain.request.json, "loads", loads)
        h = await start(answered_then(Outcome.APPROVED))
        rid = str(uuid.uuid4())
        await h.add_raw(json.dumps({"id": rid, "user": "alice", "phone": "+12015550100",
                                    "context": {"pad": "x" * 1_000_000}}))

        record = await h.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.REJECTED, "too_large")
        assert all(n <= MAX_REQUEST_BYTES for n in parsed)
        await h.all_acked()
        assert await h.redis.xlen(REQUESTS) == 0
        assert await h.redis.xlen(DEADLETTER) == 0

    async def test_oversized_request_without_id_is_dead_lettered_truncated(
        self, start: Start
    ) -> None:
        """A 1 MB entry with no leading id: the dead letter keeps its first
        DEADLETTER_PAYLOAD_BYTES, its length and its SHA-256, never the whole of it."""
        h = await start(answered_then(Outcome.APPROVED))
        payload = b'{"user": "alice", "pad": "' + b"x" * 1_000_000 + b'"}'
        entry_id = await h.add_raw(payload)

        async def dead_lettered() -> bool:
            return await h.redis.xlen(DEADLETTER) == 1
        await eventually(dead_lettered, what="deadletter entry")
        await h.all_acked()

        [(_, fields)] = await h.redis.xrange(DEADLETTER)
        assert fields[b"entry_id"].decode() == entry_id
        assert fields[b"request"] == payload[:DEADLETTER_PAYLOAD_BYTES]
        assert fields[b"request_bytes"] == str(len(payload)).encode()
        assert fields[b"request_sha256"] == hashlib.sha256(payload).hexdigest().encode()
        assert fields[b"truncated"] == b"1"
        assert b"over" in fields[b"error"]
        assert await h.redis.xlen(REQUESTS) == 0

    async def test_client_refuses_an_oversized_request_before_queueing_it(
        self, redis: Redis
    ) -> None:
        """VerificationClient.submit raises ValueError, naming the limit, and adds nothing."""
        client = VerificationClient(redis, signing_key="k" * 32)
        with pytest.raises(ValueError, match=str(MAX_REQUEST_BYTES)):
            await client.submit(user="alice", phone="+12015550100",
                                context={"pad": "x" * MAX_REQUEST_BYTES})
        assert await redis.exists(REQUESTS) == 0


DEAD = "dead-originator"


async def _delivered_to_dead_originator(h: Harness) -> str:
    """Deliver the next entry to a consumer with no lease (an originator that died
    holding it); returns its entry id."""
    reply: Any = await h.redis.xreadgroup(GROUP, DEAD, {REQUESTS: ">"}, count=1)
    [(_, [(entry_id, _)])] = reply
    return cast(bytes, entry_id).decode()


class TestTakeOver:
    """XCLAIM after a dead originator still works now that settled entries are deleted."""

    async def test_undialled_entry_of_a_dead_originator_is_dialled_and_deleted(
        self, start: Start
    ) -> None:
        """A dead originator read an entry and never dialled it: another takes it over
        (XCLAIM), places the call, and the entry is acked and deleted."""
        h = await start(failed(0, 17), lease_s=0.4, max_in_flight=1)
        await h.originator.stop(grace_s=0.1)  # this one reads no more: the dead one will
        await cancel_and_wait(h.task)
        rid, _ = await h.submit()
        entry_id = await _delivered_to_dead_originator(h)
        assert await h.pending() == 1

        heir = await start(failed(0, 17), lease_s=0.4, consumer="heir")
        record = await heir.outcome(rid)

        assert record.outcome is Outcome.BUSY
        assert len(heir.ami.calls) == 1
        await heir.all_acked()
        assert await h.redis.xrange(REQUESTS, min=entry_id, max=entry_id) == []
        assert await h.redis.xlen(REQUESTS) == 0

    async def test_dialled_entry_of_a_dead_originator_is_settled_and_deleted(
        self, start: Start
    ) -> None:
        """The dead originator had placed the call, which is over: the heir never dials
        it again, records error/originator_lost, and deletes the entry."""
        h = await start(failed(0, 17), lease_s=0.4, max_in_flight=1)
        await h.originator.stop(grace_s=0.1)
        await cancel_and_wait(h.task)
        rid, _ = await h.submit()
        await _delivered_to_dead_originator(h)
        await h.store.claim_call(rid, {"user": "alice", "number": "+12015550100",
                                       "call_started_at": str(time.time() - 3600)})

        heir = await start(failed(0, 17), lease_s=0.4, consumer="heir")
        record = await heir.outcome(rid)

        assert (record.outcome, record.detail) == (Outcome.ERROR, "originator_lost")
        assert heir.ami.calls == []
        await heir.all_acked()
        assert await h.redis.xlen(REQUESTS) == 0

    async def test_an_unreadable_marker_or_outcome_is_never_dialled_again(
        self, start: Start
    ) -> None:
        """Taken over with a call marker whose start time is garbage, or a result key that
        does not parse: no second call, the entry is settled and deleted (it was retried
        forever, each take-over failing)."""
        h = await start(failed(0, 17), lease_s=0.4, max_in_flight=2)
        await h.originator.stop(grace_s=0.1)
        await cancel_and_wait(h.task)
        marked, _ = await h.submit()
        garbled, _ = await h.submit()
        await _delivered_to_dead_originator(h)
        await _delivered_to_dead_originator(h)
        await h.store.claim_call(marked, {"user": "alice", "number": "+12015550100",
                                          "call_started_at": "not a time"})
        await h.redis.set(result_key(garbled), b"\xff not json")

        heir = await start(failed(0, 17), lease_s=0.4, consumer="heir",
                           ring_timeout_s=0.2, max_call_s=1)
        record = await heir.outcome(marked)

        assert (record.outcome, record.detail) == (Outcome.ERROR, "originator_lost")
        await heir.all_acked()
        assert heir.ami.calls == []
        assert await h.redis.get(result_key(garbled)) == b"\xff not json"


class TestRetriedWrites:
    """A failover can lose a write's reply after the write was made: redis-py then runs the
    command again (issue 17). Each retried write must be harmless."""

    async def test_a_request_queued_twice_is_dialled_once(self, start: Start) -> None:
        """A retried XADD queues the request twice: one call, one outcome."""
        h = await start(answered_then(Outcome.APPROVED))
        rid, _ = await h.submit()
        await h.submit(rid=rid)

        record = await h.outcome(rid)
        await h.all_acked()

        assert record.outcome is Outcome.APPROVED
        assert len(h.ami.calls) == 1
        finished = [e for e in await h.events_of(rid) if e["event"] == "finished"]
        assert len(finished) == 1


class TestHeartbeat:
    async def test_an_error_reply_is_retried_and_calls_go_on(
        self, start: Start, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Redis refusing the lease's renewal for a while (OOM) is logged and retried: the
        originator keeps running and placing calls."""
        h = await start(answered_then(Outcome.APPROVED), lease_s=0.4)
        renew = h.store.heartbeat
        refused = 0

        async def oom(consumer: str, lease_ms: int) -> None:
            nonlocal refused
            if refused < 3:
                refused += 1
                raise ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
            await renew(consumer, lease_ms)

        monkeypatch.setattr(h.store, "heartbeat", oom)
        await eventually(lambda: refused == 3, what="three refused renewals")
        rid, _ = await h.submit()
        assert (await h.outcome(rid)).outcome is Outcome.APPROVED
        assert not h.task.done()

    async def test_any_other_failure_ends_the_run_with_its_error(
        self, start: Start, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A renewal that fails for another reason (a bug) does not leave the lease to lapse
        silently: run() ends with the error, for the service to stop."""
        h = await start(answered_then(Outcome.APPROVED), lease_s=0.4)

        async def broken(consumer: str, lease_ms: int) -> None:
            raise RuntimeError("a bug in the heartbeat")

        monkeypatch.setattr(h.store, "heartbeat", broken)
        with pytest.raises(RuntimeError, match="a bug in the heartbeat"):
            await asyncio.wait_for(asyncio.shield(h.task), 5)
