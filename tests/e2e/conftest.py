"""End-to-end fixtures: a client of the sandbox's Redis and the simulated phone."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.storage.keys import AUDIT
from ivr.testing import PhoneBehaviour, SippPhone

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, Sandbox, alive, wait_until


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[VerificationClient]:
    """A sign-in service's client, connected to the sandbox's Redis."""
    async with VerificationClient.from_url(
        sandbox.redis_url, signing_key=sandbox.env["CALLMFA_SIGNING_KEY"]
    ) as c:
        yield c


PhoneFactory = Callable[..., SippPhone]


def serve_pid(sandbox: Sandbox) -> int:
    """The pid of the sandbox's `callmfa serve`."""
    return int((sandbox.directory / "pids" / "callmfa.pid").read_text().split()[0])


def restart_serve(sandbox: Sandbox, **env: str) -> None:
    """Restart the sandbox's `callmfa serve` with these settings over the suite's (an empty
    value unsets one: then serve takes it from its CALLMFA_CONFIG_FILE, or the default)."""
    pid = serve_pid(sandbox)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 30, "callmfa serve to stop")
    full = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": sandbox.netns,
            "CALLMFA_SANDBOX_DIR": str(sandbox.directory), **env}
    full = {k: v for k, v in full.items() if v or k not in env}
    subprocess.run(["bash", str(SANDBOX), "up"], env=full, check=True, capture_output=True,
                   cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def classic(sandbox: Sandbox) -> Iterator[None]:
    """For one module, the sandbox's `callmfa serve` with CALLMFA_AGI_MODE=classic (calls go
    to [callmfa-verify-classic], whose IVR is the classic AGI script); put back after."""
    restart_serve(sandbox, CALLMFA_AGI_MODE="classic")
    try:
        yield
    finally:
        restart_serve(sandbox)


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


async def audit_entries(sandbox: Sandbox) -> list[dict[str, str]]:
    """The security audit stream, oldest first."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        entries = await redis.xrange(AUDIT)
    finally:
        await redis.aclose()
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


async def audit_of(sandbox: Sandbox, rid: str) -> list[dict[str, str]]:
    """The security audit stream's entries for one verification."""
    return [e for e in await audit_entries(sandbox) if e.get("id") == rid]


class AsteriskLog:
    """The sandbox's Asterisk log from the moment this was made: what a test caused."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.path = sandbox.directory / "logs" / "asterisk.log"
        self._offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        """The lines written since."""
        with self.path.open(errors="replace") as f:
            f.seek(self._offset)
            return f.readlines()

    def played(self) -> list[str]:
        """The lines that tell of a sound file played since."""
        return [line for line in self.lines() if "Playing '" in line]


async def redis_dump(sandbox: Sandbox) -> bytes:
    """Every key and value in the sandbox's Redis, as one blob."""
    redis = Redis.from_url(sandbox.redis_url)
    try:
        dump = []
        async for key in redis.scan_iter():
            kind = (await redis.type(key)).decode()
            if kind == "string":
                dump.append(await redis.get(key))
            elif kind == "hash":
                dump.append(repr(await redis.hgetall(key)).encode())
            elif kind == "stream":
                dump.append(repr(await redis.xrange(key)).encode())
            dump.append(key)
    finally:
        await redis.aclose()
    return b"\n".join(d for d in dump if d)
