"""``callmfa serve`` as the bench runs it: the same process, plus SIGUSR1 -> a full gc.

The bench reads the service's RSS after a collection (idle, and before and after the
soak), so that garbage not yet collected is not taken for memory held by calls. The hook
is the bench's, not callmfa's: run as a script, it installs the handler, then runs the
console script's ``main``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from types import FrameType

from ivr.cli import main

COLLECTED = b'{"event":"bench_gc_collected","level":"info"}\n'


def _collect(_signum: int, _frame: FrameType | None) -> None:
    gc.collect()
    os.write(2, COLLECTED)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _collect)
    sys.exit(main(["serve"]))
