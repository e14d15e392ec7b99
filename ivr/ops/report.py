"""``callmfa report``: outcomes per day, per user and per value, from ``callmfa:events``,
and the security audit (blocks, unblocks, bypasses, fraud reports) from ``callmfa:audit``.

The ``finished`` events carry the outcome and the user; for older entries written before
the user was added, the result key is read instead while it lives. Events other than the
progress events are counted by name, so the report shows them without knowing their
meaning. Each audit entry is listed with who did it and why.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from redis.asyncio import Redis

from ..domain.outcome import Outcome, OutcomeRecord
from ..storage.keys import AUDIT
from ..storage.store import EVENTS, result_key

PROGRESS_EVENTS = {"queued", "dialing", "ringing", "answered", "input", "finished"}
UNKNOWN_USER = "(unknown)"
BATCH = 1000


@dataclass(frozen=True)
class Finished:
    """One verification's end, as the events stream recorded it."""

    id: str
    at: str
    user: str
    outcome: str

    @property
    def day(self) -> str:
        """The UTC day (YYYY-MM-DD)."""
        return self.at[:10]


@dataclass(frozen=True)
class Audited:
    """One ``callmfa:audit`` entry: a block, an unblock, a bypass, a fraud report."""

    at: str
    event: str
    user: str
    actor: str = ""
    reason: str = ""
    until: str = ""
    id: str = ""

    @property
    def day(self) -> str:
        """The UTC day (YYYY-MM-DD)."""
        return self.at[:10]


@dataclass
class Report:
    """Everything the report prints."""

    finished: list[Finished] = field(default_factory=list)
    other: Counter[tuple[str, str]] = field(default_factory=Counter)  # (day, event) -> count
    audit: list[Audited] = field(default_factory=list)

    def by(self, key: str) -> dict[str, Counter[str]]:
        """{day or user: Counter(outcome)}."""
        table: dict[str, Counter[str]] = {}
        for f in self.finished:
            table.setdefault(getattr(f, key), Counter())[f.outcome] += 1
        return table

    def outcomes(self) -> Counter[str]:
        """Verifications per outcome value."""
        return Counter(f.outcome for f in self.finished)


def parse_bound(text: str) -> int:
    """A day (``2026-11-28``) or an ISO time with a zone, as epoch milliseconds."""
    if len(text) == 10:
        when = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    else:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone")
    return int(when.timestamp() * 1000)


async def collect(redis: Redis, *, since_ms: int | None = None,
                  until_ms: int | None = None) -> Report:
    """Read the events and audit streams between the bounds (inclusive) into a
    :class:`Report`."""
    report = Report()
    no_user: list[int] = []
    async for fields in _entries(redis, EVENTS, since_ms, until_ms):
        name = fields.get("event", "")
        at = fields.get("at", "")
        if name == "finished":
            if "user" not in fields:
                no_user.append(len(report.finished))
            report.finished.append(Finished(fields.get("id", ""), at,
                                            fields.get("user") or UNKNOWN_USER,
                                            fields.get("outcome", "")))
        elif name not in PROGRESS_EVENTS:
            report.other[(at[:10], name)] += 1
    async for fields in _entries(redis, AUDIT, since_ms, until_ms):
        report.audit.append(Audited(
            at=fields.get("at", ""), event=fields.get("event", ""),
            user=fields.get("user") or UNKNOWN_USER, actor=fields.get("actor", ""),
            reason=fields.get("reason", ""), until=fields.get("until", ""),
            id=fields.get("id", "")))
    await _fill_users(redis, report.finished, no_user)
    return report


async def _entries(redis: Redis, stream: str, since_ms: int | None,
                   until_ms: int | None) -> AsyncIterator[dict[str, str]]:
    """The fields of each entry of ``stream`` between the bounds, in batches."""
    lower = f"{since_ms}-0" if since_ms is not None else "-"
    upper = f"{until_ms}-18446744073709551615" if until_ms is not None else "+"
    while True:
        entries: Any = await redis.xrange(stream, min=lower, max=upper, count=BATCH)
        for _entry_id, raw in entries:
            yield {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        if len(entries) < BATCH:
            return
        lower = "(" + entries[-1][0].decode()


async def _fill_users(redis: Redis, finished: list[Finished], indexes: list[int]) -> None:
    for start in range(0, len(indexes), BATCH):
        chunk = indexes[start:start + BATCH]
        raws = await redis.mget([result_key(finished[i].id) for i in chunk])
        for i, raw in zip(chunk, raws, strict=True):
            if raw is not None:
                user = OutcomeRecord.from_json(raw).user
                f = finished[i]
                finished[i] = Finished(f.id, f.at, user or UNKNOWN_USER, f.outcome)


def _columns(report: Report) -> list[str]:
    seen = report.outcomes()
    return [o.value for o in Outcome if o.value in seen] + sorted(
        o for o in seen if o not in {v.value for v in Outcome})


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    def cell(text: str, width: int) -> str:
        numeric = text.rstrip("%").replace(".", "", 1).isdigit()
        return text.rjust(width) if numeric else text.ljust(width)

    return "\n".join(
        "  ".join(cell(c, w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_text(report: Report) -> str:
    """Sections for people: per day, per user, per outcome, fraud reports, other events,
    the security audit."""
    if not report.finished and not report.other and not report.audit:
        return "no verifications in callmfa:events and no callmfa:audit entries for this " \
               "period\n"
    cols = _columns(report)
    out = [f"{len(report.finished)} verifications"]
    for title, key in (("per day (UTC)", "day"), ("per user", "user")):
        table = report.by(key)
        order = sorted(table) if key == "day" else sorted(
            table, key=lambda k: (-sum(table[k].values()), k))
        out += ["", title, _table([key, "total", *cols], (
            [k, str(sum(table[k].values())), *(str(table[k][c]) for c in cols)] for k in order))]
    total = max(len(report.finished), 1)
    out += ["", "per outcome", _table(["outcome", "count", "share"], (
        [c, str(n), f"{100 * n / total:.1f}%"] for c, n in report.outcomes().most_common()))]
    frauds = [f for f in report.finished if f.outcome == Outcome.FRAUD_REPORTED.value]
    out += ["", f"fraud reports ({len(frauds)})"]
    if frauds:
        out.append(_table(["at", "user", "id"], ([f.at, f.user, f.id] for f in frauds)))
    if report.other:
        rows = ([d, e, str(n)] for (d, e), n in sorted(report.other.items()))
        out += ["", "other events", _table(["day", "event", "count"], rows)]
    counts = Counter(a.event for a in report.audit)
    summary = ", ".join(f"{n} {event}" for event, n in sorted(counts.items()))
    out += ["", f"security audit, callmfa:audit ({summary or 'none'})"]
    if report.audit:
        out.append(_table(["at", "event", "user", "actor", "reason", "until", "id"], (
            [a.at, a.event, a.user, a.actor, a.reason, a.until, a.id] for a in report.audit)))
    return "\n".join(out) + "\n"


def render_csv(report: Report) -> str:
    """One row per (day, user, outcome) with its count; other events as ``event:<name>``,
    audit entries per (day, user) as ``audit:<name>``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["day", "user", "outcome", "count"])
    counts = Counter((f.day, f.user, f.outcome) for f in report.finished)
    for (day, user, outcome), n in sorted(counts.items()):
        writer.writerow([day, user, outcome, n])
    for (day, name), n in sorted(report.other.items()):
        writer.writerow([day, "", f"event:{name}", n])
    audited = Counter((a.day, a.user, a.event) for a in report.audit)
    for (day, user, name), n in sorted(audited.items()):
        writer.writerow([day, user, f"audit:{name}", n])
    return buf.getvalue()
