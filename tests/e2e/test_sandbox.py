"""The sandbox itself: a real Asterisk calls the real sipp phone through AMI."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

from ivr.exceptions import AmiLoginError
from ivr.transport.ami import AmiClient

from ..conftest import Sandbox
from .conftest import PhoneFactory


def _ami(sandbox: Sandbox, secret: str | None = None) -> AmiClient:
    env = sandbox.env
    if secret is None:
        with open(env["CALLMFA_AMI_SECRET_FILE"]) as f:
            secret = f.read().strip()
    return AmiClient(host=env["CALLMFA_AMI_HOST"], port=int(env["CALLMFA_AMI_PORT"]),
                     user=env["CALLMFA_AMI_USER"], secret=secret, timeout_s=5)


class TestSandbox:
    async def test_originate_reaches_the_phone_which_answers_and_hangs_up(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """AMI Originate rings the sipp phone, sees it answer, and sees the Hangup event."""
        p = phone(keys="", hangup_after_ms=300)
        ami = _ami(sandbox)
        await ami.connect()
        uid = str(uuid.uuid4())
        watch = ami.watch(uid)
        try:
            result = await ami.originate(
                {"Channel": "PJSIP/+12015550199@callmfa-phone", "Context": "callmfa-verify",
                 "Exten": "s", "Priority": "1", "Timeout": "5000", "ChannelId": uid},
                {}, timeout_s=10,
            )
            cause = await asyncio.wait_for(watch.hangup, 10)
        finally:
            await ami.close()
        assert result.answered
        assert result.payload["Uniqueid"] == uid
        assert watch.ringing.is_set()
        assert cause in (16, 0)
        assert p.wait(10) == 0, p.errors()

    async def test_wrong_secret_is_a_clear_login_error(self, sandbox: Sandbox) -> None:
        """A wrong AMI secret fails the login at once, saying what to check."""
        ami = _ami(sandbox, secret="wrong")
        with pytest.raises(AmiLoginError, match="CALLMFA_AMI_SECRET"):
            await ami.connect()

    def test_nothing_listens_outside_loopback(self, sandbox: Sandbox) -> None:
        """Every TCP/UDP listener of the sandbox is on 127.0.0.1 (resolver sockets aside)."""
        out = subprocess.run(["ss", "-H", "-lntu"], capture_output=True, text=True, check=True)
        listeners = [line.split()[4] for line in out.stdout.splitlines()]
        tcp = [a for a, line in zip(listeners, out.stdout.splitlines(), strict=True)
               if line.startswith("tcp")]
        assert tcp, out.stdout
        assert all(a.startswith("127.0.0.1:") for a in tcp), out.stdout
