"""Fixtures shared by every test layer: a real redis-server, and the real sandbox."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parent.parent
SANDBOX = REPO / "docker" / "sandbox" / "sandbox.sh"
CLONE_NEWNET = 0x40000000


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (a callable) until true; never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s}s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def reply_of(port: int, command: bytes = b"") -> bytes | None:
    """What a server on 127.0.0.1:``port`` answers to ``command`` (b"" for a bare connect:
    the answer is b""); None if nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if not command:
                return b""
            s.sendall(command)
            return s.recv(4096)
    except OSError:
        return None


def start_redis(
    workdir: Path, *args: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], RedisServer]:
    """redis-server on a free port (or ``port``, to restart one), with ``args`` added
    (``--requirepass``, ...)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: run 'make deps' (apt-get install redis-server)")
    port = port or free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: (reply_of(port, b"PING\r\n") or b"").startswith((b"+PONG", b"-NOAUTH")),
               10, "redis-server")
    return proc, RedisServer(port)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for one test module."""
    proc, server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client on an emptied database."""
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


# --- the sandbox: real Asterisk, redis-server and `callmfa serve` in a network namespace ---

@dataclass(frozen=True)
class Sandbox:
    netns: str
    directory: Path
    env: dict[str, str]
    host_netns_fd: int = -1  # the namespace the tests started in, for tools that need a network

    @property
    def redis_url(self) -> str:
        return self.env["CALLMFA_REDIS_URL"]

    @property
    def ami_secret(self) -> str:
        """The sandbox's AMI secret (from its secret file)."""
        return Path(self.env["CALLMFA_AMI_SECRET_FILE"]).read_text().strip()

    def asterisk(self, command: str) -> str:
        """Run an Asterisk CLI command (as `asterisk -rx`)."""
        root = self.env["CALLMFA_ASTERISK_ROOT"]
        out = subprocess.run(
            ["chroot", root, "/usr/sbin/asterisk", "-C", self.env["CALLMFA_ASTERISK_CONF"],
             "-rx", command],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return out.stdout


# What the end-to-end tests run `callmfa serve` with: short timeouts keep the suite fast.
E2E_SETTINGS = {
    "CALLMFA_INPUT_TIMEOUT_S": "1.5",
    "CALLMFA_MAX_ATTEMPTS": "2",
    "CALLMFA_RING_TIMEOUT_S": "5",
    "CALLMFA_OUTCOME_GRACE_S": "2",
    "CALLMFA_SHUTDOWN_GRACE_S": "5",
    "CALLMFA_MAX_CALL_S": "30",
    "CALLMFA_LEASE_S": "2",
    "CALLMFA_LOG_LEVEL": "debug",
    "CALLMFA_PIN_LOCKOUT_AFTER": "2",
    "CALLMFA_METRICS_PORT": "9573",
    # The suite calls the same user and number back to back: no cooldowns or hourly caps
    # here (tests/e2e/test_security.py runs its own service with them on).
    "CALLMFA_THROTTLE_USER_COOLDOWN_S": "0",
    "CALLMFA_THROTTLE_NUMBER_COOLDOWN_S": "0",
    "CALLMFA_THROTTLE_USER_PER_HOUR": "0",
    "CALLMFA_THROTTLE_NUMBER_PER_HOUR": "0",
    "CALLMFA_THROTTLE_GLOBAL_PER_HOUR": "0",
    # ... and a 0# (test_zero_pound_reports_fraud) is audited without blocking 'alice'.
    "CALLMFA_FRAUD_BLOCK_S": "0",
}

# A second `callmfa serve` beside the sandbox's own: its HTTP endpoints would clash.
SECOND_SERVICE = {"CALLMFA_HEALTH_PORT": "0", "CALLMFA_METRICS_PORT": "0",
                  "CALLMFA_API_PORT": "0"}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie has exited (this machine's init reaps orphans late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The whole system, up once per session; the test process joins its namespace.

    Joining (setns) puts this thread's new sockets and child processes (sipp) on the
    namespace's loopback, where Redis, AMI, SIP and FastAGI listen.
    """
    # One namespace per checkout, so that two clones can run their suites side by side; and
    # one per pytest-xdist worker (`make test` runs two), each with its own sandbox.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    suffix = f"-{worker}" if worker else ""
    default = "cmt-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324
    netns = os.environ.get("CALLMFA_TEST_NETNS", default) + suffix
    directory = REPO / f".sandbox-test{suffix}"
    env = {**os.environ, **E2E_SETTINGS, "CALLMFA_NETNS": netns,
           "CALLMFA_SANDBOX_DIR": str(directory)}
    with sandbox_up(env) as up:
        yield up


@contextlib.contextmanager
def sandbox_up(env: dict[str, str], *, fresh: tuple[Path, ...] = ()) -> Iterator[Sandbox]:
    """`sandbox.sh up` with ``env`` (its CALLMFA_NETNS and CALLMFA_SANDBOX_DIR) from an empty
    Redis (and without the directories ``fresh``); this thread joins its namespace until
    the end, then goes back to the one it was in, and the sandbox goes down."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root (network namespace, chroot): run as root")
    netns, directory = env["CALLMFA_NETNS"], Path(env["CALLMFA_SANDBOX_DIR"])
    subprocess.run(["bash", str(SANDBOX), "down"], env=env, check=False, capture_output=True)
    # Redis persists (AOF): a session starts from an empty one, not an earlier run's queue.
    for stale in (directory / "redis", *fresh):
        shutil.rmtree(stale, ignore_errors=True)
    up = subprocess.run(["bash", str(SANDBOX), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"sandbox up ({netns}) failed:\n{up.stderr[-4000:]}")
    values = {}
    for line in (directory / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = value.strip("'")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        yield Sandbox(netns, directory, values, home)
    finally:
        _setns(home)
        os.close(home)
        os.close(target)
        subprocess.run(["bash", str(SANDBOX), "down"], env=env, check=False, capture_output=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ needs the sandbox: mark it e2e (`-m "not e2e"` skips it)."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if item.path.is_relative_to(e2e):
            item.add_marker(pytest.mark.e2e)
