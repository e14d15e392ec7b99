"""End-to-end fixtures: a client of the sandbox's Redis and the simulated phone."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ivr.client import VerificationClient
from ivr.testing import PhoneBehaviour, SippPhone

from ..conftest import Sandbox, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[VerificationClient]:
    """A sign-in service's client, connected to the sandbox's Redis."""
    async with VerificationClient.from_url(sandbox.redis_url) as c:
        yield c


PhoneFactory = Callable[..., SippPhone]


def _no_calls(sandbox: Sandbox) -> bool:
    try:
        out = sandbox.asterisk("core show channels count")
    except subprocess.CalledProcessError:
        return True  # Asterisk is down (a fault test): no call of its can linger
    # (Inside the namespace the CLI may first say it found no ethernet interface.)
    return "\n0 active channels\n" in f"\n{out}"


@pytest.fixture
def phone(sandbox: Sandbox, tmp_path: Path) -> Iterator[PhoneFactory]:
    """Start the user's phone (sipp) on the sandbox's phone address; stopped after the test.

    Unless told otherwise the phone says "Hello." on answering, as a person does.
    """
    started: list[SippPhone] = []

    def start(calls: int = 1, **behaviour: object) -> SippPhone:
        if not started:
            # Calls of earlier tests must be over: their late BYEs would reach this phone.
            wait_until(lambda: _no_calls(sandbox), 40, "the sandbox's calls to end")
        # A person says "hello" on answering: answering-machine detection (on) needs it.
        behaviour.setdefault("speech", "Hello.")
        p = SippPhone(
            PhoneBehaviour(**behaviour),  # type: ignore[arg-type]
            workdir=tmp_path / f"phone{len(started)}",
            address=sandbox.env["CALLMFA_PHONE"],
            calls=calls,
        )
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
