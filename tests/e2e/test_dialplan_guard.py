"""The optional toll-fraud guard in the dialplan ([callmfa-dial], dialplan/)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.transport.ami import AmiClient

from ..conftest import Sandbox, wait_until
from .conftest import PhoneFactory, restart_serve

GUARDED = "Local/{number}@callmfa-dial/n"


@pytest.fixture(scope="module")
def guarded(sandbox: Sandbox) -> Iterator[None]:
    """`callmfa serve` dialling through the guard instead of the trunk directly."""
    restart_serve(sandbox, CALLMFA_DIAL_TEMPLATE=GUARDED)
    try:
        yield
    finally:
        restart_serve(sandbox)


@pytest.mark.usefixtures("guarded")
class TestDialplanGuard:
    async def test_allowed_number_is_verified_through_the_guard(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """+1 numbers pass the guard: '#' approves, as without it."""
        p = phone(keys="#")
        record = await client.verify(user="guarded", phone="+12015550100", timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        assert p.wait(20) == 0, p.errors()

    async def test_busy_still_maps_through_the_local_channel(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A 486 behind the guard is still busy (the cause crosses the Local channel)."""
        p = phone(reject_with=486)
        record = await client.verify(user="guarded", phone="+12015550100", timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.BUSY
        assert p.wait(20) == 0, p.errors()

    @pytest.mark.parametrize("number", ["+88212345678", "+1011882123456", "+1201555010"])
    async def test_denied_number_never_reaches_the_trunk(
        self, sandbox: Sandbox, phone: PhoneFactory, number: str
    ) -> None:
        """Even an Originate that skips callmfa's policy cannot pass the guard with +882, a
        +1 011 (international, not NANP) number or a +1 number one digit short."""
        p = phone(keys="#")
        env = sandbox.env
        ami = AmiClient(host=env["CALLMFA_AMI_HOST"], port=int(env["CALLMFA_AMI_PORT"]),
                        user=env["CALLMFA_AMI_USER"],
                        secret=sandbox.ami_secret,
                        timeout_s=5)
        await ami.connect()
        uid = str(uuid.uuid4())
        watch = ami.watch(uid)
        try:
            result = await ami.originate(
                {"Channel": GUARDED.format(number=number), "Context": "callmfa-verify",
                 "Exten": "s", "Priority": "1", "Timeout": "5000", "ChannelId": uid},
                {}, timeout_s=15)
            cause = await asyncio.wait_for(watch.hangup, 10)
        finally:
            await ami.close()
        assert not result.answered
        assert cause == 1
        assert p.invites() == {}
        # Asterisk's logger thread may write the WARNING after the hang-up reached AMI.
        log = sandbox.directory / "logs" / "asterisk.log"
        wait_until(lambda: f"callmfa-dial refused {number}" in log.read_text(), 5,
                   "the guard's log line")
