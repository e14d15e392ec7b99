"""Issue 12 hardening on the real chain: a bounded request queue, a capped HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.settings import Settings
from ivr.storage.store import REQUESTS

from ..conftest import E2E_SETTINGS, Sandbox
from .conftest import PhoneFactory

VERIFICATIONS = 1000
# The sign-in side keeps at most this many requests without an outcome (as a sign-in
# service with that many people signing in at once would).
WINDOW = 100
MAX_IN_FLIGHT = int(E2E_SETTINGS.get("CALLMFA_MAX_IN_FLIGHT", Settings().max_in_flight))


class TestBoundedQueue:
    async def test_a_thousand_verifications_leave_nothing_in_the_queue(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """1,000 real calls (the phone answers 486 Busy), XLEN sampled all along.

        Bound: a request leaves callmfa:requests when it is settled, so XLEN never exceeds
        the requests waiting (at most WINDOW without an outcome) plus those whose outcome
        is stored and whose ack is on its way (at most max_in_flight): WINDOW +
        max_in_flight. At the end XLEN is 0. Without the delete it would be 1,000.
        """
        p = phone(calls=VERIFICATIONS, reject_with=486)
        redis = Redis.from_url(sandbox.redis_url)
        base = await redis.xlen(REQUESTS)
        window = asyncio.Semaphore(WINDOW)
        samples: list[int] = []

        async def one(i: int) -> Outcome | None:
            async with window:
                rid = await client.submit(user=f"load{i}", phone="+12015550100")
                record = await client.wait(rid, 60)
                return record.outcome if record else None

        async def sample() -> None:
            while True:
                samples.append(await redis.xlen(REQUESTS))
                await asyncio.sleep(0.05)  # a sampling period, not a wait for a condition

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(*(one(i) for i in range(VERIFICATIONS)))
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        took = time.monotonic() - started
        for _ in range(500):  # acks follow the outcomes by a moment: up to 10 s
            if (left := await redis.xlen(REQUESTS)) == base:
                break
            await asyncio.sleep(0.02)
        await redis.aclose()
        p.stop()

        print(f"\n{VERIFICATIONS} verifications in {took:.1f}s; XLEN callmfa:requests: "
              f"{len(samples)} samples, max {max(samples)}, at the end {left}")
        assert Counter(outcomes) == {Outcome.BUSY: VERIFICATIONS}
        assert base == 0
        assert max(samples) <= WINDOW + MAX_IN_FLIGHT, max(samples)
        assert left == 0


HEALTH_PORT = 4580  # the sandbox's `callmfa serve`: CALLMFA_HEALTH_PORT's default
METRICS_PORT = int(E2E_SETTINGS["CALLMFA_METRICS_PORT"])


async def _ask(port: int, path: str, timeout_s: float = 2.0) -> bytes:
    """One GET; what came back before the server closed (b"" if it closed at once)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(timeout_s):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def _refused_total(metrics: bytes) -> float:
    for line in metrics.decode().splitlines():
        if line.startswith("callmfa_http_connections_refused_total "):
            return float(line.split()[1])
    raise AssertionError("callmfa_http_connections_refused_total is not exported")


class TestHttpConnectionCap:
    async def test_a_connection_flood_is_refused_and_healthz_answers_after(
        self, sandbox: Sandbox
    ) -> None:
        """The sandbox's serve: 64 idle connections (CALLMFA_HTTP_MAX_CONNECTIONS' default)
        fill /healthz; 16 more are each refused in well under a second and counted (on
        /metrics, a server of its own, which still answers), and the refusals are logged;
        once the idle ones close, /healthz answers 200."""
        cap = Settings().http_max_connections
        log = sandbox.directory / "logs" / "callmfa.log"
        logged = log.read_text().count('"http_connection_refused"')
        before = _refused_total(await _ask(METRICS_PORT, "/metrics"))
        idle = [await asyncio.open_connection("127.0.0.1", HEALTH_PORT) for _ in range(cap)]
        try:
            loop = asyncio.get_running_loop()
            for _ in range(16):
                started = loop.time()
                answer = await _ask(HEALTH_PORT, "/healthz")
                assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:100]
                assert loop.time() - started < 0.5
            assert _refused_total(await _ask(METRICS_PORT, "/metrics")) == before + 16
            assert log.read_text().count('"http_connection_refused"') == logged + 16
        finally:
            for _, writer in idle:
                writer.close()
        for _ in range(250):  # the server sees the idle ones close: up to 5 s
            if (await _ask(HEALTH_PORT, "/healthz")).startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("/healthz did not answer 200 after the flood")
