"""``callmfa serve`` as the bench runs it: the same process, plus two bench-only signals.

- SIGUSR1: a full gc, so that the bench reads the RSS (idle, before and after the soak)
  without garbage not yet collected;
- SIGUSR2, with ``CALLMFA_BENCH_TRACEMALLOC=DIR`` (``--trace-memory``; tracemalloc is then
  on from the start): a gc, then a tracemalloc snapshot dumped to ``DIR/<n>.snapshot``.

Each writes a marker line to the log when done. The hooks are the bench's, not callmfa's:
run as a script, this installs them, then runs the console script's ``main``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

from ivr.cli import main

COLLECTED = b'{"event":"bench_gc_collected","level":"info"}\n'
SNAPSHOT_TAKEN = b'{"event":"bench_snapshot_taken","level":"info"}\n'
TRACE_FRAMES = 1  # the allocating line: enough for the top sources, and the fastest


def _collect(_signum: int, _frame: FrameType | None) -> None:
    gc.collect()
    os.write(2, COLLECTED)


def _snapshot(directory: Path) -> None:
    gc.collect()
    taken = len(list(directory.glob("*.snapshot")))
    tracemalloc.take_snapshot().dump(str(directory / f"{taken}.snapshot"))
    os.write(2, SNAPSHOT_TAKEN)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _collect)
    if trace := os.environ.get("CALLMFA_BENCH_TRACEMALLOC"):
        directory = Path(trace)
        tracemalloc.start(TRACE_FRAMES)
        signal.signal(signal.SIGUSR2, lambda _s, _f: _snapshot(directory))
    sys.exit(main(["serve"]))
