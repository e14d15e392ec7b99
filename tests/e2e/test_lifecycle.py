"""The sandbox's and the service's life cycle: idempotent up/down, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.storage.store import GROUP, REQUESTS

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, Sandbox, alive, wait_until
from .conftest import PhoneFactory


def _pid(directory: Path, name: str) -> int:
    return int((directory / "pids" / f"{name}.pid").read_text().split()[0])


class TestSandboxScript:
    def test_up_twice_then_down_twice_leaves_nothing(
        self, sandbox: Sandbox, tmp_path: Path
    ) -> None:
        """up is idempotent (same pids), down stops exactly those and removes the netns."""
        netns = sandbox.netns + "-lc"  # per checkout, like the test sandbox's own
        env = {**os.environ, "CALLMFA_NETNS": netns,
               "CALLMFA_SANDBOX_DIR": str(tmp_path / "sb"), "CALLMFA_SANDBOX_SERVE": "0"}

        def run(*args: str) -> None:
            subprocess.run(["bash", str(SANDBOX), *args], env=env, check=True,
                           capture_output=True, cwd=REPO)

        run("up")
        first = {n: _pid(tmp_path / "sb", n) for n in ("redis", "asterisk")}
        run("up")
        assert {n: _pid(tmp_path / "sb", n) for n in ("redis", "asterisk")} == first
        run("down")
        run("down")
        assert not any(alive(pid) for pid in first.values())
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert netns not in listed.split()


class TestGracefulShutdown:
    async def test_sigterm_finishes_the_call_in_flight_and_takes_no_new_request(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """SIGTERM mid-call: that call still ends approved; a later request stays queued."""
        p = phone(keys="#", key_delay_ms=2500)
        pid = _pid(sandbox.directory, "callmfa")
        rid = await client.submit(user="alice", phone="+12015550100")
        redis = Redis.from_url(sandbox.redis_url)
        try:
            async def answered() -> bool:
                events = await redis.xrange("callmfa:events", count=10_000)
                return any(f[b"id"].decode() == rid and f[b"event"] == b"answered"
                           for _, f in events)

            for _ in range(500):
                if await answered():
                    break
                await asyncio.sleep(0.02)
            os.kill(pid, signal.SIGTERM)
            record = await client.wait(rid, 30)
            assert record is not None
            assert record.outcome is Outcome.APPROVED
            assert p.wait(20) == 0, p.errors()
            wait_until(lambda: not alive(pid), 20, "callmfa serve to exit")

            # Already expired: when the service is back it settles it without a call.
            late = str(uuid.uuid4())
            await redis.xadd(REQUESTS, {"request": json.dumps(
                {"id": late, "user": "bob", "phone": "+12015550100",
                 "expires_at": "2020-01-01T00:00:00Z"})})
            groups = await redis.xinfo_groups(REQUESTS)
            assert next(g for g in groups if g["name"] == GROUP.encode())["lag"] >= 1
            assert await client.wait(late, 0.5) is None
            log = (sandbox.directory / "logs" / "callmfa.log").read_text()
            assert '"service_stopped"' in log
        finally:
            await redis.aclose()
            # Bring the service back for the other tests; it then serves the late request.
            env = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": sandbox.netns,
                   "CALLMFA_SANDBOX_DIR": str(sandbox.directory)}
            up = await asyncio.create_subprocess_exec(
                "bash", str(SANDBOX), "up", env=env, cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            assert await up.wait() == 0
        restarted = await client.wait(late, 10)
        assert restarted is not None
        assert restarted.outcome is Outcome.EXPIRED
