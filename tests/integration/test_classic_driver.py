"""The classic AGI driver (pyst2 over scripted stdin/stdout, redis-py's sync client) against a
real redis-server that restarts while the outcome is written."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asterisk.agi import AGI
from redis import Redis
from redis.exceptions import ResponseError

from ivr.classic import SETTINGS_READ, ClassicDriver
from ivr.domain.calltoken import token_hash
from ivr.settings import Settings
from ivr.storage.keys import BLOCKED, call_key, result_key
from ivr.storage.sync import SyncStore

from ..conftest import start_redis

TOKEN = "5e" * 24
RID = "c1a551c0-0000-4000-8000-000000000001"
# The replies of Asterisk to a call in standard mode where the caller presses '#' (or
# '0#', whose keys Read() returns as '0'): the channel probe, SET VARIABLE, Read(), its
# result, then as many plain successes as the driver asks for (VERBOSE, Playback, HANGUP).
PROBE = f"200 result=1 ({TOKEN}|HUMAN||||)\n"


def asterisk_replies(keys: str) -> str:
    return (f"agi_request: callmfa-verify.agi\nagi_uniqueid: {RID}\n\n{PROBE}"
            f"200 result=1\n200 result=0\n200 result=1 (OK:{keys}:)\n" + "200 result=1\n" * 20)


@dataclass
class Restartable:
    """A redis-server that can be stopped and started again on its port."""

    workdir: Path
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def start(self) -> None:
        self.proc, _ = start_redis(self.workdir, port=self.port)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Restartable]:
    proc, s = start_redis(tmp_path)
    r = Restartable(tmp_path, proc, s.port)
    yield r
    r.stop()


class RestartDuringWrite:
    """The driver's store, whose Redis is stopped as the first outcome (or fraud report) is
    written, and started again ``down_s`` later: a Redis restart."""

    def __init__(self, store: SyncStore, server: Restartable, down_s: float) -> None:
        self._store = store
        self._server = server
        self._down_s = down_s
        self.restarter: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _restart(self) -> None:
        if self.restarter is None:
            self._server.stop()
            self.restarter = threading.Thread(target=self._start_later)
            self.restarter.start()

    def _start_later(self) -> None:
        time.sleep(self._down_s)  # the length of the outage is the scenario
        self._server.start()

    def store_outcome(self, *args: Any, **kwargs: Any) -> bool:
        self._restart()
        return self._store.store_outcome(*args, **kwargs)

    def report_fraud(self, **kwargs: Any) -> None:
        self._restart()
        self._store.report_fraud(**kwargs)


def place_call(url: str) -> None:
    with Redis.from_url(url) as r:
        r.hset(call_key(RID), mapping={
            "user": "alice", "number": "+12015550100", "mode": "standard", "lang": "en",
            "requested_at": str(time.time() - 5), "context": "{}",
            "token_hash": token_hash(TOKEN)})


def run_driver(store: Any, keys: str) -> str:
    """Run the driver for one call; what it sent to Asterisk."""
    out = io.StringIO()
    agi = AGI(io.StringIO(asterisk_replies(keys)), out, io.StringIO())
    ClassicDriver(agi, store, Settings(fraud_block_s=600)).run(RID)
    return out.getvalue()


class TestRedisRestart:
    @pytest.mark.parametrize(("keys", "outcome"), [("", "approved"), ("0", "fraud_reported")])
    def test_the_outcome_is_stored_after_a_restart(
        self, server: Restartable, keys: str, outcome: str
    ) -> None:
        """Redis down for 2 s as the keyed outcome is written: the write is retried until it
        lands (as serve's IVR does), and the call ends with a hang-up. It had raised
        ConnectionError out of run(): no outcome, no hang-up, a traceback."""
        place_call(server.url)
        store = RestartDuringWrite(SyncStore.connect(Settings(redis_url=server.url)),
                                   server, down_s=2.0)
        try:
            sent = run_driver(store, keys)
        finally:
            store.close()
            if store.restarter is not None:
                store.restarter.join(15)
        assert store.restarter is not None, "the store was never written"
        with Redis.from_url(server.url) as r:
            raw = r.get(result_key(RID))
            assert raw is not None, f"no outcome stored; sent {sent!r}"
            assert json.loads(raw)["outcome"] == outcome
            if outcome == "fraud_reported":
                assert r.zscore(BLOCKED, "alice") is not None  # blocked, then published
        assert "Redis unavailable for" in sent
        assert sent.rstrip().endswith("HANGUP")


class FailingStore:
    """A store whose outcome write fails with an error that is no Redis outage."""

    def __init__(self, store: SyncStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def store_outcome(self, *args: Any, **kwargs: Any) -> bool:
        raise ResponseError("NOPERM this user has no permissions to run the 'eval' command")


class TestUnexpectedErrors:
    def test_an_error_that_is_not_an_outage_ends_the_call(self, server: Restartable) -> None:
        """An error the retries do not cover is logged to Asterisk and the call hung up; it
        is raised to nobody (a traceback on stderr, the channel left up)."""
        place_call(server.url)
        store = SyncStore.connect(Settings(redis_url=server.url))
        try:
            sent = run_driver(FailingStore(store), "")
        finally:
            store.close()
        assert "failed (ResponseError: NOPERM" in sent
        assert sent.rstrip().endswith("HANGUP")


def test_the_classic_script_does_not_load_structlog() -> None:
    """The Asterisk host's python3 has redis-py and pyst2 only: the retry the script uses
    comes without structlog."""
    code = "import sys, ivr.classic, ivr.storage.sync; print('structlog' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


class Recording:
    """Settings that note which of them are read."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self._settings, name)


@pytest.mark.parametrize("keys", ["", "0"])
def test_the_script_reads_only_the_settings_callmfa_env_holds(
    server: Restartable, keys: str
) -> None:
    """install-dialplan writes SETTINGS_READ to callmfa.env and nothing else: a call (an
    approval, a fraud report) reads no other setting."""
    place_call(server.url)
    settings = Recording(Settings(redis_url=server.url, fraud_block_s=600, pin_lockout_s=0))
    store = SyncStore(Redis.from_url(server.url), settings)  # type: ignore[arg-type]
    try:
        out = io.StringIO()
        agi = AGI(io.StringIO(asterisk_replies(keys)), out, io.StringIO())
        ClassicDriver(agi, store, settings).run(RID)  # type: ignore[arg-type]
    finally:
        store.close()
    assert "outcome" in out.getvalue()
    assert settings.read
    assert settings.read <= SETTINGS_READ
