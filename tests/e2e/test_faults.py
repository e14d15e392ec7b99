"""Faults on the real chain: a killed originator, a restarted Redis, a lost Asterisk, two PBXs.

Each test breaks the sandbox on purpose and leaves it as it found it (one `callmfa serve`,
one Asterisk, the E2E settings).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts import web as http
from ivr.storage.store import EVENTS

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, SECOND_SERVICE, Sandbox, alive, wait_until
from .conftest import PhoneFactory, restart_serve


def _pid(sandbox: Sandbox, name: str) -> int:
    return int((sandbox.directory / "pids" / f"{name}.pid").read_text().split()[0])


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    os.kill(pid, sig)
    wait_until(lambda: not alive(pid), 20, f"pid {pid} to exit")


def _up(sandbox: Sandbox, **env: str) -> None:
    """`sandbox.sh up`: restarts whatever is not running, with the E2E settings."""
    full = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": sandbox.netns,
            "CALLMFA_SANDBOX_DIR": str(sandbox.directory), **env}
    subprocess.run(["bash", str(SANDBOX), "up"], env=full, check=True, capture_output=True,
                   cwd=REPO, timeout=120)


async def _count_events(sandbox: Sandbox, name: str, ids: set[str]) -> int:
    redis = Redis.from_url(sandbox.redis_url)
    try:
        entries = await redis.xrange(EVENTS)
    finally:
        await redis.aclose()
    return sum(1 for _, f in entries if f[b"event"].decode() == name
               and f[b"id"].decode() in ids)


async def _until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s}s")
        await asyncio.sleep(0.05)


async def _submit(client: VerificationClient, numbers: list[str]) -> list[str]:
    return [await client.submit(user=f"user-{n}", phone=n) for n in numbers]


async def _outcomes(client: VerificationClient, ids: list[str], timeout_s: float
                    ) -> list[OutcomeRecord | None]:
    return list(await asyncio.gather(*(client.wait(rid, timeout_s) for rid in ids)))


@pytest.fixture
def restore(sandbox: Sandbox) -> Iterator[None]:
    """Put the sandbox back as the other tests expect it."""
    yield
    for extra in sandbox.directory.glob("pids/asterisk?*.pid"):
        pid = int(extra.read_text().split()[0])
        if alive(pid):
            _kill(pid)
        extra.unlink()
    restart_serve(sandbox)


class ServeProcess:
    """A second `callmfa serve` in the sandbox's namespace (this process is in it)."""

    def __init__(self, sandbox: Sandbox, log: Path, **env: str) -> None:
        self.log = log
        full = {**os.environ, **E2E_SETTINGS, **sandbox.env, **SECOND_SERVICE, **env}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "callmfa"), "serve"], env=full, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_until(lambda: '"service_ready"' in log.read_text() or self.proc.poll() is not None,
                   30, "second callmfa serve")
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.mark.usefixtures("restore")
class TestOriginatorCrash:
    async def test_kill_9_with_30_in_flight_and_30_queued(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """kill -9 of the originator: a new one takes over; 60 requests, 60 outcomes, and
        no number rang twice (INVITEs counted at the phone)."""
        restart_serve(sandbox, CALLMFA_MAX_IN_FLIGHT="30")
        p = phone(calls=60, keys="#", key_delay_ms=4000)
        numbers = [f"+120155502{i:02d}" for i in range(60)]
        ids = await _submit(client, numbers)

        async def thirty_answered() -> bool:
            return await _count_events(sandbox, "answered", set(ids)) >= 30

        await _until(thirty_answered, 30, "30 calls answered")
        _kill(_pid(sandbox, "callmfa"))  # SIGKILL: no clean-up of any kind
        _up(sandbox)  # a new originator (and FastAGI server) takes over

        records = await _outcomes(client, ids, 90)
        p.stop()
        assert all(r is not None for r in records), "every request has an outcome"
        done = [r for r in records if r is not None]
        assert await _count_events(sandbox, "finished", set(ids)) == 60  # one each
        outcomes = Counter(r.outcome for r in done)
        # Calls cut by the crash end as errors; the 30 queued ones are approved.
        assert outcomes[Outcome.APPROVED] >= 30, outcomes
        assert set(outcomes) <= {Outcome.APPROVED, Outcome.ERROR}, outcomes
        assert {r.detail for r in done if r.outcome is Outcome.ERROR} <= {
            "originator_lost", "asterisk_lost", "no_ivr_outcome"}
        invites = p.invites()
        assert set(invites) <= set(numbers)
        assert max(invites.values()) == 1, {n: c for n, c in invites.items() if c > 1}
        assert len(invites) == 60


@pytest.mark.usefixtures("restore")
class TestRedisRestart:
    async def test_redis_restarted_mid_load(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """redis-server restarted during 20 calls: callmfa keeps running, all 20 settle."""
        serve = _pid(sandbox, "callmfa")
        p = phone(calls=20, keys="#", key_delay_ms=3000)
        ids = await _submit(client, [f"+120155503{i:02d}" for i in range(20)])

        async def ten_answered() -> bool:
            return await _count_events(sandbox, "answered", set(ids)) >= 10

        await _until(ten_answered, 30, "10 calls answered")
        _kill(_pid(sandbox, "redis"), signal.SIGTERM)
        _up(sandbox)  # starts redis-server again on its AOF

        records = await _outcomes(client, ids, 60)
        assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * 20
        assert alive(serve), "callmfa serve survived"
        assert p.wait(30) == 0, p.errors()


@pytest.mark.usefixtures("restore")
class TestAsteriskLost:
    async def test_asterisk_killed_mid_call_then_back(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """Asterisk dies mid-call: those calls end error/asterisk_lost; once it is back,
        callmfa logs in again by itself (and counts it in its metrics) and new calls are
        approved."""
        p = phone(calls=5, keys="#", key_delay_ms=5000)
        ids = await _submit(client, [f"+120155504{i:02d}" for i in range(5)])

        async def all_answered() -> bool:
            return await _count_events(sandbox, "answered", set(ids)) >= 5

        await _until(all_answered, 30, "5 calls answered")
        _kill(_pid(sandbox, "asterisk"))
        records = await _outcomes(client, ids, 30)
        assert [(r.outcome, r.detail) if r else None for r in records] == [
            (Outcome.ERROR, "asterisk_lost")] * 5
        p.stop()

        _up(sandbox)

        async def logged_in() -> bool:
            status, body = await http.get("127.0.0.1", 4580, "/healthz", timeout_s=2)
            return status == 200 and json.loads(body)["ok"]

        await _until(logged_in, 30, "callmfa logged in to the restarted Asterisk")
        _, body = await http.get("127.0.0.1", 9573, "/metrics", timeout_s=2)
        [reconnects] = [line for line in body.decode().splitlines()
                        if line.startswith("callmfa_ami_reconnects_total ")]
        assert float(reconnects.split()[1]) >= 1, reconnects
        phone(keys="#")
        record = await client.verify(user="after", phone="+12015550499", timeout_s=30)
        assert record is not None
        assert record.outcome is Outcome.APPROVED


@pytest.mark.usefixtures("restore")
class TestTwoAsterisks:
    async def test_calls_spread_over_two_pbxs_and_move_when_one_stops(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        tmp_path: Path
    ) -> None:
        """Two Asterisks, two originators: 100 requests spread over both and all approved;
        with one PBX stopped, new calls all go to the other and are approved."""
        _kill(_pid(sandbox, "callmfa"), signal.SIGTERM)
        _up(sandbox, CALLMFA_ASTERISK_INSTANCES="2")
        endpoints = "127.0.0.1:5038,127.0.0.1:5039"
        second = ServeProcess(sandbox, tmp_path / "serve-b.log", CALLMFA_ROLES="originator",
                              CALLMFA_CONSUMER="originator-b",
                              CALLMFA_AMI_ENDPOINTS=endpoints)
        try:
            p = phone(calls=100, keys="#", key_delay_ms=3000)
            ids = await _submit(client, [f"+120155505{i:02d}" for i in range(100)])
            records = await _outcomes(client, ids, 90)
            assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * 100
            assert p.wait(30) == 0, p.errors()
            logs = sandbox.directory / "logs"
            first = (logs / "asterisk.log").read_text().count("Called +120155505")
            other = (logs / "asterisk2.log").read_text().count("Called +120155505")
            assert first + other == 100
            assert min(first, other) >= 20, (first, other)

            _kill(_pid(sandbox, "asterisk2"))
            p = phone(calls=10, keys="#", key_delay_ms=3000)
            ids = await _submit(client, [f"+120155506{i:02d}" for i in range(10)])
            records = await _outcomes(client, ids, 60)
            assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * 10
            assert (logs / "asterisk.log").read_text().count("Called +120155506") == 10
        finally:
            second.stop()
