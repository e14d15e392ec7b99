"""End-to-end fixtures: a client of the sandbox's Redis and the simulated phone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ivr.client import VerificationClient
from ivr.testing import PhoneBehaviour, SippPhone

from ..conftest import Sandbox

pytestmark = pytest.mark.e2e


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[VerificationClient]:
    """A sign-in service's client, connected to the sandbox's Redis."""
    async with VerificationClient.from_url(sandbox.redis_url) as c:
        yield c


PhoneFactory = Callable[..., SippPhone]


@pytest.fixture
def phone(sandbox: Sandbox, tmp_path: Path) -> Iterator[PhoneFactory]:
    """Start the user's phone (sipp) on the sandbox's phone address; stopped after the test."""
    started: list[SippPhone] = []

    def start(calls: int = 1, trace_messages: bool = False, **behaviour: object) -> SippPhone:
        p = SippPhone(
            PhoneBehaviour(**behaviour),  # type: ignore[arg-type]
            workdir=tmp_path / f"phone{len(started)}",
            address=sandbox.env["CALLMFA_PHONE"],
            calls=calls,
            trace_messages=trace_messages,
        )
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
