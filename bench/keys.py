"""The keys run (``--keys N``): does every '#' count, whenever the phone presses it?

Each phone presses '#' at a moment drawn for each call, uniform from 0 to 3 s after the
answer: before the IVR runs (during AMD, while the session starts), between two AGI
commands, or during the greeting. Each call is classified from three sources, the bench's
outcome, the phone's message trace and the service's log lines of that verification id:

- ``no_key_sent``: the phone never sent its '#' (the call failed before: overload, a ring
  timeout). Not a lost key: no key was pressed. Counted by outcome.
- ``machine``: AMD said MACHINE and the call was not approved. By design a MACHINE verdict
  wins over any key (``machine_answered``); for initial silence with a key kept (a person on
  mute) the keys kept during detection are dropped and the greeting asks for a fresh '#',
  which the scripted phone never presses (``no_input``). Counted apart, with their ids.
- ``first_prompt``: approved, with at most one key collection (no re-prompt), by how the '#'
  was counted:

  - ``before_ivr``: kept by StoreDTMF and read with the IVR's first command (no collection);
  - ``by_prompt``: caught by the greeting's collection itself;
  - ``drained``: it came between two AGI commands; the '#' came from what StoreDTMF kept,
    read with the collection's result (the dialplan's callmfa-collect returns at once:
    ``kept``; before it, or with an older dialplan, the collection timed out first).

- ``lost``: the phone sent its '#' (and Asterisk took it: 200 to the INFO), yet the call was
  not approved on its first prompt: another outcome, or a re-prompt. Must be 0.

Key -> outcome: the phone's INFO in its trace to the outcome at the bench's client.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import CallResult
from .phone import PhoneTimes
from .report import percentiles

KEY_DELAY_MAX_MS = 3000
SPEECH = "Hello."  # with AMD on, a person who says so (AMD: HUMAN)


@dataclass
class ServiceTrace:
    """What the service logged about one verification."""

    early_keys: int | None = None
    amd: str | None = None
    collections: list[bool] = field(default_factory=list)  # drained, per collection
    outcome: str | None = None


def service_traces(log: Path, offset: int) -> dict[str, ServiceTrace]:
    """Per verification id, from the service's log lines after ``offset``."""
    out: dict[str, ServiceTrace] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f:
            if not any(name in line for name in
                       (b'"ivr_started"', b'"dtmf_collected"', b'"outcome_published"')):
                continue
            try:
                event = json.loads(line)
                trace = out.setdefault(event["verification_id"], ServiceTrace())
            except (ValueError, KeyError):
                continue
            name = event.get("event")
            if name == "ivr_started":
                trace.early_keys = int(event.get("early_keys") or 0)
                trace.amd = event.get("amd")
            elif name == "dtmf_collected":
                # Drained: the '#' came before the collection, which timed out (before
                # callmfa-collect) or returned at once with the kept keys.
                trace.collections.append(bool(event.get("timed_out") or event.get("kept")))
            elif name == "outcome_published":
                trace.outcome = event.get("outcome")
    return out


def classify(result: CallResult, times: PhoneTimes | None, trace: ServiceTrace | None) -> str:
    """One call's class (see the module docstring)."""
    if times is None or times.key_at is None:
        return "no_key_sent"
    if result.outcome == "machine_answered" or (
            trace is not None and trace.amd == "MACHINE" and result.outcome != "approved"):
        return "machine"
    collections = trace.collections if trace is not None else []
    if result.outcome != "approved" or len(collections) > 1:
        return "lost"
    if not collections:
        return "before_ivr"
    return "drained" if collections[0] else "by_prompt"


def key_report(results: list[CallResult], phone: dict[str, PhoneTimes],
               traces: dict[str, ServiceTrace]) -> dict[str, Any]:
    """The keys run's figures: classes, lost keys, key -> outcome, the delays drawn."""
    classes: Counter[str] = Counter()
    no_key: Counter[str] = Counter()
    lost: list[dict[str, Any]] = []
    machine: list[dict[str, Any]] = []
    amd: Counter[str] = Counter()
    key_to_outcome: list[float] = []
    delays: list[float] = []
    by_class: dict[str, list[float]] = {}
    for r in results:
        times = phone.get(r.number)
        trace = traces.get(r.rid)
        kind = classify(r, times, trace)
        classes[kind] += 1
        if trace is not None and trace.amd:
            amd[trace.amd] += 1
        if times is None or times.key_at is None:  # kind == "no_key_sent"
            no_key[r.outcome] += 1
            continue
        if times.answered_at is not None:
            delays.append((times.key_at - times.answered_at) * 1000)
        if kind in ("lost", "machine"):
            (lost if kind == "lost" else machine).append({
                "rid": r.rid, "number": r.number, "outcome": r.outcome,
                "collections": len(trace.collections) if trace else None,
                "early_keys": trace.early_keys if trace else None,
            })
        if r.outcome_at is not None and kind != "machine":
            ms = (r.outcome_at - times.key_at) * 1000
            key_to_outcome.append(ms)
            by_class.setdefault(kind, []).append(ms)
    first = sum(classes[k] for k in ("before_ivr", "by_prompt", "drained"))
    return {
        "calls": len(results), "keys_sent": len(results) - classes["no_key_sent"],
        "lost_keys": classes["lost"], "approved_first_prompt": first,
        "classes": dict(classes), "no_key_sent_by_outcome": dict(no_key),
        "amd": dict(amd), "lost": lost[:20], "machine": machine[:20],
        "key_to_outcome_ms": percentiles(key_to_outcome),
        "key_to_outcome_ms_by_class": {k: percentiles(v) for k, v in sorted(by_class.items())},
        "key_delay_after_answer_ms": {
            **percentiles(delays), "min": round(min(delays), 2) if delays else None},
    }


def keys_table(rows: list[dict[str, Any]]) -> str:
    """One line per keys run."""
    head = ("run", "calls", "# sent", "lost", "1st prompt", "before IVR", "by prompt",
            "drained", "no # sent", "machine", "#>outcome p50", "p99", "max", "delay min-max")
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        k = r["keys"]
        c, t, d = k["classes"], k["key_to_outcome_ms"], k["key_delay_after_answer_ms"]
        lines.append(tuple(str(x) for x in (
            r["variant"], k["calls"], k["keys_sent"], k["lost_keys"], k["approved_first_prompt"],
            c.get("before_ivr", 0), c.get("by_prompt", 0), c.get("drained", 0),
            c.get("no_key_sent", 0), c.get("machine", 0), t["p50"], t["p99"], t["max"],
            f"{d['min']}-{d['max']}",
        )))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in lines)

