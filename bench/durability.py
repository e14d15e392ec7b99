"""What ``CALLMFA_REDIS_WAIT_REPLICAS=1`` costs: the three durable writes of a verification
(the request's XADD, the call claim, the outcome) with and without ``WAIT 1``.

    .venv/bin/python -m bench.durability [--verifications 2000] [--concurrency 50]

Starts a primary and a replica (redis-server on free loopback ports, no persistence, so
that the figure is replication's alone), then runs the same writes through
:class:`ivr.storage.store.Store` and :class:`~ivr.storage.store.Durability` as serve and the
client do. Prints the latency of each write (median, p95, p99) and the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import Redis

from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.storage.keys import REQUESTS
from ivr.storage.store import Durability, Store, connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _pair() -> Iterator[int]:
    """A primary and its replica; yields the primary's port."""
    primary, replica = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as d:
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d]
        procs = [subprocess.Popen(["redis-server", "--port", str(primary), *common],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(replica), "--replicaof", "127.0.0.1", str(primary),
             "--dbfilename", "replica.rdb", *common],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out = subprocess.run(["redis-cli", "-p", str(replica), "info", "replication"],
                                     capture_output=True, text=True, check=False).stdout
                if _ping(primary) and "master_link_status:up" in out:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("the replica did not link")
            yield primary
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(port: int, replicas: int, verifications: int, concurrency: int
               ) -> tuple[dict[str, list[float]], float]:
    redis: Redis = connect(f"redis://127.0.0.1:{port}/0", max_connections=concurrency + 5,
                           timeout_s=5)
    durability = Durability(replicas, 500)
    store = Store(redis, result_ttl_s=60, events_maxlen=10_000, durability=durability)
    times: dict[str, list[float]] = {"request": [], "call_claim": [], "outcome": []}
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        rid = str(uuid.uuid4())
        async with gate:
            t = time.perf_counter()
            await durability.command(redis, "request", "XADD", REQUESTS, "*", "request", "{}")
            times["request"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.claim_call(rid, {"token_hash": rid, "user": "bench"})
            times["call_claim"].append(time.perf_counter() - t)
            now = time.time()
            t = time.perf_counter()
            await store.store_outcome(OutcomeRecord(
                id=rid, user="bench", outcome=Outcome.APPROVED, detail=None,
                requested_at=now, finished_at=now))
            times["outcome"].append(time.perf_counter() - t)

    try:
        await redis.flushdb()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(verifications)))
        elapsed = time.perf_counter() - started
    finally:
        await redis.aclose()
    return times, verifications / elapsed


def main() -> None:
    """Run both variants (twice each, interleaved) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verifications", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print("| variant | write | median ms | p95 ms | p99 ms | verifications/s |")
    print("|---|---|---|---|---|---|")
    with _pair() as port:
        for _round in range(2):
            for replicas in (0, 1):
                times, rate = asyncio.run(_run(port, replicas, args.verifications,
                                               args.concurrency))
                name = "WAIT 1" if replicas else "no WAIT"
                for write, values in times.items():
                    ms = [v * 1000 for v in values]
                    print(f"| {name} | {write} | {statistics.median(ms):.3f} | "
                          f"{_pct(ms, 0.95):.3f} | {_pct(ms, 0.99):.3f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
