"""`callmfa serve` signs outcomes or does not start (docs/security.md, "Forged outcomes")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.settings import Settings

from ..conftest import RedisServer, free_port, wait_until

CALLMFA = Path(sys.executable).parent / "callmfa"


def serve_env(redis_server: RedisServer, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMFA_")}
    return {**env, "CALLMFA_REDIS_URL": redis_server.url, "CALLMFA_ROLES": "agi",
            "CALLMFA_AGI_PORT": str(free_port()), "CALLMFA_HEALTH_PORT": "0", **settings}


class TestNoKeyNoStart:
    @pytest.mark.parametrize(("settings", "says"), [
        ({}, "no CALLMFA_SIGNING_KEY"),
        ({"CALLMFA_SIGNING_KEY": "short-key"}, "CALLMFA_SIGNING_KEY has 9 bytes"),
        ({"CALLMFA_SIGNING_KEY": "k" * 31, "CALLMFA_INSECURE_UNSIGNED": "1"}, "has 31 bytes"),
        ({"CALLMFA_SIGNING_KEY": "k" * 32, "CALLMFA_SIGNING_KEY_PREVIOUS": "old"},
         "CALLMFA_SIGNING_KEY_PREVIOUS has 3 bytes"),
        ({"CALLMFA_SIGNING_KEY_PREVIOUS": "o" * 32, "CALLMFA_INSECURE_UNSIGNED": "1"},
         "CALLMFA_SIGNING_KEY_PREVIOUS is set without CALLMFA_SIGNING_KEY"),
    ])
    def test_serve_refuses_to_start(
        self, redis_server: RedisServer, settings: dict[str, str], says: str
    ) -> None:
        """Without a key of 32 bytes or more serve exits at once with an error that names
        the setting; a short key is refused even with the opt-out."""
        done = subprocess.run([str(CALLMFA), "serve"], env=serve_env(redis_server, **settings),
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        assert says in done.stderr
        assert "service_ready" not in done.stdout

    def test_the_opt_out_runs_and_warns(self, redis_server: RedisServer, tmp_path: Path) -> None:
        """CALLMFA_INSECURE_UNSIGNED=1: serve runs, and says loudly that it is unsigned."""
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(CALLMFA), "serve"], stdout=out, stderr=subprocess.STDOUT,
                env=serve_env(redis_server, CALLMFA_INSECURE_UNSIGNED="1"),
            )
        try:
            wait_until(lambda: '"service_ready"' in log.read_text(), 30, "serve")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert '"outcomes_unsigned"' in log.read_text()

    def test_a_long_enough_key_is_accepted(self) -> None:
        assert Settings(signing_key="k" * 32).signing_refusal() is None
        assert Settings(signing_key="é" * 16).signing_refusal() is None  # 32 bytes of UTF-8

    def test_the_previous_key_may_come_from_a_file(self, tmp_path: Path) -> None:
        """While rotating, CALLMFA_SIGNING_KEY_PREVIOUS(_FILE) adds a key outcomes are
        verified with; the new key signs, and comes first."""
        path = tmp_path / "previous"
        path.write_text("o" * 32 + "\n")
        s = Settings.from_env({"CALLMFA_SIGNING_KEY": "n" * 32,
                               "CALLMFA_SIGNING_KEY_PREVIOUS_FILE": str(path)})
        assert s.signing_refusal() is None
        assert s.verifying_keys == (b"n" * 32, b"o" * 32)
        assert Settings(signing_key="n" * 32).verifying_keys == (b"n" * 32,)
        assert "o" * 32 not in repr(s)
        assert Settings(insecure_unsigned=1).signing_refusal() is None
        assert Settings().signing_refusal() is not None
