"""bench/serve.py's hooks: a gc on SIGUSR1, a tracemalloc snapshot on SIGUSR2."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from bench import serve


def test_collect_writes_its_marker(capfd: pytest.CaptureFixture[str]) -> None:
    serve._collect(0, None)
    assert '"bench_gc_collected"' in capfd.readouterr().err


def test_snapshots_are_numbered(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tracemalloc.start(1)
    try:
        serve._snapshot(tmp_path)
        serve._snapshot(tmp_path)
    finally:
        tracemalloc.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.snapshot", "1.snapshot"]
    assert capfd.readouterr().err.count('"bench_snapshot_taken"') == 2
