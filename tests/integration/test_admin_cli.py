"""The security team's and the API tokens' commands (`callmfa block`, `callmfa token`) against
a real redis-server, through the command line's main()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from ivr.cli import EXIT_USAGE, main
from ivr.storage.keys import AUDIT, BLOCKED

from ..conftest import RedisServer


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    """main() on this Redis; it configures structlog for the process, not with pytest's
    captured stderr (closed after the test while later tests still log)."""
    monkeypatch.setattr("ivr.cli.configure", lambda *_args, **_kw: None)
    monkeypatch.setenv("CALLMFA_REDIS_URL", redis_server.url)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    """A sync client on an emptied database (main() runs its own event loop)."""
    with Redis.from_url(redis_server.url) as client:
        client.flushdb()
        yield client


class TestToken:
    def test_errors_go_to_stderr_not_into_the_token(
        self, redis: Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`T=$(callmfa token create ci)` had captured the error text as the token."""
        assert main(["token", "create", "ci"]) == 0
        token = capsys.readouterr().out.strip()
        assert token.startswith("cmfa_")

        assert main(["token", "create", "ci"]) == 1
        out = capsys.readouterr()
        assert out.out == ""
        assert "ci has a token already" in out.err

        assert main(["token", "revoke", "nobody"]) == 1
        out = capsys.readouterr()
        assert out.out == ""
        assert "no token named nobody" in out.err


class TestBlock:
    def test_no_length_with_fraud_blocking_off_is_a_usage_error(
        self, redis: Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """CALLMFA_FRAUD_BLOCK_S=0 (0# only audits) is no block length: `callmfa block alice`
        had printed 'blocked alice for 0s', exit 0, and audited a block that ended at once."""
        monkeypatch.setenv("CALLMFA_FRAUD_BLOCK_S", "0")

        assert main(["block", "alice"]) == EXIT_USAGE

        out = capsys.readouterr()
        assert "give one with --for" in out.err
        assert out.out == ""
        assert redis.zscore(BLOCKED, "alice") is None
        assert redis.xlen(AUDIT) == 0

    def test_a_length_given_blocks_with_fraud_blocking_off(
        self, redis: Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CALLMFA_FRAUD_BLOCK_S", "0")

        assert main(["block", "alice", "--for", "1h"]) == 0

        assert "blocked alice for 3600s" in capsys.readouterr().out
        assert redis.zscore(BLOCKED, "alice") is not None

    def test_the_default_length_is_the_fraud_block(
        self, redis: Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("CALLMFA_FRAUD_BLOCK_S", "7200")

        assert main(["block", "alice"]) == 0

        assert "blocked alice for 7200s" in capsys.readouterr().out
