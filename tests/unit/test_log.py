"""ivr.log: compact JSON lines, by orjson when installed, by the standard library without."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ivr.log import UtcTimeStamper, configure, json_serializer, stdlib_dumps

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """configure() is process-wide: restore structlog's defaults for the next tests."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def no_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import orjson`` fails, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "orjson", None)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _log_to(path: Path, level: str = "info") -> io.TextIOWrapper:
    stream = open(path, "w")  # noqa: SIM115 (closed by the test)
    configure(level, stream)
    return stream


class TestLines:
    @pytest.mark.parametrize("orjson", ["installed", "absent"])
    def test_one_compact_json_line_per_event(
        self, tmp_path: Path, orjson: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Event, level, UTC timestamp and the bound context; the same bytes' shape with
        and without orjson."""
        if orjson == "absent":
            monkeypatch.setitem(sys.modules, "orjson", None)
        path = tmp_path / "serve.log"
        with _log_to(path):
            structlog.contextvars.bind_contextvars(verification_id="v1")
            log = structlog.get_logger("t")
            log.info("outcome_published", outcome="approved", input_to_published_ms=1.5)
            log.debug("originate_sent", channel="PJSIP/x")
        [line] = _lines(path)
        event = json.loads(line)
        assert event["event"] == "outcome_published"
        assert (event["level"], event["verification_id"]) == ("info", "v1")
        assert event["input_to_published_ms"] == 1.5
        assert event["timestamp"].endswith("Z")
        assert b'"event":"outcome_published"' in line

    def test_text_written_before_stays_before(self, tmp_path: Path) -> None:
        """The lines go to the stream's binary buffer: text pending in it is flushed first."""
        path = tmp_path / "serve.log"
        with open(path, "w") as stream:
            stream.write("before\n")
            configure("info", stream)
            structlog.get_logger("t").info("service_ready")
        assert _lines(path)[0] == b"before"
        assert json.loads(_lines(path)[1])["event"] == "service_ready"

    def test_a_text_only_stream(self) -> None:
        stream = io.StringIO()
        configure("info", stream)
        structlog.get_logger("t").warning("fastagi_bad_client", peer="127.0.0.1:1")
        assert json.loads(stream.getvalue())["event"] == "fastagi_bad_client"

    def test_values_orjson_refuses_still_log(self, tmp_path: Path) -> None:
        """A lone surrogate (undecodable bytes), a key that is not a string, an integer past
        64 bits: the line is written all the same, by the standard library."""
        path = tmp_path / "serve.log"
        with _log_to(path):
            log = structlog.get_logger("t")
            log.warning("fastagi_unknown_script", script="\udcff")
            log.info("odd", keys={1: "a"}, big=2**70)
        first, second = (json.loads(x) for x in _lines(path))
        assert first["script"] == "\udcff"
        assert (second["keys"], second["big"]) == ({"1": "a"}, 2**70)

    def test_control_characters_stay_escaped(self, tmp_path: Path) -> None:
        """A CR or LF in a value cannot forge a second line."""
        path = tmp_path / "serve.log"
        with _log_to(path):
            structlog.get_logger("t").info("x", peer='a\n{"event":"forged"}\r')
        [line] = _lines(path)
        assert json.loads(line)["peer"] == 'a\n{"event":"forged"}\r'


class TestSerializer:
    def test_orjson_when_installed(self) -> None:
        pytest.importorskip("orjson")
        assert json_serializer() is not stdlib_dumps
        assert json_serializer()({"a": 1}) == b'{"a":1}'

    def test_standard_library_without_orjson(self, no_orjson: None) -> None:
        assert json_serializer() is stdlib_dumps
        assert stdlib_dumps({"a": [1, None]}) == b'{"a":[1,null]}'


class TestLevel:
    def test_set_level_reaches_a_logger_already_cached(self, tmp_path: Path) -> None:
        """SIGHUP's reload: a logger that has logged (cached with the processors of start-up)
        follows the new level both ways."""
        from ivr.log import set_level
        path = tmp_path / "log"
        stream = _log_to(path, "info")
        log = structlog.get_logger("t")
        log.info("first")
        log.debug("hidden")
        set_level("debug")
        log.debug("shown")
        set_level("warning")
        log.info("hidden_too")
        log.warning("kept")
        stream.close()
        assert [json.loads(x)["event"] for x in _lines(path)] == ["first", "shown", "kept"]


class TestTimeStamper:
    @given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))
    def test_the_text_of_structlogs_iso_utc_stamper(self, ns: int) -> None:
        """What ``datetime.isoformat`` writes for the clock's microsecond, ``+00:00`` as ``Z``
        (structlog's TimeStamper(fmt="iso", utc=True)), whatever the second before it."""
        expected = (EPOCH + timedelta(microseconds=ns // 1000)).isoformat().replace("+00:00", "Z")
        stamper = UtcTimeStamper(lambda: ns)
        assert stamper(None, "info", {})["timestamp"] == expected
        assert stamper(None, "info", {})["timestamp"] == expected  # from the kept second

    def test_a_new_second_gets_its_own_text(self) -> None:
        clock = iter([1_000_000_000_999_999_000, 1_000_000_001_000_000_000])
        stamper = UtcTimeStamper(lambda: next(clock))
        assert stamper(None, "info", {})["timestamp"] == "2001-09-09T01:46:40.999999Z"
        assert stamper(None, "info", {})["timestamp"] == "2001-09-09T01:46:41Z"
