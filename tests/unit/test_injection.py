"""AMI injection: whatever a request holds, no dangerous character reaches an AMI action.

The real Originator runs on a fake AMI client and a fake store; hypothesis feeds arbitrary
strings, and known injection strings, into every request field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.domain.outcome import OutcomeRecord, iso
from ivr.originator import Originator
from ivr.settings import Settings
from ivr.storage.store import Claim, Entry
from ivr.transport.ami import ChannelWatch, OriginateResult

FORBIDDEN = set("\r\n\0;,&|")
INJECTIONS = [
    "\r\nAction: Command\r\nCommand: core stop now\r\n",
    "+12015550100\r\nAction: Command",
    "+12015550100;x=1", "+12015550100&PJSIP/666", "+12015550100|Local/1@x", "+12015550100,1",
    "alice\nAction: Originate", "en\r\nVariable: X=1", "standard\r\n", "0b6d2c44\r\n",
]
VALID = {"id": "0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11", "user": "alice",
         "phone": "+12015550100", "mode": "standard", "lang": "en",
         "expires_at": iso(time.time() + 3000), "context": {"app": "vpn"}}


class FakeAmi:
    """Records the Originate actions; every call ends busy at once.

    Also the AmiPool side: one Asterisk, always free.
    """

    endpoint = "fake:5038"

    def __init__(self) -> None:
        self.actions: list[tuple[dict[str, str], dict[str, str]]] = []

    async def acquire(self, timeout_s: float) -> FakeAmi:
        return self

    async def release(self, client: FakeAmi) -> None:
        pass

    def watch(self, rid: str) -> ChannelWatch:
        w = ChannelWatch()
        w.hangup.set_result(17)
        return w

    def unwatch(self, rid: str) -> None:
        pass

    async def originate(
        self, fields: Mapping[str, str], variables: Mapping[str, str], *, timeout_s: float
    ) -> OriginateResult:
        self.actions.append((dict(fields), dict(variables)))
        return OriginateResult(False, 0, {})


class FakeStore:
    """Just enough of Store for one request."""

    redis = None

    def __init__(self) -> None:
        self.outcomes: list[OutcomeRecord] = []
        self.deadletters: list[str] = []

    async def claim_call(self, rid: str, fields: Mapping[str, str]) -> Claim:
        return Claim.NEW

    async def place_call(self, rid: str, admission: Any, fields: Mapping[str, str], *,
                         dialing: bool) -> tuple[str, str, int]:
        return Claim.NEW.value, "", 0

    def forget_call(self, rid: str) -> None:
        pass

    async def event(self, rid: str, name: str, **fields: str) -> None:
        pass

    async def mark_answered(self, rid: str, at: float, *, ringing_at: float | None = None
                            ) -> None:
        pass

    async def store_outcome(self, record: OutcomeRecord, *, callback_url: str = "",
                            entry_id: str = "") -> bool:
        self.outcomes.append(record)
        return True

    async def deadletter(self, entry_id: str, payload: bytes | None, error: str) -> None:
        self.deadletters.append(error)

    def settled(self) -> list[str]:
        """What the request ended as: outcomes, or 'deadletter' (no readable id)."""
        return [r.outcome.value for r in self.outcomes] + ["deadletter"] * len(self.deadletters)


class AdmitAll:
    """The security screen, admitting everything (the parser is what is under test)."""

    guard = SimpleNamespace(admission=lambda rid, user, number, wait_s=0.0: ([], []),
                            lock_ttl_s=100)

    async def screen(self, req: Any) -> None:
        return None

    async def check_number(self, req: Any) -> None:
        return None

    def refusal(self, admission: Any) -> None:
        return None


class FakeResults:
    """No outcome ever comes (the fake network fails every call)."""

    @contextlib.contextmanager
    def expecting(self, rid: str) -> Iterator[None]:
        yield None


def _run(payload: bytes) -> tuple[FakeAmi, FakeStore]:
    ami, store = FakeAmi(), FakeStore()
    originator = Originator(Settings(), store, ami, FakeResults(),  # type: ignore[arg-type]
                            AdmitAll())  # type: ignore[arg-type]
    entry = Entry(f"{int(time.time() * 1000)}-0", payload)  # queued now
    asyncio.run(originator._process(entry, taken_over=False))
    return ami, store


def _assert_clean(ami: FakeAmi) -> None:
    for fields, variables in ami.actions:
        for value in [*fields.values(), *variables.values(), *variables]:
            assert not FORBIDDEN & set(value), value


field_values = st.one_of(st.text(), st.sampled_from(INJECTIONS), st.integers(), st.none())


class TestNoInjection:
    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(VALID)), field_values), st.data())
    def test_arbitrary_fields_never_reach_ami_unchecked(
        self, overrides: dict[str, object], data: st.DataObject
    ) -> None:
        """Any mix of valid and arbitrary field values: every AMI value is clean."""
        request = {**VALID, **overrides}
        ami, store = _run(json.dumps(request).encode())
        _assert_clean(ami)
        assert len(store.settled()) == 1

    def test_injection_in_every_field_is_rejected_and_nothing_sent(self) -> None:
        """Injection strings in any field: rejected (or dead-lettered), no Originate.

        ``user`` never reaches AMI, so ';' or '&' is a legal character there: only CR/LF
        (header injection) is refused in it.
        """
        for name in ("id", "user", "phone", "mode", "lang", "expires_at"):
            for injection in INJECTIONS:
                if name == "user" and not set(injection) & set("\r\n"):
                    continue
                ami, store = _run(json.dumps({**VALID, name: injection}).encode())
                assert ami.actions == [], (name, injection)
                # An id that is not even printable cannot get an outcome: dead-lettered.
                assert store.settled() in (["rejected"], ["deadletter"]), (name, injection)

    def test_a_valid_request_does_reach_ami(self) -> None:
        """The harness is sound: a valid request produces one clean Originate."""
        ami, _ = _run(json.dumps(VALID).encode())
        assert len(ami.actions) == 1
        assert ami.actions[0][0]["Channel"] == "PJSIP/+12015550100@trunk"
        _assert_clean(ami)
