"""callmfa's Redis key names, and the one Lua script every IVR driver runs (no client here).

Shared by the asyncio store (``callmfa serve``) and the classic AGI driver's sync store.
"""

from __future__ import annotations

import time

from ..domain.outcome import OutcomeRecord, iso
from ..domain.signing import signed_json

REQUESTS = "callmfa:requests"
GROUP = "originators"
RESULTS_CHANNEL = "callmfa:results"
EVENTS = "callmfa:events"
DEADLETTER = "callmfa:deadletter"


def result_key(rid: str) -> str:
    """Where the outcome of ``rid`` is stored."""
    return f"callmfa:result:{rid}"


def consumer_key(consumer: str) -> str:
    """The liveness lease of an originator: present while it runs."""
    return f"callmfa:consumer:{consumer}"


def call_key(rid: str) -> str:
    """The call marker of ``rid``: what the IVR needs, and proof that it was dialled."""
    return f"callmfa:call:{rid}"




STORE_OUTCOME = """
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
             'id', ARGV[5], 'event', 'input', 'at', ARGV[8])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
             'id', ARGV[5], 'event', 'finished', 'at', ARGV[6], 'outcome', ARGV[7],
             'user', ARGV[9])
  return 1
end
return 0
"""


def outcome_script_args(
    record: OutcomeRecord,
    ttl_s: int,
    events_maxlen: int,
    input_at: float | None = None,
    *,
    signing_key: bytes = b"",
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the store-outcome script (shared with the classic AGI driver).

    With ``input_at``, the script first appends the ``input`` event: one round trip
    after the key press instead of two.
    """
    wire = signed_json(signing_key, record) if signing_key else record.to_json()
    return [result_key(record.id), EVENTS], [
        wire, ttl_s, RESULTS_CHANNEL, events_maxlen, record.id,
        iso(record.finished_at) or "", record.outcome.value, iso(input_at) or "",
        record.user or "",
    ]


def event_fields(rid: str, name: str, **fields: str) -> dict[str, str]:
    """One ``callmfa:events`` entry."""
    return {"id": rid, "event": name, "at": iso(time.time()) or "", **fields}
