"""Figures from the runs: percentiles, the table, ratios against the floor, the targets."""

from __future__ import annotations

import math
from typing import Any

TARGET_CONCURRENCY = 200


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max (nearest rank) in ms, and how many values."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(q: float) -> float:
        return round(s[max(math.ceil(q * len(s)) - 1, 0)], 2)

    return {"n": len(s), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99),
            "max": round(s[-1], 2)}


def _p(row: dict[str, Any], metric: str, q: str = "p99") -> Any:
    return row["latency_ms"].get(metric, {}).get(q)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """One line per run."""
    head = ("variant", "load", "calls", "fail", "calls/s", "req>INV p50", "p99",
            "#>outcome p50", "p99", "svc in>pub p99", "ast ms/call", "callmfa ms/call",
            "redis", "sipp", "callmfa RSS MiB", "redis cmds/call", "callmfa cmds/call",
            "round trips/call", "log lines/call")
    lines = [head]
    for r in rows:
        cpu = r["cpu_ms_per_call"]
        load = f"{r['concurrency']} in flight" if r["concurrency"] else f"{r['rate']:g}/s"
        lines.append((
            r["variant"], load, str(r["calls"]), str(r["calls"] - r["ok"]),
            _fmt(r["calls_per_s"]),
            _fmt(_p(r, "request_to_invite", "p50")), _fmt(_p(r, "request_to_invite")),
            _fmt(_p(r, "key_to_outcome", "p50")), _fmt(_p(r, "key_to_outcome")),
            _fmt(_p(r, "service_input_to_published")),
            _fmt(round(cpu["asterisk"] + cpu["asterisk_children"], 2)),
            _fmt(cpu["callmfa"]) if not r["variant"].startswith("dialplan") else "-",
            _fmt(cpu["redis"]), _fmt(cpu["sipp"]),
            _fmt(round(r["callmfa_rss_kib"]["VmRSS"] / 1024, 1)),
            *_traffic(r),
            _fmt(r.get("log_lines_per_call")) if not r["variant"].startswith("dialplan")
            else "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)


def memory_lines(result: dict[str, Any]) -> str:
    """callmfa serve's memory per call in flight, and its growth over the soak."""
    out = []
    if (m := result.get("memory")) is not None:
        out.append(f"memory: {m['kib_per_in_flight_call']:g} KiB per call in flight "
                   f"(peak {m['hwm_kib'] / 1024:.1f} MiB at {m['max_in_flight']} in flight, "
                   f"idle {m['idle_rss_kib'] / 1024:.1f} MiB after a gc)")
    if (soak := result.get("soak")) is not None:
        out.append(f"soak: {soak['growth_kib']:+d} KiB over {soak['verifications']} "
                   f"verifications ({soak['after_warmup_rss_kib'] / 1024:.1f} -> "
                   f"{soak['after_rss_kib'] / 1024:.1f} MiB, each after a gc; "
                   f"{soak['ok']} approved)")
    if (g := result.get("soak", {}).get("tracemalloc_growth")) is not None:
        out.append(f"tracemalloc over the soak: {g['traced_kib_per_in_flight_call'] * 1024:+.0f} "
                   f"bytes of Python objects per verification; the top sources (KiB per "
                   "verification):")
        out += [f"  {x['kib_per_call']:8.3f} KiB {x['blocks_per_call']:7.2f} blocks  {x['site']}"
                for x in g["top"]]
    if (t := result.get("tracemalloc")) is not None:
        out.append(f"tracemalloc: {t['traced_kib_per_in_flight_call']:g} KiB of Python "
                   f"objects per call in flight, at {t['max_in_flight']}; the top sources:")
        out += [f"  {x['kib_per_call']:8.3f} KiB {x['blocks_per_call']:7.2f} blocks  {x['site']}"
                for x in t["top"]]
    return "\n".join(out)


def _traffic(row: dict[str, Any]) -> tuple[str, str, str]:
    """Redis commands per verification (all Redis ran), callmfa's own, its round trips."""
    redis = row.get("redis", {})
    if row["variant"].startswith("dialplan"):
        return "-", "-", "-"
    return (_fmt(redis.get("commands")), _fmt(redis.get("callmfa_commands")),
            _fmt(redis.get("callmfa_round_trips")))


def _closed(rows: list[dict[str, Any]], variant: str) -> dict[int, dict[str, Any]]:
    return {r["concurrency"]: r for r in rows if r["variant"] == variant and r["concurrency"]}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Ratios ours/floor per concurrency, and each target with the figure reached."""
    rows = result["rows"]
    ours, floor = _closed(rows, "callmfa"), _closed(rows, "dialplan")
    ratios = {}
    for c in sorted(set(ours) & set(floor)):
        o, f = ours[c], floor[c]
        ratios[c] = {
            "throughput_ours_over_floor": _ratio(o["calls_per_s"], f["calls_per_s"]),
            "asterisk_cpu_ours_over_floor": _ratio(o["cpu_ms_per_call"]["asterisk"],
                                                   f["cpu_ms_per_call"]["asterisk"]),
            "callmfa_cpu_over_asterisk_cpu": _ratio(o["cpu_ms_per_call"]["callmfa"],
                                                    o["cpu_ms_per_call"]["asterisk"]),
        }
    for c, row in _closed(rows, "api").items():
        if c in ours:
            ratios.setdefault(c, {})["request_to_invite_p99_api_over_redis"] = _ratio(
                _p(row, "request_to_invite"), _p(ours[c], "request_to_invite"))
    for c, row in _closed(rows, "classic").items():
        if c in floor:
            ratios.setdefault(c, {})["throughput_classic_over_floor"] = _ratio(
                row["calls_per_s"], floor[c]["calls_per_s"])
            # The scripts are Asterisk's reaped children: their CPU against Asterisk's own.
            ratios[c]["classic_scripts_cpu_over_asterisk_cpu"] = _ratio(
                row["cpu_ms_per_call"]["asterisk_children"], row["cpu_ms_per_call"]["asterisk"])
    targets: dict[str, Any] = {}
    at = ours.get(TARGET_CONCURRENCY)
    if at is not None:
        targets["key_to_outcome_p99_ms<=5@200"] = _target(_p(at, "key_to_outcome"), 5)
        targets["service_input_to_published_p99_ms<=5@200"] = _target(
            _p(at, "service_input_to_published"), 5)
        targets["request_to_invite_p99_ms<=20@200"] = _target(_p(at, "request_to_invite"), 20)
        redis = at.get("redis", {})
        targets["callmfa_redis_commands_per_call<=12@200"] = _target(
            redis.get("callmfa_commands"), 12)
        targets["callmfa_redis_round_trips_per_call<=5@200"] = _target(
            redis.get("callmfa_round_trips"), 5)
    if ratios:
        top = max(ratios)
        if "callmfa_cpu_over_asterisk_cpu" in ratios[top]:
            targets[f"callmfa_cpu/asterisk_cpu<=0.15@{top}"] = _target(
                ratios[top]["callmfa_cpu_over_asterisk_cpu"], 0.15)
            targets[f"throughput/floor>=0.9@{top}"] = _target(
                ratios[top]["throughput_ours_over_floor"], 0.9, at_least=True)
    api_at = ratios.get(100, {}).get("request_to_invite_p99_api_over_redis")
    if api_at is not None:
        targets["request_to_invite_p99_api/redis<=1.2@100"] = _target(api_at, 1.2)
    if "memory" in result:
        targets["kib_per_in_flight_call<=20"] = _target(
            result["memory"]["kib_per_in_flight_call"], 20)
    for row in rows:
        if "keys" in row:  # the keys runs: every '#' the phone sent counts, at once
            targets[f"lost_keys==0@{row['variant']}"] = _target(row["keys"]["lost_keys"], 0)
    if "soak" in result:
        # Allocator noise is a few pages; a leak of even 100 bytes a call is 1 MB per 10k.
        targets["soak_growth_kib<=512"] = _target(result["soak"]["growth_kib"], 512)
    out = {"summary": True, "ratios": ratios, "targets": targets}
    for key in ("memory", "soak", "tracemalloc", "classic", "keep_cost", "machine_before"):
        if key in result:
            out[key] = result[key]
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _target(value: float | None, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"value": value, "limit": limit, "met": met}
