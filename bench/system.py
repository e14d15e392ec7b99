"""The processes under test: the bench's own sandbox, ``callmfa serve``, /proc accounting."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SANDBOX = REPO / "docker" / "sandbox" / "sandbox.sh"
SERVE = Path(__file__).resolve().parent / "serve.py"  # callmfa serve, with a gc on SIGUSR1
CLONE_NEWNET = 0x40000000
TICK = os.sysconf("SC_CLK_TCK")

# What `callmfa serve` runs with in the bench: room for the largest sweep, production logging.
SERVICE_SETTINGS = {
    "CALLMFA_MAX_IN_FLIGHT": "2000",
    "CALLMFA_AGI_MAX_SESSIONS": "4000",
    "CALLMFA_RING_TIMEOUT_S": "10",
    "CALLMFA_LOG_LEVEL": "info",
    # The bench measures the verification path itself: thousands of calls to a few users
    # would be throttled, and its phones do not speak, which AMD would hold for seconds.
    "CALLMFA_AMD": "off",
    "CALLMFA_THROTTLE_USER_COOLDOWN_S": "0",
    "CALLMFA_THROTTLE_NUMBER_COOLDOWN_S": "0",
    "CALLMFA_THROTTLE_USER_PER_HOUR": "0",
    "CALLMFA_THROTTLE_NUMBER_PER_HOUR": "0",
    "CALLMFA_THROTTLE_GLOBAL_PER_HOUR": "0",
    "CALLMFA_FRAUD_BLOCK_S": "0",
    # The api variant: thousands of requests a minute through one token.
    "CALLMFA_API_RATE_PER_MIN": "10000000",
    # Its Redis commands and round trips are read there (bench.traffic).
    "CALLMFA_METRICS_PORT": "9465",
}
METRICS_URL = "http://127.0.0.1:9465/metrics"


def default_netns() -> str:
    """One bench namespace per checkout, so two clones can bench side by side."""
    return "cmb-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of one process (self, and reaped children such as classic AGI scripts)."""

    self_s: float
    children_s: float


def cpu(pid: int) -> CpuSample:
    """utime+stime and cutime+cstime of ``pid`` from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return CpuSample((utime + stime) / TICK, (cutime + cstime) / TICK)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> None:
    """Reset ``pid``'s VmHWM to its VmRSS now (Linux >= 4.0), so that the next reading of
    VmHWM is the peak of what ran since: one run's own, not the process's lifetime's."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def machine_load() -> dict[str, object]:
    """What else the machine was doing: load averages and core count."""
    with open("/proc/loadavg") as f:
        one, five, fifteen = (float(x) for x in f.read().split()[:3])
    return {"cores": os.cpu_count(), "loadavg": [one, five, fifteen]}


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Sandbox:
    """Asterisk and redis-server in the bench's own namespace (no ``callmfa serve``)."""

    def __init__(self, netns: str, directory: Path) -> None:
        self.netns = netns
        self.directory = directory
        self.env: dict[str, str] = {}
        self._script_env = {
            **os.environ, "CALLMFA_NETNS": netns, "CALLMFA_SANDBOX_DIR": str(directory),
            "CALLMFA_SANDBOX_SERVE": "0",
        }

    def _script(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SANDBOX), command], env=self._script_env,
                              capture_output=True, text=True, check=False)

    @contextmanager
    def running(self) -> Iterator[Sandbox]:
        """Up (fresh), this thread inside its namespace; down on exit."""
        self._script("down")
        up = self._script("up")
        if up.returncode != 0:
            raise RuntimeError(f"sandbox up failed:\n{up.stderr[-3000:]}")
        for line in (self.directory / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                self.env[key] = value.strip("'")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            _setns(target)
            yield self
        finally:
            _setns(home)
            os.close(home)
            os.close(target)
            self._script("down")

    def pid(self, name: str) -> int:
        """The pid that sandbox.sh recorded for ``name`` (asterisk, redis)."""
        return int((self.directory / "pids" / f"{name}.pid").read_text().split()[0])


class Service:
    """``callmfa serve`` started by the bench (plain Python, no -X dev), logging to a file."""

    def __init__(self, sandbox: Sandbox, log: Path, settings: Mapping[str, str]) -> None:
        self._env = {**os.environ, **sandbox.env, **SERVICE_SETTINGS, **settings}
        self._env.pop("PYTHONDEVMODE", None)
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The service's pid."""
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float = 120) -> None:
        """Start and wait for its ``service_ready`` line."""
        with open(self.log, "wb") as out:
            self._proc = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "python"), str(SERVE)], env=self._env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while b'"service_ready"' not in self.log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"callmfa serve did not start: {self.log}")
            time.sleep(0.05)

    def collect(self, timeout_s: float = 10) -> None:
        """A full gc in the service (SIGUSR1, bench/serve.py); returns once it is done."""
        self._signal(signal.SIGUSR1, b'"bench_gc_collected"', timeout_s)

    def snapshot(self, timeout_s: float = 60) -> None:
        """A tracemalloc snapshot (SIGUSR2; the service runs with --trace-memory's DIR)."""
        self._signal(signal.SIGUSR2, b'"bench_snapshot_taken"', timeout_s)

    def _signal(self, signum: int, marker: bytes, timeout_s: float) -> None:
        assert self._proc is not None
        offset = self.log.stat().st_size
        self._proc.send_signal(signum)
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log, "rb") as f:
                f.seek(offset)
                if marker in f.read():
                    return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"callmfa serve did not answer {signum}: {self.log}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then wait (it drains its calls)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(40)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
