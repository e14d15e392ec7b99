"""Tests for the bench's Redis counts: per verification, from two snapshots."""

from __future__ import annotations

from bench.report import _traffic
from bench.traffic import Traffic, per_call


class TestPerCall:
    def test_counts_are_divided_by_the_verifications(self) -> None:
        before = Traffic({"evalsha": 10, "xadd": 5}, {"commands": 100.0, "round_trips": 90.0})
        after = Traffic({"evalsha": 50, "xadd": 35, "xack": 2},
                        {"commands": 150.0, "round_trips": 140.0})
        got = per_call(before, after, 10)
        assert got["commands"] == 7.2
        assert got["by_command"] == {"evalsha": 4.0, "xadd": 3.0, "xack": 0.2}
        assert (got["callmfa_commands"], got["callmfa_round_trips"]) == (5.0, 5.0)

    def test_a_service_without_the_counters_gives_only_redis_figures(self) -> None:
        got = per_call(Traffic({"get": 1}, {}), Traffic({"get": 3}, {}), 2)
        assert got == {"commands": 1.0, "by_command": {"get": 1.0}}

    def test_the_table_leaves_the_floor_blank(self) -> None:
        redis = {"commands": 31.1, "callmfa_commands": 5.6, "callmfa_round_trips": 5.6}
        assert _traffic({"variant": "callmfa", "redis": redis}) == ("31.1", "5.6", "5.6")
        assert _traffic({"variant": "dialplan", "redis": redis}) == ("-", "-", "-")
