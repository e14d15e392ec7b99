"""bench.report: the memory figures and the log lines per call in the printed table."""

from __future__ import annotations

from typing import Any

from bench.report import memory_lines, summary, table


def _row(variant: str, **extra: Any) -> dict[str, Any]:
    return {
        "variant": variant, "load": "closed", "concurrency": 200, "rate": None,
        "calls": 800, "ok": 800, "failures": {}, "seconds": 20.0, "calls_per_s": 50.0,
        "latency_ms": {}, "sipp_exit": 0,
        "cpu_ms_per_call": {"asterisk": 16.0, "redis": 1.0, "callmfa": 4.0, "bench": 2.0,
                            "asterisk_children": 0.0, "sipp": 0.7},
        "callmfa_rss_kib": {"peak": 72000, "VmHWM": 72000, "VmRSS": 71680}, **extra,
    }


RESULT = {
    "rows": [_row("callmfa", log_lines_per_call=5.01), _row("dialplan", log_lines_per_call=0)],
    "memory": {"idle_rss_kib": 68000, "hwm_kib": 71200, "max_in_flight": 200,
               "kib_per_in_flight_call": 16.0},
    "soak": {"verifications": 10000, "after_warmup_rss_kib": 70000, "after_rss_kib": 70100,
             "growth_kib": 100, "ok": 10000},
}


class TestTable:
    def test_log_lines_per_call_column(self) -> None:
        head, ours, floor = table(RESULT["rows"]).splitlines()
        assert head.endswith("log lines/call")
        assert ours.split()[-1] == "5.01"
        assert floor.split()[-1] == "-"

    def test_a_row_from_before_the_column(self) -> None:
        """Rows in an older results.jsonl have no log_lines_per_call: shown as '-'."""
        assert table([_row("callmfa")]).splitlines()[1].split()[-1] == "-"


class TestMemory:
    def test_per_call_and_soak_lines(self) -> None:
        per_call, soak = memory_lines(RESULT).splitlines()
        assert per_call.startswith("memory: 16 KiB per call in flight")
        assert "at 200 in flight" in per_call
        assert soak.startswith("soak: +100 KiB over 10000 verifications")

    def test_tracemalloc_sources(self) -> None:
        traced = {"max_in_flight": 200, "traced_kib_per_in_flight_call": 12.5,
                  "top": [{"site": "asyncio/streams.py:48", "kib_per_call": 1.153,
                           "blocks_per_call": 5.24}]}
        lines = memory_lines({**RESULT, "tracemalloc": traced}).splitlines()
        assert lines[2].startswith("tracemalloc: 12.5 KiB of Python objects per call")
        assert lines[3].split() == ["1.153", "KiB", "5.24", "blocks", "asyncio/streams.py:48"]
        assert summary({**RESULT, "tracemalloc": traced})["tracemalloc"] == traced

    def test_nothing_measured(self) -> None:
        assert memory_lines({"rows": []}) == ""

    def test_targets_in_the_summary_line(self) -> None:
        targets = summary(RESULT)["targets"]
        assert targets["kib_per_in_flight_call<=20"]["met"] is True
        assert targets["soak_growth_kib<=512"]["met"] is True
