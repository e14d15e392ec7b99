"""The benchmark: callmfa against the pure-dialplan floor (and classic AGI), in one run.

Prints one JSON line per run, then a table and a summary JSON line (ratios and targets).
Needs root (it brings up its own sandbox in its own network namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.transport.ami import AmiClient

from .keys import KEY_DELAY_MAX_MS, SPEECH, key_report, keys_table, service_traces
from .load import (
    ApiCalls,
    CallmfaCalls,
    CallResult,
    DialplanCalls,
    Placer,
    closed_loop,
    numbers,
    open_loop,
)
from .phone import BenchPhone
from .report import memory_lines, percentiles, summary, table
from .system import (
    METRICS_URL,
    REPO,
    Sandbox,
    Service,
    cpu,
    default_netns,
    machine_load,
    memory_kib,
    reset_peak,
)
from .traffic import per_call
from .traffic import snapshot as traffic_now

CLASSIC_SCRIPT = REPO / "agi_scripts" / "callmfa-verify.agi"
KEEP_CONTEXT = "bench-baseline-keep"  # the floor after StoreDTMF (the sandbox's dialplan)
GOODBYE_S = 3.5  # callmfa/approved (and the floor's same goodbye), in English: 3.46 s


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--concurrency", default="10,50,200,500",
                   help="calls in flight for the closed-loop runs (default 10,50,200,500)")
    p.add_argument("--calls-per-flight", type=int, default=4,
                   help="calls per closed-loop run = this x concurrency (default 4)")
    p.add_argument("--min-calls", type=int, default=60, help="at least this many per run")
    p.add_argument("--rate", type=float, default=50,
                   help="open-loop arrivals per second (0: no open-loop run; default 50)")
    p.add_argument("--rate-calls", type=int, default=500, help="calls in the open-loop run")
    p.add_argument("--soak", type=int, default=2000,
                   help="verifications in the leak check (0: none; --full: 10000)")
    p.add_argument("--soak-concurrency", type=int, default=200)
    p.add_argument("--full", action="store_true", help="the 10,000-verification soak")
    p.add_argument("--key-delay-ms", type=int, default=1000,
                   help="the scripted human: answer, wait this long, press '#' (default 1000)")
    p.add_argument("--keys", type=int, default=0, metavar="N",
                   help="the keys run instead of the others: N verifications, each phone "
                        f"pressing '#' at a random moment 0-{KEY_DELAY_MAX_MS} ms after "
                        "answering, once per --keys-amd (e.g. 10000)")
    p.add_argument("--keys-concurrency", type=int, default=200, help="(default 200)")
    p.add_argument("--keys-amd", default="off,on",
                   help=f"CALLMFA_AMD for each keys run (default off,on; on: the phones say "
                        f"{SPEECH!r} as they answer)")
    p.add_argument("--keep-cost", type=int, default=0, metavar="N",
                   help="what StoreDTMF (the key keeper) costs Asterisk: the floor with and "
                        "without it, interleaved, 3 rounds of N calls at --keys-concurrency "
                        "in flight, instead of the other runs (with --keys: after it)")
    p.add_argument("--variants", default="callmfa,api,dialplan,classic",
                   help="which of callmfa (the Redis contract), api (the HTTP API), dialplan, "
                        "classic to run")
    p.add_argument("--classic-env", action="append", default=[],
                   help="KEY=VALUE for `callmfa serve` in the classic-AGI variant "
                        "(default CALLMFA_AGI_MODE=classic)")
    p.add_argument("--set", action="append", default=[], dest="settings",
                   help="KEY=VALUE for `callmfa serve` in every variant (e.g. CALLMFA_LOG_LEVEL)")
    p.add_argument("--profile", type=Path,
                   help="py-spy (raw stacks) of callmfa serve during its largest run")
    p.add_argument("--trace-memory", type=Path, metavar="DIR",
                   help="tracemalloc in callmfa serve (slower: CPU figures do not count): "
                        "snapshots idle and halfway through its largest run into DIR, and "
                        "the Python memory per call in flight with its top sources")
    p.add_argument("--netns", default=default_netns())
    p.add_argument("--sandbox-dir", type=Path, default=REPO / ".sandbox-bench")
    p.add_argument("--out", type=Path, help="results directory (default <sandbox-dir>/results)")
    p.add_argument("--plot", type=Path, help="write the PNG plot here (needs matplotlib)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds, tiny counts: proves the bench runs end to end")
    return p


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


@dataclass
class Load:
    """One run's load: closed loop at ``concurrency`` or open loop at ``rate``."""

    calls: int
    concurrency: int = 0
    rate: float = 0.0

    @property
    def label(self) -> str:
        """``c200`` or ``r50``."""
        return f"c{self.concurrency}" if self.concurrency else f"r{self.rate:g}"


class Bench:
    """Runs loads against the sandbox and turns what it saw into figures."""

    def __init__(self, args: argparse.Namespace, sandbox: Sandbox, out: Path,
                  redis: Redis, http: aiohttp.ClientSession) -> None:
        self.args = args
        self.sandbox = sandbox
        self.out = out
        self.redis = redis  # INFO commandstats
        self.http = http  # the service's /metrics
        self.dial = numbers()
        self.rows: list[dict[str, Any]] = []
        self.service: Service | None = None

    def start_service(self, name: str, extra: dict[str, str]) -> Service:
        """(Re)start ``callmfa serve`` with the bench settings and ``extra``."""
        if self.service is not None:
            self.service.stop()
        self.service = Service(self.sandbox, self.out / f"callmfa-{name}.log",
                               {**_pairs(self.args.settings), **extra})
        self.service.start()
        return self.service

    async def run(self, variant: str, place: Placer, load: Load, *, trace: bool = True,
                  profile: Path | None = None, record: bool = True,
                  keys: bool = False, speech: str | None = None,
                  snapshot: bool = False, dial: Iterator[str] | None = None
                  ) -> dict[str, Any]:
        """One run: a fresh phone, the load, CPU and memory deltas, latencies.

        ``keys``: the keys run's phone ('#' at a random moment) and figures (bench.keys).
        ``snapshot``: a tracemalloc snapshot once half the calls are done (--trace-memory).
        ``dial``: the numbers to call (default: the bench's own, each once).
        """
        assert self.service is not None
        if snapshot:
            place = _snapshot_halfway(place, self.service, load.calls)
        phone = BenchPhone(self.out / f"{variant}-{load.label}", calls=load.calls, trace=trace,
                           address=self.sandbox.env["CALLMFA_PHONE"],
                           key_delay_ms=0 if keys else self.args.key_delay_ms,
                           key_delay_max_ms=KEY_DELAY_MAX_MS if keys else None, speech=speech)
        phone.start()
        pids = {"asterisk": self.sandbox.pid("asterisk"), "redis": self.sandbox.pid("redis"),
                "callmfa": self.service.pid, "bench": os.getpid()}
        before = {name: cpu(pid) for name, pid in pids.items()}
        log_offset = self.service.log.stat().st_size
        traffic = await traffic_now(self.redis, self.http, METRICS_URL)
        spy = _py_spy(self.service.pid, profile) if profile else None
        peak_rss = 0
        reset_peak(pids["callmfa"])  # the run's own VmHWM, not the earlier runs'

        async def sample() -> None:
            nonlocal peak_rss
            while True:
                peak_rss = max(peak_rss, memory_kib(pids["callmfa"])["VmRSS"])
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        started = time.time()
        try:
            if load.concurrency:
                # About one call's length (the wait for '#' plus the goodbye prompt), so that
                # the callers do not move in step.
                wait_ms = KEY_DELAY_MAX_MS / 2 if keys else self.args.key_delay_ms
                ramp = wait_ms / 1000 + GOODBYE_S
                results = await closed_loop(place, dial or self.dial, calls=load.calls,
                                            concurrency=load.concurrency, ramp_s=ramp)
            else:
                results = await open_loop(place, dial or self.dial, calls=load.calls,
                                          rate=load.rate)
        finally:
            sampler.cancel()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait, 60)
        await asyncio.to_thread(phone.finish, 30)
        await asyncio.sleep(0.3)  # let the service log its last lines
        after = {name: cpu(pid) for name, pid in pids.items()}
        row = self._row(variant, load, results, started, phone)
        row["redis"] = per_call(traffic, await traffic_now(self.redis, self.http, METRICS_URL),
                                len(results))
        n = max(len(results), 1)
        row["cpu_ms_per_call"] = {
            name: round((after[name].self_s - before[name].self_s) * 1000 / n, 3)
            for name in pids
        }
        row["cpu_ms_per_call"]["asterisk_children"] = round(
            (after["asterisk"].children_s - before["asterisk"].children_s) * 1000 / n, 3)
        row["cpu_ms_per_call"]["sipp"] = round(phone.cpu_s * 1000 / n, 3)
        if not variant.startswith("dialplan"):
            published = _service_latencies(self.service.log, log_offset)
            sample = _steady(results) if load.concurrency else results
            row["latency_ms"]["service_input_to_published"] = percentiles(
                [published[r.rid] for r in sample if r.rid in published])
        if keys:
            row["keys"] = key_report(results, phone.times(),
                                     service_traces(self.service.log, log_offset))
        row["callmfa_rss_kib"] = {"peak": peak_rss, **memory_kib(pids["callmfa"])}
        row["log_lines_per_call"] = round(_lines_since(self.service.log, log_offset) / n, 2)
        row["machine"] = machine_load()
        if record:
            self.rows.append(row)
            print(json.dumps(row), flush=True)
        return row

    def _row(self, variant: str, load: Load, results: list[CallResult], started: float,
             phone: BenchPhone) -> dict[str, Any]:
        ok = [r for r in results if r.ok]
        failures: dict[str, int] = {}
        for r in results:
            if not r.ok:
                failures[r.outcome] = failures.get(r.outcome, 0) + 1
        times = phone.times()
        invite, key_to_outcome, human = [], [], self.args.key_delay_ms
        sample = _steady(results) if load.concurrency else results
        for r in sample:
            t = times.get(r.number)
            if t is not None and t.invite_at is not None:
                invite.append((t.invite_at - r.submitted_at) * 1000)
            if t is not None and t.key_at is not None and r.outcome_at is not None \
                    and not variant.startswith("dialplan"):
                key_to_outcome.append((r.outcome_at - t.key_at) * 1000)
        latency = {"request_to_invite": percentiles(invite)}
        if not variant.startswith("dialplan"):
            latency["key_to_outcome"] = percentiles(key_to_outcome)
            latency["request_to_outcome_minus_human"] = percentiles(
                [(r.outcome_at - r.submitted_at) * 1000 - human for r in sample
                 if r.ok and r.outcome_at])
        return {
            "variant": variant, "load": "closed" if load.concurrency else "open",
            "concurrency": load.concurrency or None, "rate": load.rate or None,
            "calls": len(results), "ok": len(ok), "failures": failures,
            "seconds": round(time.time() - started, 2),
            "calls_per_s": round(_throughput(results), 2),
            "latency_ms": latency, "sipp_exit": phone.exit_code,
        }


def _steady(results: list[CallResult]) -> list[CallResult]:
    """The calls placed once all callers were busy: after the first call ended.

    The ramp's calls are left out of the latencies (not out of the counts or the CPU).
    """
    ended = [r.ended_at for r in results if r.ended_at is not None]
    if not ended:
        return results
    steady = [r for r in results if r.submitted_at >= min(ended)]
    return steady or results


def _throughput(results: list[CallResult]) -> float:
    """Completed calls per second while every caller was busy (first end to last start)."""
    ended = sorted(r.ended_at for r in results if r.ended_at is not None and r.ok)
    if not ended:
        return 0.0
    first_end, last_start = ended[0], max(r.submitted_at for r in results)
    if last_start - first_end >= 2.0:
        inside = sum(1 for t in ended if first_end < t <= last_start)
        return inside / (last_start - first_end)
    return len(ended) / max(ended[-1] - min(r.submitted_at for r in results), 1e-3)


def _service_latencies(log: Path, offset: int) -> dict[str, float]:
    """input_to_published_ms per verification id, from the service's outcome_published lines."""
    out = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f:
            if b'"outcome_published"' in line:
                try:
                    event = json.loads(line)
                    value = event["input_to_published_ms"]
                    if value is not None:
                        out[event["verification_id"]] = float(value)
                except (ValueError, KeyError):
                    continue
    return out


def _snapshot_halfway(place: Placer, service: Service, calls: int) -> Placer:
    """``place``, which also has the service take a snapshot when half the calls are done
    (every caller busy: the closed loop's steady state)."""
    done = 0

    async def counting(number: str) -> CallResult:
        nonlocal done
        result = await place(number)
        done += 1
        if done == calls // 2:
            await asyncio.to_thread(service.snapshot)
        return result

    return counting


def _traced(directory: Path, in_flight: int, top: int = 12, *,
            first: int = 0, second: int = 1) -> dict[str, Any]:
    """Python memory per call in flight: the halfway snapshot minus the idle one (or, for
    the soak, the growth per verification: its last snapshot minus its first)."""
    import tracemalloc

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = (tracemalloc.Snapshot.load(str(directory / f"{n}.snapshot"))
                     .filter_traces(ignore) for n in (first, second))
    diff = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    return {
        "max_in_flight": in_flight,
        "traced_kib_per_in_flight_call": round(total / 1024 / max(in_flight, 1), 2),
        "top": [{"site": f"{d.traceback[0].filename}:{d.traceback[0].lineno}",
                 "kib_per_call": round(d.size_diff / 1024 / max(in_flight, 1), 3),
                 "blocks_per_call": round(d.count_diff / max(in_flight, 1), 2)}
                for d in diff[:top]],
    }


def _lines_since(log: Path, offset: int) -> int:
    """How many lines the service logged after ``offset`` (the bench logs at info)."""
    with open(log, "rb") as f:
        f.seek(offset)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _py_spy(pid: int, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
         "--nonblocking", "--rate", "200", "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _loads(args: argparse.Namespace) -> Iterator[Load]:
    for c in (int(x) for x in args.concurrency.split(",") if x):
        yield Load(max(c * args.calls_per_flight, args.min_calls), concurrency=c)


async def _bench(args: argparse.Namespace, sandbox: Sandbox, out: Path,
                 secret: str) -> dict[str, Any]:
    variants = set(args.variants.split(","))
    env = sandbox.env
    ami = AmiClient(host=env["CALLMFA_AMI_HOST"], port=int(env["CALLMFA_AMI_PORT"]),
                    user=env["CALLMFA_AMI_USER"], timeout_s=10, secret=secret)
    await ami.connect()
    loads = list(_loads(args))
    top = max(loads, key=lambda x: x.concurrency)
    most = max(top.concurrency, args.keys_concurrency if args.keys else 0)
    client = VerificationClient.from_url(env["CALLMFA_REDIS_URL"],
                                         max_connections=2 * most + 50, timeout_s=30,
                                         signing_key=env["CALLMFA_SIGNING_KEY"])
    extra: dict[str, Any] = {"machine_before": machine_load()}
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=2 * top.concurrency + 50),
        timeout=aiohttp.ClientTimeout(total=120))
    stats = Redis.from_url(env["CALLMFA_REDIS_URL"])
    bench = Bench(args, sandbox, out, stats, http)
    try:
        await client.__aenter__()
        ours, floor = CallmfaCalls(client, ami), DialplanCalls(ami)
        if args.keys or args.keep_cost:
            if args.keys:
                await _keys(bench, ours, args)
            if args.keep_cost:
                extra["keep_cost"] = await _keep_cost(bench, ami, args)
            return {"rows": bench.rows, **extra}
        api = ApiCalls(http, f"http://127.0.0.1:{env.get('CALLMFA_API_PORT', '4581')}",
                       (sandbox.directory / "api-token").read_text().strip()
                       if "api" in variants else "", ami)
        trace = args.trace_memory
        if trace is not None:
            trace.mkdir(parents=True, exist_ok=True)
            for stale in trace.glob("*.snapshot"):
                stale.unlink()
        service = bench.start_service(
            "fastagi", {} if trace is None else {"CALLMFA_BENCH_TRACEMALLOC": str(trace)})
        # Warm-up (imports, pools, first prompts read from disk): not reported.
        await bench.run("warmup", ours, Load(10, concurrency=5), record=False)
        service.collect()
        idle = memory_kib(service.pid)["VmRSS"]
        # The connection pools grown to the largest load once, so that no run pays for
        # their growth (a new Redis connection costs five round trips); the memory high
        # water mark is the same either way.
        await bench.run("warmup", ours, Load(top.concurrency, concurrency=top.concurrency),
                        record=False)
        if trace is not None:
            service.snapshot()
        for load in loads:
            # Interleaved, so that both see the same machine.
            if "callmfa" in variants:
                profile = args.profile if load is top else None
                await bench.run("callmfa", ours, load, profile=profile,
                                snapshot=trace is not None and load is top)
            if "api" in variants:
                await bench.run("api", api, load)
            if "dialplan" in variants:
                await bench.run("dialplan", floor, load)
        if trace is not None and "callmfa" in variants:
            extra["tracemalloc"] = _traced(trace, top.concurrency)
        if "callmfa" in variants:
            # The callmfa variant's own peak at the largest load (VmHWM is reset before every
            # run): the HTTP API's run at that load is not the Redis contract's memory.
            hwm = next(row for row in bench.rows if row["variant"] == "callmfa"
                       and row["concurrency"] == top.concurrency)["callmfa_rss_kib"]["VmHWM"]
            extra["memory"] = {
                "idle_rss_kib": idle, "hwm_kib": hwm, "max_in_flight": top.concurrency,
                "kib_per_in_flight_call": round((hwm - idle) / max(top.concurrency, 1), 2),
            }
        if args.rate:
            rate = Load(args.rate_calls, rate=args.rate)
            for variant, place in (("callmfa", ours), ("dialplan", floor)):
                if variant in variants:
                    await bench.run(variant, place, rate)
        soak = 10_000 if args.full else args.soak
        if soak and "callmfa" in variants:
            extra["soak"] = await _soak(bench, ours, soak, args.soak_concurrency)
        if "classic" in variants:
            if CLASSIC_SCRIPT.exists():
                bench.start_service("classic", _pairs(
                    args.classic_env or ["CALLMFA_AGI_MODE=classic"]))
                for load in loads:
                    await bench.run("classic", ours, load)
            else:
                extra["classic"] = f"skipped: {CLASSIC_SCRIPT.relative_to(REPO)} is not there"
                print(f"classic AGI: {extra['classic']}", file=sys.stderr)
    finally:
        if bench.service is not None:
            bench.service.stop()
        await client.aclose()
        await stats.aclose()
        await http.close()
        await ami.close()
    return {"rows": bench.rows, **extra}


async def _keys(bench: Bench, place: Placer, args: argparse.Namespace) -> None:
    """The keys runs: one per AMD setting, each after its own warm-up."""
    for amd in args.keys_amd.split(","):
        bench.start_service(f"keys-amd-{amd}", {"CALLMFA_AMD": amd})
        speech = SPEECH if amd == "on" else None
        await bench.run("warmup", place, Load(10, concurrency=5), record=False, keys=True,
                        speech=speech)
        await bench.run(f"keys-amd-{amd}", place,
                        Load(args.keys, concurrency=args.keys_concurrency), keys=True,
                        speech=speech)


async def _keep_cost(bench: Bench, ami: AmiClient, args: argparse.Namespace) -> dict[str, Any]:
    """Asterisk's CPU per call for the floor without and with StoreDTMF, interleaved."""
    if bench.service is None:  # idle, as in the floor's other runs
        bench.start_service("keep-cost", {})
    places = {"dialplan": DialplanCalls(ami), "dialplan-keep": DialplanCalls(ami, KEEP_CONTEXT)}
    await bench.run("warmup", places["dialplan-keep"], Load(20, concurrency=10), record=False)
    cpu: dict[str, list[float]] = {name: [] for name in places}
    for _ in range(3):
        for name, place in places.items():
            row = await bench.run(name, place, Load(args.keep_cost,
                                                    concurrency=args.keys_concurrency))
            cpu[name].append(row["cpu_ms_per_call"]["asterisk"])
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {"asterisk_ms_per_call": cpu, "medians": medians,
            "keep_minus_plain_ms": round(medians["dialplan-keep"] - medians["dialplan"], 3)}


async def _soak(bench: Bench, place: Placer, count: int, concurrency: int) -> dict[str, Any]:
    """RSS before and after ``count`` verifications (no trace: the phone's log would be huge)."""
    assert bench.service is not None
    pid = bench.service.pid
    warm = max(count // 10, concurrency)
    # The soak calls back the warm-up's numbers, as sign-ins do: the bounded cache of number
    # facts (ivr.domain.numbers) is then filled before the first figure, not during the soak.
    pool = list(itertools.islice(bench.dial, warm))
    await bench.run("soak-warmup", place, Load(warm, concurrency=concurrency), trace=False,
                    record=False, dial=iter(pool))
    bench.service.collect()  # both figures after a full gc: garbage is not growth
    before = memory_kib(pid)["VmRSS"]
    trace = bench.args.trace_memory
    if trace is not None:
        bench.service.snapshot()
    row = await bench.run("callmfa-soak", place, Load(count, concurrency=concurrency),
                          trace=False, dial=itertools.cycle(pool))
    bench.service.collect()
    after = memory_kib(pid)["VmRSS"]
    out = {"verifications": count, "after_warmup_rss_kib": before, "after_rss_kib": after,
           "growth_kib": after - before, "ok": row["ok"]}
    if trace is not None:
        bench.service.snapshot()
        last = len(list(trace.glob("*.snapshot"))) - 1
        out["tracemalloc_growth"] = _traced(trace, count, first=last - 1, second=last)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: bring up the sandbox, run, print, tear down."""
    args = _parser().parse_args(argv)
    if args.smoke:
        args.concurrency, args.min_calls, args.calls_per_flight = "2", 4, 2
        args.key_delay_ms, args.rate, args.soak = 100, 0, 0
    if os.geteuid() != 0:
        print("bench: needs root (network namespace, chroot)", file=sys.stderr)
        return 2
    out = args.out or args.sandbox_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    with Sandbox(args.netns, args.sandbox_dir).running() as sandbox:
        secret = Path(sandbox.env["CALLMFA_AMI_SECRET_FILE"]).read_text().strip()
        result = asyncio.run(_bench(args, sandbox, out, secret))
    print(table(result["rows"]))
    print(memory_lines(result))
    if any("keys" in row for row in result["rows"]):
        print(keys_table([row for row in result["rows"] if "keys" in row]))
    final = summary(result)
    print(json.dumps(final), flush=True)
    with open(out / "results.jsonl", "a") as f:
        for row in result["rows"]:
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps(final) + "\n")
    if args.plot:
        from .plot import plot

        plot(result["rows"], args.plot)
    return 0
