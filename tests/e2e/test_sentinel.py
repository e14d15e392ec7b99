"""Redis Sentinel on the real chain (issue 17): a failover loses no verification.

This module runs its own sandbox (CALLMFA_SANDBOX_REDIS=sentinel, namespace ``cms-...``):
a primary (6379), a replica (6380) and three redis-sentinel, with ACL users and passwords
everywhere, and `callmfa serve` finding the primary through the Sentinels with
CALLMFA_REDIS_WAIT_REPLICAS=1. The tests run in order and each leaves a primary and a
replica behind (which node is which changes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.fronts import web as http
from ivr.ops import doctor
from ivr.settings import Settings
from ivr.storage.store import EVENTS, connect_for, result_key
from ivr.testing import PhoneBehaviour, SippPhone

from ..conftest import E2E_SETTINGS, REPO, SANDBOX, Sandbox, alive, sandbox_up, wait_until

# CALLMFA_TEST_REDIS_SERVER=valkey runs the same tests on valkey-server and valkey-sentinel
# (from the Debian sid root: Debian 12 has no valkey).
SERVER = os.environ.get("CALLMFA_TEST_REDIS_SERVER", "redis")
NETNS = ("cms-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324 - a name
         + ("v" if SERVER == "valkey" else ""))
DIRECTORY = REPO / (".sandbox-sentinel" + ("-valkey" if SERVER == "valkey" else ""))
NODES = {6379: "redis", 6380: "redis2"}  # port: the pid file's name
SERVICE = "callmfa"
# A failover takes Sentinel's down-after-milliseconds (1 s here) and about a second more.
FAILOVER_S = 30

def _env() -> dict[str, str]:
    return {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": NETNS,
            "CALLMFA_SANDBOX_DIR": str(DIRECTORY), "CALLMFA_SANDBOX_REDIS": "sentinel",
            "CALLMFA_SANDBOX_REDIS_SERVER": SERVER}


def _up() -> None:
    """`sandbox.sh up`: starts again whatever is not running (a killed node, serve)."""
    subprocess.run(["bash", str(SANDBOX), "up"], env=_env(), check=True, capture_output=True,
                   cwd=REPO, timeout=180)


@pytest.fixture(scope="module")
def sentinel_sandbox() -> Iterator[Sandbox]:
    """A sandbox of its own in Sentinel mode; this thread joins its namespace meanwhile
    (and goes back to the one it was in: the suite's sandbox, or the host's)."""
    root = Path(os.environ.get("CALLMFA_ASTERISK_ROOT", "/var/tmp/callmfa/asterisk-root"))  # noqa: S108 - the sandbox's own default
    with sandbox_up(_env(), fresh=(root / "var" / "lib" / f"callmfa-{NETNS}-valkey",)) as up:
        yield up


@pytest.fixture(scope="module")
def settings(sentinel_sandbox: Sandbox) -> Settings:
    """What callmfa serve runs with: the Sentinels, their ACL user, WAIT 1."""
    return Settings.from_env(sentinel_sandbox.env)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A Sentinel-managed client (whatever node is the primary now), for assertions."""
    client = connect_for(settings, max_connections=8)
    yield client
    await client.aclose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[VerificationClient]:
    """The sign-in service's client, configured as the service (Sentinels, WAIT 1)."""
    async with VerificationClient.from_settings(settings) as c:
        yield c


PhoneFactory = Callable[..., SippPhone]


@pytest.fixture
def phone(sentinel_sandbox: Sandbox, tmp_path: Path) -> Iterator[PhoneFactory]:
    """The user's phones (one sipp): say "Hello.", then key what they are told."""
    started: list[SippPhone] = []

    def start(calls: int, **behaviour: Any) -> SippPhone:
        behaviour.setdefault("speech", "Hello.")
        p = SippPhone(PhoneBehaviour(**behaviour), workdir=tmp_path / f"phone{len(started)}",
                      address=sentinel_sandbox.env["CALLMFA_PHONE"], calls=calls)
        p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


async def _sentinel_view(settings: Settings) -> tuple[int, int]:
    """(the primary's port, how many Sentinels agree on it), asked of each Sentinel."""
    ports: Counter[int] = Counter()
    for host, port in settings.sentinel_addresses:
        s = Redis(host=host, port=port, username=settings.redis_sentinel_user,
                  password=settings.redis_sentinel_password, socket_timeout=2)
        try:
            reply: Any = await s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            ports[int(reply[1])] += 1
        except OSError:
            pass
        finally:
            await s.aclose()
    port, agreed = ports.most_common(1)[0]
    return port, agreed


async def _primary(settings: Settings) -> int:
    port, agreed = await _sentinel_view(settings)
    assert agreed == 3, "the three Sentinels agree on the primary"
    return port


def _pid(sandbox: Sandbox, name: str) -> int:
    return int((sandbox.directory / "pids" / f"{name}.pid").read_text().split()[0])


async def _until(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s}s")
        await asyncio.sleep(0.05)


async def _events(redis: Redis, name: str, ids: set[str]) -> Counter[str]:
    """How many ``name`` events each of ``ids`` has on the primary."""
    entries: Any = await redis.xrange(EVENTS)
    return Counter(f[b"id"].decode() for _, f in entries
                   if f[b"event"].decode() == name and f[b"id"].decode() in ids)


async def _failover_done(settings: Settings, old: int) -> float:
    """Wait until every Sentinel names a new primary that takes writes; when that was."""
    async def switched() -> bool:
        port, agreed = await _sentinel_view(settings)
        if port == old or agreed < 3:
            return False
        node = Redis(host="127.0.0.1", port=port, username="callmfa",
                     password=_node_password(settings), socket_timeout=2)
        try:
            role: Any = await node.execute_command("ROLE")
            return bool(role[0] == b"master")
        finally:
            await node.aclose()

    await _until(switched, FAILOVER_S, "the failover")
    return time.time()


def _node_password(settings: Settings) -> str:
    return settings.redis_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


async def _replica_of(settings: Settings, port: int, primary: int) -> bool:
    node = Redis(host="127.0.0.1", port=port, username="callmfa",
                 password=_node_password(settings), socket_timeout=2)
    try:
        info: Any = await node.info("replication")
    except OSError:
        return False
    finally:
        await node.aclose()
    return bool(info.get("role") == "slave" and info.get("master_port") == primary
                and info.get("master_link_status") == "up")


async def _healthz(sandbox: Sandbox) -> dict[str, Any]:
    settings = Settings.from_env(sandbox.env)
    _, body = await http.get("127.0.0.1", settings.health_port, "/healthz", timeout_s=5)
    status: dict[str, Any] = json.loads(body)
    return status


async def _health_until(sandbox: Sandbox, stop: asyncio.Event) -> list[dict[str, Any]]:
    """/healthz, again and again until ``stop``: what it said meanwhile."""
    seen = []
    while not stop.is_set():
        seen.append(await _healthz(sandbox))
    return seen


async def _submit(client: VerificationClient, prefix: str, count: int) -> list[str]:
    return [await client.submit(user=f"user-{prefix}{i:02d}", phone=f"{prefix}{i:02d}")
            for i in range(count)]


async def _outcomes(client: VerificationClient, ids: list[str], timeout_s: float
                    ) -> list[OutcomeRecord | None]:
    return list(await asyncio.gather(*(client.wait(rid, timeout_s) for rid in ids)))


async def _approved_now(client: VerificationClient, phone: PhoneFactory, prefix: str,
                        count: int) -> None:
    p = phone(calls=count, keys="#", key_delay_ms=500)
    try:
        ids = await _submit(client, prefix, count)
        records = await _outcomes(client, ids, 60)
        assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * count
    finally:
        p.stop()


class TestSentinel:
    async def test_check_shows_primary_replicas_and_quorum(self, settings: Settings) -> None:
        """`callmfa check`'s Redis part names the primary, its replica and the quorum."""
        results = [r async for r in doctor.check_redis(settings)]
        sentinel = [r for r in results if r.name == "redis-sentinel"]
        assert sentinel, results
        assert sentinel[0].status is doctor.Status.OK, sentinel
        text = sentinel[0].message
        assert "primary 127.0.0.1:6379" in text, text
        assert "replicas 127.0.0.1:6380 (link ok)" in text, text
        assert "3 usable Sentinels of 3, quorum 2: OK" in text, text

    async def test_kill_9_of_the_primary_with_60_in_flight(
        self, sentinel_sandbox: Sandbox, settings: Settings, client: VerificationClient,
        redis: Redis, phone: PhoneFactory,
    ) -> None:
        """kill -9 of the primary as the first of 60 answered phones keys #: Sentinel
        promotes the replica; every verification ends with one outcome, approved (or an
        honest error for a # keyed while no primary existed), no phone rang twice; the
        same client and serve go on: new requests are approved; the old primary comes back
        as a replica and nothing changes for callmfa."""
        serve = _pid(sentinel_sandbox, "callmfa")
        old = await _primary(settings)
        p = phone(calls=60, keys="#", key_delay_ms=2500)
        ids = await _submit(client, "+120155505", 60)
        ids_set = set(ids)

        async def all_answered() -> bool:
            return sum((await _events(redis, "answered", ids_set)).values()) >= 60

        await _until(all_answered, 60, "60 calls answered")

        async def first_key() -> bool:
            return bool(await _events(redis, "input", ids_set))

        await _until(first_key, 30, "the first # keyed")
        killed = _pid(sentinel_sandbox, NODES[old])
        os.kill(killed, signal.SIGKILL)
        killed_at = time.time()
        switched = asyncio.Event()
        polling = asyncio.create_task(_health_until(sentinel_sandbox, switched))
        try:
            done_at = await _failover_done(settings, old)
        finally:
            switched.set()
            during = await polling
        new = await _primary(settings)
        failing = [h for h in during if h["redis_failover"]]
        assert failing, during  # /healthz told of the failover while it went on
        assert not any(h["ok"] for h in failing), failing
        health = failing[0]

        records = await _outcomes(client, ids, 90)
        assert all(r is not None for r in records), "every verification has an outcome"
        done = [r for r in records if r is not None]
        finished = await _events(redis, "finished", ids_set)
        assert set(finished) == ids_set, finished
        assert max(finished.values()) == 1, finished
        outcomes = Counter(r.outcome for r in done)
        assert set(outcomes) <= {Outcome.APPROVED, Outcome.ERROR}, outcomes
        for r in done:
            if r.outcome is Outcome.ERROR:
                assert r.detail in {"no_ivr_outcome", "originator_lost", "redis_unavailable"}, r
            elif r.input_at is not None and r.input_at > done_at:
                assert r.outcome is Outcome.APPROVED
        assert outcomes[Outcome.APPROVED] >= 50, outcomes
        invites = p.invites()
        assert len(invites) == 60, invites
        assert max(invites.values()) == 1, invites
        p.stop()  # the next phones bind the same address: this one must not answer for them
        assert _pid(sentinel_sandbox, "callmfa") == serve
        assert alive(serve)
        print(f"\nkill -9 -> every Sentinel names {new}: {done_at - killed_at:.2f} s; "
              f"outcomes {dict(outcomes)}; /healthz during the switch: {health}")

        # New requests after the failover, through the same client and serve.
        await _approved_now(client, phone, "+120155506", 5)

        # The old primary returns: a replica of the new one; callmfa does not notice.
        _up()
        await _until(lambda: _replica_of(settings, old, new), 30, "the old primary as replica")
        assert await _primary(settings) == new
        await _approved_now(client, phone, "+120155507", 5)
        assert _pid(sentinel_sandbox, "callmfa") == serve
        health = await _healthz(sentinel_sandbox)
        assert health["ok"], health
        assert health["redis_failover"] is False, health

    async def test_client_library_follows_a_failover_while_waiting(
        self, sentinel_sandbox: Sandbox, settings: Settings, client: VerificationClient,
        phone: PhoneFactory,
    ) -> None:
        """A client waiting for an outcome when the primary dies gets it from the new
        primary, and submits the next request there, without being restarted."""
        old = await _primary(settings)
        p = phone(calls=3, keys="#", key_delay_ms=6000)
        ids = await _submit(client, "+120155508", 3)
        waiting = asyncio.gather(*(client.wait(rid, 60) for rid in ids))
        await asyncio.sleep(0)  # the waits register before the kill
        killed = _pid(sentinel_sandbox, NODES[old])
        os.kill(killed, signal.SIGKILL)
        await _failover_done(settings, old)
        new = await _primary(settings)
        records = await waiting
        assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * 3
        p.stop()
        await _approved_now(client, phone, "+120155509", 2)
        _up()
        await _until(lambda: _replica_of(settings, old, new), 30, "the old primary as replica")

    async def test_an_isolated_old_primary_makes_no_second_outcome(
        self, sentinel_sandbox: Sandbox, settings: Settings, client: VerificationClient,
        redis: Redis, phone: PhoneFactory,
    ) -> None:
        """SIGSTOP of the primary with 10 calls answered: Sentinel promotes the replica;
        the phones key # after the switch; then the old primary resumes (and runs what was
        sent to it meanwhile) and is made a replica: one outcome per id, all approved."""
        old = await _primary(settings)
        # A command sent to the frozen primary waits out CALLMFA_CONNECT_TIMEOUT_S (5 s)
        # before its retry goes to the new primary: the phones key # after that.
        p = phone(calls=10, keys="#", key_delay_ms=9000)
        ids = await _submit(client, "+120155510", 10)
        ids_set = set(ids)

        async def all_answered() -> bool:
            return sum((await _events(redis, "answered", ids_set)).values()) >= 10

        await _until(all_answered, 60, "10 calls answered")
        stopped = _pid(sentinel_sandbox, NODES[old])
        os.kill(stopped, signal.SIGSTOP)
        try:
            new_at = await _failover_done(settings, old)
            records = await _outcomes(client, ids, 60)
        finally:
            os.kill(stopped, signal.SIGCONT)
        new = await _primary(settings)
        await _until(lambda: _replica_of(settings, old, new), 30, "the old primary as replica")
        assert [r.outcome if r else None for r in records] == [Outcome.APPROVED] * 10
        assert all(r.input_at and r.input_at > new_at for r in records if r)
        finished = await _events(redis, "finished", ids_set)
        assert set(finished) == ids_set, finished
        assert max(finished.values()) == 1, finished
        for rid, record in zip(ids, records, strict=True):
            stored = OutcomeRecord.from_json(await redis.get(result_key(rid)))
            assert record is not None
            assert stored.outcome is record.outcome
        invites = p.invites()
        assert len(invites) == 10, invites
        assert max(invites.values()) == 1, invites
        p.stop()

    async def test_the_cli_and_the_classic_script_find_the_primary(
        self, sentinel_sandbox: Sandbox, settings: Settings, phone: PhoneFactory,
    ) -> None:
        """After the failovers above the primary is 6380, not CALLMFA_REDIS_URL's 6379:
        `callmfa verify` and, with CALLMFA_AGI_MODE=classic, the classic AGI script (sync
        redis-py in the sid root) reach it through the Sentinels: approved."""
        assert await _primary(settings) != 6379, "the failovers above moved the primary"
        env = {**os.environ, **E2E_SETTINGS, **sentinel_sandbox.env}
        _restart_serve(sentinel_sandbox, CALLMFA_AGI_MODE="classic")
        try:
            p = phone(calls=1, keys="#", key_delay_ms=1000)
            cli = await asyncio.create_subprocess_exec(
                str(REPO / ".venv" / "bin" / "callmfa"), "verify", "--user", "cli-user",
                "--phone", "+12015550511", "--timeout", "60", "--json",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(cli.communicate(), 90)
            assert cli.returncode == 0, (out + err).decode()[-3000:]
            rid = json.loads(out.decode().strip().splitlines()[-1])["id"]
            p.stop()
            log = (sentinel_sandbox.directory / "logs" / "asterisk.log").read_text(
                errors="replace")
            assert f"callmfa: {rid}: outcome approved" in log  # the classic script stored it
        finally:
            _restart_serve(sentinel_sandbox)


def _restart_serve(sandbox: Sandbox, **env: str) -> None:
    serve = _pid(sandbox, "callmfa")
    os.kill(serve, signal.SIGTERM)
    wait_until(lambda: not alive(serve), 30, "callmfa serve to stop")
    subprocess.run(["bash", str(SANDBOX), "up"], env={**_env(), **env}, check=True,
                   capture_output=True, cwd=REPO, timeout=180)
