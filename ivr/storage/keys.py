"""callmfa's Redis key names, and the one Lua script every IVR driver runs (no client here).

Shared by the asyncio store (``callmfa serve``) and the classic AGI driver's sync store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from ..domain.outcome import OutcomeRecord, iso
from ..domain.signing import signed_json
from ..domain.webhooks import OUTCOME_TYPE, outcome_webhook_id

REQUESTS = "callmfa:requests"
GROUP = "originators"
RESULTS_CHANNEL = "callmfa:results"
EVENTS = "callmfa:events"
DEADLETTER = "callmfa:deadletter"
# Webhook and alert deliveries (docs/webhooks.md): the stream of what is to be sent, its
# senders' consumer group, the retry schedule (entry id -> next attempt, epoch ms), the
# failures so far per entry, and what was given up on; the security events come from
# AUDIT through a consumer group per channel (read only where that channel is set up, so
# that a process without the alert settings never takes an entry whose e-mail it cannot
# queue).
WEBHOOKS = "callmfa:webhooks"
WEBHOOK_GROUP = "senders"
WEBHOOK_RETRY = "callmfa:webhooks:retry"
WEBHOOK_FAILURES = "callmfa:webhooks:failures"
WEBHOOK_DEAD = "callmfa:webhooks:dead"
AUDIT_GROUP = "webhooks"  # security webhooks
ALERT_GROUP = "alerts"  # alert e-mails


def result_key(rid: str) -> str:
    """Where the outcome of ``rid`` is stored."""
    return f"callmfa:result:{rid}"


def reported_key(rid: str) -> str:
    """Present once the 0# of ``rid`` is audited (a retried report is then done already)."""
    return f"callmfa:reported:{rid}"


def consumer_key(consumer: str) -> str:
    """The liveness lease of an originator: present while it runs."""
    return f"callmfa:consumer:{consumer}"


def call_key(rid: str) -> str:
    """The call marker of ``rid``: what the IVR needs, and proof that it was dialled."""
    return f"callmfa:call:{rid}"


# The first IVR session that proved its token takes the call; any later one is refused.
# (HSETNX alone would create the marker of a call that was never placed.) The same claim
# again (its reply lost with a connection, and the script retried) is still that session's.
CLAIM_IVR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'ivr_at', ARGV[1]) == 1 then return 1 end
if redis.call('HGET', KEYS[1], 'ivr_at') == ARGV[1] then return 1 end
return 0
"""


STORE_OUTCOME = """
local new = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if not new and redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1  -- this very outcome, by a run whose reply was lost: all was done then
end
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
             'id', ARGV[5], 'event', 'input', 'at', ARGV[8])
end
local stored = 0
if new then
  stored = 1
  redis.call('PUBLISH', ARGV[3], ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
             'id', ARGV[5], 'event', 'finished', 'at', ARGV[6], 'outcome', ARGV[7],
             'user', ARGV[9])
  -- The outcome's webhook, in the same step: never an outcome stored without it. The URL
  -- is the request's callback_url (ARGV[11], or the call marker's), else the default.
  if KEYS[4] then
    local url = ARGV[11]
    if url == '' then url = redis.call('HGET', KEYS[3], 'callback_url') or '' end
    if url == '' then url = ARGV[10] end
    if url ~= '' then
      redis.call('XADD', KEYS[4], '*', 'channel', 'webhook', 'target', url,
                 'webhook_id', ARGV[12], 'type', ARGV[13], 'timestamp', ARGV[6],
                 'created_at', ARGV[14], 'payload', ARGV[1])
    end
  end
end
-- The request's stream entry (KEYS[5], group ARGV[15], id ARGV[16]) is settled now that
-- an outcome is stored (this one or an earlier one): acknowledged and deleted here.
if KEYS[5] then
  redis.call('XACK', KEYS[5], ARGV[15], ARGV[16])
  redis.call('XDEL', KEYS[5], ARGV[16])
end
return stored
"""


def outcome_script_args(
    record: OutcomeRecord,
    ttl_s: int,
    events_maxlen: int,
    input_at: float | None = None,
    *,
    signing_key: bytes = b"",
    webhook_url: str = "",
    callback_url: str = "",
    entry_id: str = "",
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the store-outcome script (shared with the classic AGI driver).

    With ``input_at``, the script first appends the ``input`` event: one round trip
    after the key press instead of two. The outcome's webhook goes to ``callback_url``
    (a validated request's), else to the call marker's, else to ``webhook_url`` (the
    default, CALLMFA_WEBHOOK_URL); with none of them, no webhook. With ``entry_id`` (the
    request's stream entry), the script acknowledges and deletes the entry too, whether
    this outcome or an earlier one is the stored one.
    """
    wire = signed_json(signing_key, record) if signing_key else record.to_json()
    finished = record.finished_at if record.finished_at is not None else time.time()
    keys = [result_key(record.id), EVENTS, call_key(record.id), WEBHOOKS]
    args: list[str | int] = [
        wire, ttl_s, RESULTS_CHANNEL, events_maxlen, record.id,
        iso(record.finished_at) or "", record.outcome.value, iso(input_at) or "",
        record.user or "", webhook_url, callback_url,
        outcome_webhook_id(record.id, int(finished * 1000)), OUTCOME_TYPE, repr(finished),
    ]
    if entry_id:
        keys.append(REQUESTS)
        args += [GROUP, entry_id]
    return keys, args


def event_fields(rid: str, name: str, at: float | None = None, **fields: str) -> dict[str, str]:
    """One ``callmfa:events`` entry, at ``at`` (epoch seconds; default now)."""
    return {"id": rid, "event": name, "at": iso(at or time.time()) or "", **fields}


# Security: blocks, bypasses and their audit trail (shared with the classic AGI driver).
BLOCKED = "callmfa:blocked"
AUDIT = "callmfa:audit"
SECURITY_CHANNEL = "callmfa:security"
AUDIT_MAXLEN = 1_000_000


# The Lua function every script that audits from inside Redis defines first: one
# callmfa:audit entry (``fields``: a flat list of names and values, ``event`` first) and the
# same entry as a JSON object on callmfa:security, in the script's atomic step.
AUDIT_LUA = f"""
local function audit(stream, fields)
  local entry = {{}}
  for i = 1, #fields, 2 do entry[fields[i]] = fields[i + 1] end
  redis.call('XADD', stream, 'MAXLEN', '~', {AUDIT_MAXLEN}, '*', unpack(fields))
  redis.call('PUBLISH', '{SECURITY_CHANNEL}', cjson.encode(entry))
end
"""


def bypass_key(user: str) -> str:
    """The one-time bypass of ``user`` (exists while it may be used)."""
    return f"callmfa:bypass:{user}"


# KEYS: the block set, the user's bypass key, the audit stream, [a call's report marker].
# ARGV: op, user, until_ms or bypass seconds, audit maxlen, channel, message, audit fields...
RECORD_AUDIT = """
-- KEYS[4], when given, marks the report of one call (a 0#) as written: the same report run
-- again after its reply was lost is then done already, not audited (and alerted) twice.
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then return 1 end
local op, user = ARGV[1], ARGV[2]
local changed = 1
if op == 'blocked' then
  -- A block is only lengthened, unless the audit facts say replace=yes (callmfa block
  -- --replace): a 12 h block must not cut short a 90-day fraud block.
  local replace = false
  for i = 7, #ARGV - 1, 2 do
    if ARGV[i] == 'replace' then replace = ARGV[i + 1] == 'yes' end
  end
  local current = tonumber(redis.call('ZSCORE', KEYS[1], user) or '0')
  if replace or current < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[3], user)
  else
    changed = 0
  end
elseif op == 'unblocked' then
  changed = redis.call('ZREM', KEYS[1], user)
elseif op == 'bypass_granted' then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
end
if changed == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 7))
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  if KEYS[4] then redis.call('SET', KEYS[4], '1', 'EX', 3600) end  -- past any retry
end
return changed
"""


def audit_script_args(
    event: str, user: str, value: int, facts: Mapping[str, str]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the audit script: ``blocked`` (until ``value`` ms; only lengthens a
    block unless ``facts`` has ``replace="yes"``), ``unblocked``, ``bypass_granted``
    (``value`` seconds), or any other event, audited and published."""
    entry = {"event": event, "user": user, "at": iso(time.time()) or "", **facts}
    args: list[str | int] = [event, user, value, AUDIT_MAXLEN, SECURITY_CHANNEL,
                             json.dumps(entry, separators=(",", ":"))]
    for k, v in entry.items():
        args += [k, v]
    return [BLOCKED, bypass_key(user), AUDIT], args


def fraud_report_args(
    *, rid: str, user: str, number: str, context: str, block_s: float
) -> tuple[list[str], list[str | int]]:
    """The audit script's arguments for a 0#: block the user for ``block_s`` (0: audit only),
    once per call: run again (its reply lost), it audits and alerts nothing more."""
    facts = {"actor": "ivr", "id": rid, "number": number, "context": context}
    if block_s <= 0:
        keys, args = audit_script_args("fraud_reported", user, 0, facts)
    else:
        until = time.time() + block_s
        keys, args = audit_script_args(
            "blocked", user, int(until * 1000),
            {**facts, "reason": "fraud_reported", "until": iso(until) or ""})
    return [*keys, reported_key(rid)], args
