"""The AMI events a verification costs: what Asterisk sends callmfa's account, what is read.

dialplan/manager_callmfa.conf's eventfilter lines keep all but the three events callmfa
uses; AmiClient's lazy parser reads only those of the calls it watches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.tasks import cancel_and_wait
from ivr.transport.ami import AmiClient

from ..conftest import Sandbox
from .conftest import PhoneFactory
from .test_check_pbx import _config_dir

PHONE = "+12015550142"


class RawSession:
    """A plain AMI session of callmfa's account (``Events: on``): every event it is sent."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pong = asyncio.Event()

    async def start(self, sandbox: Sandbox) -> None:
        reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", int(sandbox.env["CALLMFA_AMI_PORT"])), 10)
        self._writer.write(f"Action: Login\r\nUsername: {sandbox.env['CALLMFA_AMI_USER']}\r\n"
                           f"Secret: {sandbox.ami_secret}\r\nEvents: on\r\n\r\n".encode())
        await self._writer.drain()
        await asyncio.wait_for(reader.readuntil(b"Authentication accepted"), 10)
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while message := await reader.readuntil(b"\r\n\r\n"):
            head, _, rest = message.strip().partition(b"\r\n")
            if b"\r\nActionID: sync" in message:
                self._pong.set()
            elif head.startswith(b"Event: "):
                name = head[7:].decode()
                if name == "Newstate":
                    state = rest.split(b"ChannelState: ", 1)[1].split(b"\r\n", 1)[0]
                    name += f"({state.decode()})"
                self.events[name] += 1

    async def ping(self) -> None:
        """Send a Ping and wait for its reply (so that every earlier event was read)."""
        assert self._writer is not None
        self._pong.clear()
        self._writer.write(b"Action: Ping\r\nActionID: sync\r\n\r\n")
        await self._writer.drain()
        await asyncio.wait_for(self._pong.wait(), 10)

    async def stop(self) -> None:
        await cancel_and_wait(*([self._task] if self._task else []))
        if self._writer is not None:
            self._writer.close()


def _ami(sandbox: Sandbox) -> AmiClient:
    env = sandbox.env
    return AmiClient(host=env["CALLMFA_AMI_HOST"], port=int(env["CALLMFA_AMI_PORT"]),
                     user=env["CALLMFA_AMI_USER"], secret=sandbox.ami_secret, timeout_s=5)


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s")
        await asyncio.sleep(0.05)


class TestAmiEvents:
    async def test_one_verification_sends_the_account_three_events(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """The eventfilter: OriginateResponse, Newstate (ringing) and Hangup, nothing else
        (no Newchannel, Dial*, SoftHangupRequest, Newstate Up: 10 without the filter).
        A session that watches no call reads none of them; one that watches it reads its
        two channel events, not the serve's OriginateResponse."""
        p = phone(keys="#")
        raw, idle, watcher = RawSession(), _ami(sandbox), _ami(sandbox)
        await raw.start(sandbox)
        await idle.connect()
        await watcher.connect()
        try:
            rid = str(uuid.uuid4())
            watch = watcher.watch(rid)  # before the call, so that no event is missed
            await client.submit(user="alice", phone=PHONE, request_id=rid)
            record = await client.wait(rid, 40)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            await asyncio.wait_for(watch.hangup, 20)
            await _until(lambda: raw.events["Hangup"] >= 1, 5, "the Hangup event")
            # A session sends its events in order: what came before a reply has arrived.
            await raw.ping()
            for ami in (idle, watcher):
                await ami.action({"Action": "Ping"}, timeout_s=5)
        finally:
            await raw.stop()
            await idle.close()
            await watcher.close()
        assert dict(raw.events) == {"OriginateResponse": 1, "Newstate(5)": 1, "Hangup": 1}
        assert watch.ringing.is_set()
        assert (idle.events.received, idle.events.read) == (3, 0)
        assert (watcher.events.received, watcher.events.read) == (3, 2)
        assert p.wait(20) == 0, p.errors()

    async def test_an_account_with_more_rights_is_still_sent_call_events_only(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """read = all and no eventfilter (an over-privileged account): a plain session is
        sent VarSet (with the call's token), Newexten, AGIExec...; callmfa's client logs in
        with Events: call and is sent none of those."""
        conf = _config_dir(sandbox) / "manager_callmfa.conf"
        text = conf.read_text()
        conf.write_text("".join(
            "read = all\n" if line.startswith("read =") else line
            for line in text.splitlines(keepends=True) if not line.startswith("eventfilter")))
        p = phone(keys="#")
        raw, ours = RawSession(), _ami(sandbox)
        try:
            sandbox.asterisk("manager reload")
            await raw.start(sandbox)
            await ours.connect()
            record = await client.verify(user="alice", phone=PHONE, timeout_s=40)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            await _until(lambda: raw.events["Hangup"] >= 1, 10, "the Hangup event")
            await raw.ping()
            await ours.action({"Action": "Ping"}, timeout_s=5)
        finally:
            await raw.stop()
            await ours.close()
            conf.write_text(text)
            sandbox.asterisk("manager reload")
        assert {"VarSet", "Newexten", "AGIExecStart"} <= set(raw.events)  # asked for: sent
        names = ours.events.unneeded_names
        assert "Newchannel" in names  # no filter: call events callmfa does not read
        assert len(names) < 8  # (it keeps 8 names at most: all are here)
        assert not names & {"VarSet", "Newexten", "AGIExecStart", "AGIExecEnd"}
        assert ours.events.received < sum(raw.events.values()) / 4
        assert p.wait(20) == 0, p.errors()
