"""``python -m bench.radius``: the latency the RADIUS front adds on top of the Redis contract.

A real redis-server on a free port, a fake originator that answers every request at once
(approved, signed), and N verifications one after the other, two ways:

- the Redis contract alone: ``VerificationClient`` submit, then wait for the outcome;
- through RADIUS: an Access-Request to the front (the real listener and handler, with the
  local user directory in the same Redis), then its Access-Accept, verified.

It prints the percentiles of both and of their difference: what RADIUS adds (target: p99 of
5 ms or less). No Asterisk or phone: a call would only add the same time to both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import tempfile
import time

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts.radius.clients import parse_clients
from ivr.fronts.radius.front import RadiusFront
from ivr.fronts.radius.metrics import RadiusMetrics
from ivr.fronts.radius.server import RadiusServer
from ivr.log import configure
from ivr.settings import Settings
from ivr.storage.directory import LocalDirectory, user_key
from ivr.storage.store import Store
from ivr.tasks import cancel_and_wait
from ivr.testing import access_request

KEY = "bench-signing-key-" + "x" * 32
SECRET = b"bench-radius-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _originator(redis: Redis, store: Store) -> None:
    """Answer every request on callmfa:requests at once: approved."""
    last = "$"
    while True:
        reply = await redis.xread({"callmfa:requests": last}, block=1000, count=100)
        for _stream, items in reply or ():
            for entry_id, fields in items:
                last = entry_id.decode()
                request = json.loads(fields[b"request"])
                now = time.time()
                enqueued = int(last.split("-")[0]) / 1000
                await store.store_outcome(OutcomeRecord(
                    id=request["id"], user=request["user"], outcome=Outcome.APPROVED,
                    requested_at=enqueued, finished_at=now))


CPU: dict[str, float] = {"contract": 0.0, "radius": 0.0}  # process CPU seconds, per way


async def _run(n: int, url: str) -> tuple[list[float], list[float]]:
    redis = Redis.from_url(url)
    store = Store(redis, result_ttl_s=60, events_maxlen=1000, signing_key=KEY.encode())
    settings = Settings(signing_key=KEY, redis_url=url)
    originator = asyncio.create_task(_originator(redis, store))
    contract: list[float] = []
    radius: list[float] = []
    async with VerificationClient.from_url(url, signing_key=KEY) as client:
        front = RadiusFront(settings, parse_clients("127.0.0.1 " + SECRET.decode() + "\n"),
                            client, LocalDirectory(redis), RadiusMetrics(CollectorRegistry()))
        server = RadiusServer(front, "127.0.0.1", 0)
        await server.start()
        loop = asyncio.get_running_loop()
        nas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nas.setblocking(False)
        await loop.sock_connect(nas, ("127.0.0.1", server.port))
        try:
            for i in range(n + n // 10):  # the first tenth warms up and is not counted
                user = f"bench-{i}"
                await redis.hset(user_key(user), mapping={"phone": "+12015550100"})
                started, cpu = time.perf_counter(), time.process_time()
                record = await client.verify(user=user, phone="+12015550100", timeout_s=5)
                took_contract = time.perf_counter() - started
                cpu_contract = time.process_time() - cpu
                assert record is not None
                assert record.outcome is Outcome.APPROVED
                raw, packet = access_request(SECRET, user)
                started, cpu = time.perf_counter(), time.process_time()
                await loop.sock_sendall(nas, raw)
                data = await asyncio.wait_for(loop.sock_recv(nas, 4096), 5)
                took_radius = time.perf_counter() - started
                cpu_radius = time.process_time() - cpu
                reply = packet.CreateReply(packet=data)
                assert packet.VerifyReply(reply, data, enforce_ma=True)
                assert reply.code == 2  # Access-Accept
                if i >= n // 10:
                    contract.append(took_contract)
                    radius.append(took_radius)
                    CPU["contract"] += cpu_contract
                    CPU["radius"] += cpu_radius
        finally:
            nas.close()
            await server.close(1)
            await cancel_and_wait(originator)
            await redis.aclose()
    return contract, radius


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    """Run the benchmark; exit 1 when the front adds more than 5 ms at p99."""
    parser = argparse.ArgumentParser(prog="python -m bench.radius", description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="verifications each way")
    args = parser.parse_args()
    configure("warning")
    with tempfile.TemporaryDirectory() as workdir:
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.02)
            contract, radius = asyncio.run(_run(args.n, f"redis://127.0.0.1:{port}/0"))
        finally:
            proc.terminate()
            proc.wait(10)
    added = [r - c for r, c in zip(radius, contract, strict=True)]
    print(f"{len(contract)} verifications each way (a fake originator answers at once)")
    for name, values in (("Redis contract", contract), ("through RADIUS", radius)):
        print(f"  {name:15} p50 {_pct(values, 0.5):6.2f} ms  p99 {_pct(values, 0.99):6.2f} ms")
    p99_added = _pct(radius, 0.99) - _pct(contract, 0.99)
    print(f"  RADIUS adds     p50 {statistics.median(added) * 1000:6.2f} ms  "
          f"p99 {p99_added:6.2f} ms (p99 of RADIUS minus p99 of the contract; target <= 5)")
    cpu_added = (CPU["radius"] - CPU["contract"]) / len(contract) * 1000
    print(f"  CPU             {CPU['contract'] / len(contract) * 1000:.2f} ms per verification "
          f"through the contract, {CPU['radius'] / len(radius) * 1000:.2f} ms through RADIUS: "
          f"the front adds {cpu_added:.2f} ms (this process: client, front and fake originator)")
    print(f"  per pair        p99 {_pct(added, 0.99):6.2f} ms (the worst 1% of the differences "
          "of one run each way: scheduling noise included)")
    return 0 if p99_added <= 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
