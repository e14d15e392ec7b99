"""The docs' plot: throughput and p99 latency against calls in flight, per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLE = {"callmfa": ("C0", "o", "callmfa (FastAGI + Redis)"),
         "dialplan": ("C2", "s", "pure dialplan (floor)"),
         "classic": ("C3", "^", "classic AGI (pyst2)")}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG with two panels: calls/s, and p99 latencies, against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, (color, marker, label) in STYLE.items():
        runs = sorted((r for r in rows if r["variant"] == variant and r["concurrency"]),
                      key=lambda r: r["concurrency"])
        if not runs:
            continue
        xs = [r["concurrency"] for r in runs]
        left.plot(xs, [r["calls_per_s"] for r in runs], color=color, marker=marker, label=label)
        right.plot(xs, [r["latency_ms"]["request_to_invite"]["p99"] for r in runs], color=color,
                   marker=marker, label=f"{label}: request -> INVITE")
        if variant != "dialplan":
            right.plot(xs, [r["latency_ms"]["key_to_outcome"]["p99"] for r in runs],
                       color=color, marker=marker, linestyle="--",
                       label=f"{label}: '#' -> outcome")
    left.set(xscale="log", xlabel="calls in flight", ylabel="completed calls / s",
             title="Throughput")
    right.set(xscale="log", yscale="log", xlabel="calls in flight", ylabel="p99 latency (ms)",
              title="p99 latency")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
