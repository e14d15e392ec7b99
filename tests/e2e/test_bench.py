"""The benchmark (bench/, `make bench`) runs end to end, so that it cannot rot."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from ..conftest import REPO


class TestBenchSmoke:
    def test_smoke_run_prints_valid_json(self) -> None:
        """`python -m bench --smoke` brings up its own sandbox, places real calls for callmfa,
        the dialplan floor and the classic AGI script (CALLMFA_AGI_MODE=classic), and prints one
        JSON line per run and a summary."""
        netns = "cmbt-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324
        run = subprocess.run(
            [sys.executable, "-m", "bench", "--smoke", "--netns", netns,
             "--sandbox-dir", str(REPO / ".sandbox-benchtest"),
             "--variants", "callmfa,api,dialplan,classic"],
            cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
        rows = [x for x in lines if "variant" in x]
        assert [r["variant"] for r in rows] == ["callmfa", "api", "dialplan", "classic"]
        for row in rows:
            assert row["calls"] == row["ok"] == 4, row["failures"]
            # The ramp's calls are left out of the latencies: the last two remain.
            assert row["latency_ms"]["request_to_invite"]["n"] == 2
            assert row["cpu_ms_per_call"]["asterisk"] > 0
        assert rows[0]["latency_ms"]["key_to_outcome"]["n"] == 2
        assert rows[1]["latency_ms"]["key_to_outcome"]["n"] == 2
        assert rows[3]["latency_ms"]["key_to_outcome"]["n"] == 2
        # The classic scripts are Asterisk's children: their CPU is counted, reaped.
        assert rows[3]["cpu_ms_per_call"]["asterisk_children"] > 0
        # What Redis ran per verification, and what callmfa sent (its /metrics).
        assert rows[0]["redis"]["commands"] > rows[0]["redis"]["callmfa_commands"] > 0
        assert rows[0]["redis"]["callmfa_round_trips"] > 0
        assert "round trips/call" in run.stdout  # the table
        final = lines[-1]
        assert final["summary"] is True
        assert "throughput_ours_over_floor" in final["ratios"]["2"]
        assert "throughput_classic_over_floor" in final["ratios"]["2"]


class TestBenchKeys:
    def test_keys_run_counts_every_key(self) -> None:
        """`python -m bench --keys N`: each phone presses '#' at a random moment 0-3 s after
        answering (AMD off, then on with phones that say "Hello."); every '#' counts on the
        first prompt, and the table and the lost_keys targets are printed."""
        netns = "cmbk-" + hashlib.sha1(str(REPO).encode()).hexdigest()[:8]  # noqa: S324
        run = subprocess.run(
            [sys.executable, "-m", "bench", "--keys", "8", "--keys-concurrency", "4",
             "--netns", netns, "--sandbox-dir", str(REPO / ".sandbox-benchkeys")],
            cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
        rows = [x for x in lines if "variant" in x]
        assert [r["variant"] for r in rows] == ["keys-amd-off", "keys-amd-on"]
        for row in rows:
            keys = row["keys"]
            assert keys["calls"] == keys["keys_sent"] == keys["approved_first_prompt"] == 8, keys
            assert keys["lost_keys"] == 0
            assert keys["key_to_outcome_ms"]["n"] == 8
            assert 0 <= keys["key_delay_after_answer_ms"]["min"] <= \
                keys["key_delay_after_answer_ms"]["max"] <= 3100
        assert rows[1]["keys"]["amd"] == {"HUMAN": 8}
        assert "1st prompt" in run.stdout  # the keys table
        targets = lines[-1]["targets"]
        assert targets["lost_keys==0@keys-amd-on"]["met"] is True
