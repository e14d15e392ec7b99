"""The command line's argument checks, before anything connects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ivr.cli import EXIT_USAGE, main
from ivr.exceptions import OutcomeSignatureError
from ivr.ops.admin import wait_seconds

BASE = ["verify", "--user", "alice", "--phone", "+12015550100"]


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() configures structlog for the process: not with pytest's captured stderr,
    which is closed after the test while later tests still log."""
    monkeypatch.setattr("ivr.cli.configure", lambda *_args, **_kw: None)


class TestVerifyMode:
    @pytest.mark.parametrize(("extra", "message"), [
        (["--mode", "match"], "--mode match needs --match NN"),
        (["--mode", "match", "--match", "7"], "--match must be 2 digits"),
        (["--mode", "match", "--match", "3a"], "--match must be 2 digits"),
        (["--mode", "match", "--match", "١٢"], "--match must be 2 digits"),  # not ASCII
        (["--match", "37"], "--match is for --mode match only"),
        (["--mode", "pin", "--match", "37"], "--match is for --mode match only"),
    ])
    def test_bad_combinations_are_usage_errors(
        self, extra: list[str], message: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Exit 2 with a clear message, and no request is sent (Redis is unreachable)."""
        monkeypatch.setenv("CALLMFA_REDIS_URL", "redis://127.0.0.1:1/0")
        assert main([*BASE, *extra]) == EXIT_USAGE
        assert message in capsys.readouterr().err

    def test_unknown_mode_is_refused_by_argparse(self, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
        with pytest.raises(SystemExit) as e:
            main([*BASE, "--mode", "sms"])
        assert e.value.code == 2
        assert "invalid choice: 'sms'" in capsys.readouterr().err


class TestAdminDurations:
    @pytest.mark.parametrize("bad", ["0", "0s", "-1", "forever", "9" * 5000, "999999999999d",
                                     "3651d"])
    def test_a_duration_out_of_range_is_a_usage_error(
        self, bad: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Zero, nonsense, or over ten years: argparse's exit 2 with the allowed form."""
        with pytest.raises(SystemExit) as e:
            main(["block", "alice", "--for", bad])
        assert e.value.code == 2
        assert "is not a duration like 600, 10m, 12h, 90d (at most 3650d)" in (
            capsys.readouterr().err)


class TestWaitSeconds:
    @pytest.mark.parametrize("bad", ["nan", "inf", "1e12", "3601", "0", "-1", "x", ""])
    @pytest.mark.parametrize("command", [[*BASE, "--timeout"], ["check", "--call-timeout"]])
    def test_a_wait_out_of_range_is_a_usage_error(
        self, command: list[str], bad: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """nan, inf and 1e12 ended in a traceback (iso() and the clock overflowed); 0 and -1
        queued a request already expired: now argparse's exit 2, with the allowed range."""
        with pytest.raises(SystemExit) as e:
            main([*command, bad])
        assert e.value.code == 2
        assert "is not a number of seconds over 0 and at most 3600" in capsys.readouterr().err

    @pytest.mark.parametrize(("text", "value"), [("180", 180.0), ("2.5", 2.5), ("3600", 3600.0)])
    def test_a_wait_in_range(self, text: str, value: float) -> None:
        assert wait_seconds(text) == value


class TestErrorsGoToStderr:
    def test_keys_without_a_key_file(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An error is no output: `K=$(callmfa keys list)` had captured it."""
        monkeypatch.delenv("CALLMFA_ENTRA_SIGNING_KEY_FILE", raising=False)
        assert main(["keys", "list"]) == 1
        out = capsys.readouterr()
        assert out.out == ""
        assert "callmfa: set CALLMFA_ENTRA_SIGNING_KEY_FILE" in out.err

    def test_keys_with_no_file_yet(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
    ) -> None:
        monkeypatch.setenv("CALLMFA_ENTRA_SIGNING_KEY_FILE", str(tmp_path / "keys.pem"))
        assert main(["keys", "list"]) == 1
        out = capsys.readouterr()
        assert out.out == ""
        assert "no key file at" in out.err


class TestVerifyStops:
    def test_a_refused_outcome_stops_the_progress_before_the_client_closes(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A forged outcome (OutcomeSignatureError) ends `callmfa verify` with its message;
        the progress printer is stopped first, not left reading from a closed client."""
        happened: list[str] = []

        class Client:
            async def __aenter__(self) -> Client:
                return self

            async def __aexit__(self, *exc: object) -> None:
                happened.append("closed")

            async def submit(self, **_: Any) -> str:
                return "rid-1"

            async def wait(self, rid: str, timeout_s: float) -> None:
                await asyncio.sleep(0.05)
                raise OutcomeSignatureError("signature mismatch")

            async def watch(self, rid: str, **_: Any) -> AsyncIterator[Any]:
                try:
                    await asyncio.sleep(60)
                    yield
                finally:
                    happened.append("progress stopped")

        monkeypatch.setattr("ivr.cli.VerificationClient.from_settings", lambda _s: Client())
        assert main(BASE) != 0
        assert "signature mismatch" in capsys.readouterr().err
        assert happened == ["progress stopped", "closed"]
