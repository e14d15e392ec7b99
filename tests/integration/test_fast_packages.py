"""The fast packages (uvloop, hiredis, orjson) by default, and callmfa without them: a real
``callmfa serve`` (the IVR role) answers a call either way, and the unit and IVR tests
pass with none of the three importable (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.storage.store import Store

from ..conftest import REPO, RedisServer, free_port
from .conftest import eventually
from .fake_asterisk import FakeAsterisk, outcome_json, place_call

FAST = ("orjson", "uvloop", "hiredis")
# Run first in the child: each of the fast packages fails to import, as if not installed.
WITHOUT_FAST = f"import sys\nfor name in {FAST!r}:\n    sys.modules[name] = None\n"


def _python(code: str, *, without_fast: bool) -> list[str]:
    return [sys.executable, "-c", (WITHOUT_FAST if without_fast else "import sys\n") + code]


def _lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


def _start_serve(log: Path, settings: dict[str, str], *, without_fast: bool
                 ) -> subprocess.Popen[bytes]:
    """``callmfa serve`` as the console script runs it, logging to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMFA_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            _python("from ivr.cli import main\nsys.exit(main(['serve']))",
                    without_fast=without_fast),
            env={**env, **settings}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO,
        )


@pytest.mark.parametrize(("without_fast", "env", "loop"), [
    (True, {}, "asyncio"),
    (False, {}, "uvloop"),
    (False, {"CALLMFA_EVENT_LOOP": "auto"}, "uvloop"),
    (False, {"CALLMFA_EVENT_LOOP": "asyncio"}, "asyncio"),
], ids=["without-fast-packages", "default", "auto-named", "asyncio-named"])
async def test_serve_answers_a_call(
    tmp_path: Path, redis_server: RedisServer, redis: Redis, without_fast: bool,
    env: dict[str, str], loop: str,
) -> None:
    """service_ready names the loop; '#' is approved; SIGTERM stops it cleanly; every
    line is JSON."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    port = free_port()
    log = tmp_path / "serve.log"
    settings = {
        "CALLMFA_CONFIG_FILE": "", "CALLMFA_ROLES": "agi", "CALLMFA_AGI_PORT": str(port),
        "CALLMFA_HEALTH_PORT": "0", "CALLMFA_METRICS_PORT": "0", "CALLMFA_LOG_LEVEL": "info",
        "CALLMFA_REDIS_URL": redis_server.url, "CALLMFA_SIGNING_KEY": "k" * 32,
        "CALLMFA_PIN_PEPPER": "p" * 32,
    }
    serve = _start_serve(log, {**settings, **env}, without_fast=without_fast)
    try:
        await eventually(lambda: b'"service_ready"' in log.read_bytes()
                         or serve.poll() is not None, timeout_s=30, what="service_ready")
        [ready] = [e for e in _lines(log) if e["event"] == "service_ready"]
        assert ready["event_loop"] == loop

        rid = str(uuid.uuid4())
        await place_call(Store(redis, result_ttl_s=60, events_maxlen=1000), rid)
        await FakeAsterisk(["#"]).call(port, rid)

        async def approved() -> bool:
            stored = await outcome_json(redis, rid)
            return stored is not None and stored["outcome"] == "approved"

        await eventually(approved, what="the outcome")
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(30)
    assert code == 0, log.read_text()
    events = [e["event"] for e in _lines(log)]
    assert "outcome_published" in events
    assert events[-1] == "service_stopped"


def test_the_tests_pass_without_the_fast_packages(tmp_path: Path) -> None:
    """The log, settings and event-loop unit tests and the IVR's integration tests (redis-py's
    own parser, json's lines, asyncio's loop) with none of the fast packages."""
    modules = ["tests/unit/test_log.py", "tests/unit/test_event_loop.py",
               "tests/unit/test_settings.py", "tests/integration/test_ivr_session.py"]
    pytest_main = _python("import pytest\nsys.exit(pytest.main(sys.argv[1:]))",
                          without_fast=True)
    out = subprocess.run(
        [*pytest_main, "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *modules],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
