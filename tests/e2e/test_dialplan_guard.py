"""The optional toll-fraud guard in the dialplan ([callmfa-dial], dialplan/)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.transport.ami import AmiClient

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, Sandbox, wait_until
from .conftest import PhoneFactory

GUARDED = "Local/{number}@callmfa-dial/n"


@pytest.fixture
def guarded(sandbox: Sandbox) -> Iterator[None]:
    """`callmfa serve` dialling through the guard instead of the trunk directly."""
    pid = int((sandbox.directory / "pids" / "callmfa.pid").read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "callmfa serve to stop")
    log = sandbox.directory / "logs" / "callmfa-guarded.log"
    env = {**os.environ, **E2E_SETTINGS, **sandbox.env, "CALLMFA_DIAL_TEMPLATE": GUARDED}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "callmfa"), "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b'"service_ready"' in log.read_bytes() or proc.poll() is not None,
                   30, "guarded callmfa serve")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield
    finally:
        proc.terminate()
        proc.wait(30)
        env = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": sandbox.netns,
               "CALLMFA_SANDBOX_DIR": str(sandbox.directory)}
        subprocess.run(["bash", str(SANDBOX), "up"], env=env, check=True, capture_output=True,
                       cwd=REPO, timeout=120)


@pytest.mark.usefixtures("guarded")
class TestDialplanGuard:
    async def test_allowed_number_is_verified_through_the_guard(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """+1 numbers pass the guard: '#' approves, as without it."""
        p = phone(keys="#")
        record = await client.verify(user="guarded", phone="+15550100", timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.APPROVED
        assert p.wait(20) == 0, p.errors()

    async def test_busy_still_maps_through_the_local_channel(
        self, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """A 486 behind the guard is still busy (the cause crosses the Local channel)."""
        p = phone(reject_with=486)
        record = await client.verify(user="guarded", phone="+15550100", timeout_s=40)
        assert record is not None
        assert record.outcome is Outcome.BUSY
        assert p.wait(20) == 0, p.errors()

    async def test_denied_number_never_reaches_the_trunk(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """Even an Originate that skips callmfa's policy cannot pass the guard with +882."""
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
                {"Channel": GUARDED.format(number="+88212345678"), "Context": "callmfa-verify",
                 "Exten": "s", "Priority": "1", "Timeout": "5000", "ChannelId": uid},
                {}, timeout_s=15)
            cause = await asyncio.wait_for(watch.hangup, 10)
        finally:
            await ami.close()
        assert not result.answered
        assert cause == 1
        assert p.invites() == {}
        log = (sandbox.directory / "logs" / "asterisk.log").read_text()
        assert "callmfa-dial refused +88212345678" in log
