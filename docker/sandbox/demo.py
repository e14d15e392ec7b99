"""`make demo`: one real verification, end to end, inside the running sandbox.

A simulated phone (sipp) answers and presses '#' after a second and a half; the demo
queues a verification request in Redis exactly as a sign-in service would, prints the
progress events as they happen and the outcome, with the time from the key press reaching
Asterisk to the outcome being in Redis.

The sandbox runs callmfa's real throttles (one call per user and per number a minute, five
an hour) and its Redis keeps them between runs, so each run verifies a user and a number
of its own: run N is user demo-N at +1 201 555 01NN (every number reaches the simulated
phone). The run counter is the sandbox-only key callmfa:demo:runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome
from ivr.settings import Settings
from ivr.testing import PhoneBehaviour, SippPhone

RUNS_KEY = "callmfa:demo:runs"
NUMBERS = 100  # +12015550100 to +12015550199: fictional numbers, each used once per 100 runs


def _fresh(run: int) -> tuple[str, str]:
    """The user and the number of run ``run`` (1, 2, ...)."""
    return f"demo-{run}", f"+1201555{100 + (run - 1) % NUMBERS:04d}"


async def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="callmfa-demo-"))
    # The user says "Hello." on answering (machine detection listens), then presses #.
    behaviour = PhoneBehaviour(keys="#", key_delay_ms=1500, speech="Hello.")
    with SippPhone(behaviour, workdir=workdir, address=os.environ["CALLMFA_PHONE"]) as phone:
        redis = Redis.from_url(os.environ["CALLMFA_REDIS_URL"], socket_timeout=5)
        try:
            run = int(await redis.incr(RUNS_KEY))
        finally:
            await redis.aclose()
        user, number = _fresh(run)
        async with VerificationClient.from_settings(Settings.load()) as client:
            print(f"callmfa demo, run {run}: verifying user '{user}' by calling {number}")
            print("  (a simulated phone answers and presses # after 1.5 s; callmfa's throttles "
                  "allow one call\n  per user and per number a minute, so each run has a "
                  "user and a number of its own)\n")
            since = int(time.time() * 1000) - 1
            rid = await client.submit(user=user, phone=number, context={"app": "demo"})
            print(f"request {rid} queued on callmfa:requests")
            async for ev in client.watch(rid, since_ms=since, timeout_s=60):
                extra = f"  -> {ev.fields['outcome']}" if "outcome" in ev.fields else ""
                print(f"  {ev.at}  {ev.event}{extra}")
            record = await client.wait(rid, 5)
        phone_ok = phone.wait(15) == 0
    if record is None:
        print("no outcome: see .sandbox/logs/", file=sys.stderr)
        return 1
    print(f"\noutcome: {record.outcome.value}" + (f" ({record.detail})" if record.detail else ""))

    def ms(a: float | None, b: float | None) -> str:
        return f"{(b - a) * 1000:.1f} ms" if a is not None and b is not None else "n/a"

    print(f"  request -> call placed:          {ms(record.requested_at, record.call_started_at)}")
    print(f"  call placed -> answered:         {ms(record.call_started_at, record.answered_at)}")
    print(f"  '#' at Asterisk -> outcome in Redis: {_logged_ms(rid)} (measured by callmfa serve)")
    print(f"  the phone saw the call as scripted: {'yes' if phone_ok else 'NO'}")
    return 0 if record.outcome is Outcome.APPROVED and phone_ok else 1


def _logged_ms(rid: str) -> str:
    """input_to_published_ms from the service's log line for this verification."""
    log = Path(os.environ["CALLMFA_SANDBOX_DIR"]) / "logs" / "callmfa.log"
    for line in log.read_text().splitlines():
        if rid in line and '"outcome_published"' in line:
            return f"{json.loads(line)['input_to_published_ms']} ms"
    return "n/a"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
