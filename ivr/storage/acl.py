"""The Redis commands each side of callmfa needs: the one list behind the ACL docs and checks.

``docs/operations.md``'s ``ACL SETUSER`` line and ``docker/redis/callmfa.acl`` are generated
from these lists (``make docs``, :mod:`ivr.ops.reference`), and ``callmfa check`` asks Redis
with ``ACL DRYRUN`` whether the configured user may run each one, with a sample command on
callmfa's own keys. Commands that the Lua scripts call count too: Redis checks them against
the caller's ACL when the script runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .keys import (
    AUDIT,
    EVENTS,
    GROUP,
    REQUESTS,
    RESULTS_CHANNEL,
    SECURITY_CHANNEL,
    WEBHOOK_FAILURES,
    WEBHOOK_GROUP,
    WEBHOOK_RETRY,
    WEBHOOKS,
)

_SHA = "0" * 40  # any SHA1: DRYRUN checks the permission, it does not run the script


@dataclass(frozen=True)
class Needed:
    """One command a user needs: its ACL rule (``xgroup|create``) and a sample of it."""

    rule: str
    sample: tuple[str, ...]

    @property
    def name(self) -> str:
        """The command as people write it (``XGROUP CREATE``)."""
        return self.rule.replace("|", " ").upper()


def _n(rule: str, *sample: str) -> Needed:
    return Needed(rule, (rule.split("|")[0].upper(), *rule.split("|")[1:], *sample))


# callmfa serve (originator and IVR), the classic AGI script, check, report and the admin
# commands, on ~callmfa:* and &callmfa:*.
SERVICE: tuple[Needed, ...] = (
    _n("ping"),
    _n("time"),  # the admission script's clock
    _n("get", "callmfa:result:x"),
    _n("set", "callmfa:consumer:x", "1", "PX", "1000"),
    _n("getdel", "callmfa:bypass:x"),
    _n("mget", "callmfa:consumer:x"),
    _n("exists", "callmfa:call:x"),
    _n("del", "callmfa:consumer:x"),
    _n("expire", "callmfa:call:x", "60"),
    _n("pexpire", "callmfa:rate:user:x", "1000"),
    _n("pttl", "callmfa:cooldown:user:x"),
    _n("hset", "callmfa:call:x", "answered_at", "0"),
    _n("hsetnx", "callmfa:call:x", "ivr_at", "0"),
    _n("hgetall", "callmfa:call:x"),
    _n("hget", "callmfa:pin:x", "hash"),  # a PIN hash upgrade checks the hash it replaces
    _n("hmget", "callmfa:pin:x", "locked_until", "denials"),  # the PIN unlock script
    _n("hexists", "callmfa:pin:x", "hash"),  # the PIN set script
    _n("hincrby", "callmfa:pin:x", "denials", "1"),
    # The HTTP API: its tokens (callmfa:tokens, callmfa:token:*) and per-token rate limits.
    _n("incr", "callmfa:api:rate:x:0"),
    _n("hdel", "callmfa:tokens", "x"),
    # The user directory, callmfa:user:<user>: serve reads it, `callmfa user` writes it
    # (HSET and DEL in audited scripts).
    _n("hgetall", "callmfa:user:x"),
    _n("hset", "callmfa:user:x", "phone", "+12015550100"),
    _n("del", "callmfa:user:x"),
    _n("scan", "0", "MATCH", "callmfa:user:*", "COUNT", "1000"),
    _n("zadd", "callmfa:blocked", "0", "x"),
    _n("zrem", "callmfa:blocked", "x"),
    _n("zscore", "callmfa:blocked", "x"),
    _n("zcard", "callmfa:rate:global"),
    _n("zrange", "callmfa:blocked", "0", "-1"),
    _n("zremrangebyscore", "callmfa:blocked", "-inf", "0"),
    # serve's start-up moves PINs kept under a name from before normalisation
    _n("scan", "0", "MATCH", "callmfa:pin:*", "COUNT", "1000"),
    _n("renamenx", "callmfa:pin:x", "callmfa:pin:y"),
    _n("publish", RESULTS_CHANNEL, "x"),
    _n("subscribe", RESULTS_CHANNEL),
    _n("unsubscribe", RESULTS_CHANNEL),
    _n("xadd", EVENTS, "*", "id", "x"),
    _n("xread", "COUNT", "1", "STREAMS", EVENTS, "0-0"),
    _n("xrange", EVENTS, "-", "+", "COUNT", "1"),
    _n("xrevrange", AUDIT, "+", "-", "COUNT", "1"),
    _n("xlen", REQUESTS),
    _n("xgroup|create", REQUESTS, GROUP, "0", "MKSTREAM"),
    _n("xinfo|groups", REQUESTS),
    _n("xreadgroup", "GROUP", GROUP, "c", "COUNT", "1", "STREAMS", REQUESTS, ">"),
    _n("xack", REQUESTS, GROUP, "0-1"),
    # A settled request is acked and deleted in one step: in the outcome's own script, in
    # Store.ack_all's, or in one MULTI/EXEC (Store.ack).
    _n("xdel", REQUESTS, "0-1"),
    _n("multi"),
    _n("exec"),
    _n("xpending", REQUESTS, GROUP, "-", "+", "10"),
    _n("xclaim", REQUESTS, GROUP, "c", "0", "0-1"),
    # Webhook and alert deliveries (ivr.storage.webhooks): first attempts taken over from a
    # dead process, the retry schedule, the failure counts.
    _n("xautoclaim", WEBHOOKS, WEBHOOK_GROUP, "c", "0", "0-0", "COUNT", "1"),
    _n("zrangebyscore", WEBHOOK_RETRY, "-inf", "0", "LIMIT", "0", "1"),
    _n("hdel", WEBHOOK_FAILURES, "0-1"),
    _n("evalsha", _SHA, "1", "callmfa:x"),
    _n("eval", "return 1", "1", "callmfa:x"),  # the classic AGI script's sync client
    _n("script|load", "return 1"),
    _n("wait", "1", "500"),  # CALLMFA_REDIS_WAIT_REPLICAS: the claim and the outcome
    # `callmfa check` asks Redis itself whether each of these is allowed: it reveals
    # permissions and changes nothing.
    _n("acl|whoami"),
    _n("acl|dryrun", "callmfa", "ping"),
)

# The sign-in service: add requests, read outcomes and progress, nothing else.
SIGNIN: tuple[Needed, ...] = (
    _n("ping"),
    _n("xadd", REQUESTS, "*", "request", "{}"),
    _n("wait", "1", "500"),  # CALLMFA_REDIS_WAIT_REPLICAS: the request entry
    _n("get", "callmfa:result:x"),
    _n("xread", "COUNT", "1", "STREAMS", EVENTS, "0-0"),
    _n("subscribe", RESULTS_CHANNEL),
    _n("unsubscribe", RESULTS_CHANNEL),
)

# The security team: the alerts on callmfa:security and the audit stream, read only.
SECURITY: tuple[Needed, ...] = (
    _n("ping"),
    _n("subscribe", SECURITY_CHANNEL),
    _n("unsubscribe", SECURITY_CHANNEL),
    _n("xread", "COUNT", "1", "STREAMS", AUDIT, "0-0"),
    _n("xrange", AUDIT, "-", "+", "COUNT", "1"),
    _n("xrevrange", AUDIT, "+", "-", "COUNT", "1"),
)


@dataclass(frozen=True)
class AclUser:
    """One shipped ACL user: its name, what it may touch, and its commands."""

    name: str
    selectors: tuple[str, ...]
    commands: tuple[Needed, ...]

    def rules(self) -> list[str]:
        """The ACL rules after the password: keys and channels, then only these commands."""
        rules = dict.fromkeys(f"+{n.rule}" for n in self.commands)  # a rule once, in order
        return ["resetkeys", "resetchannels", *self.selectors, "-@all", *rules]


USERS: tuple[AclUser, ...] = (
    AclUser("callmfa-signin", (f"%W~{REQUESTS}", "%R~callmfa:result:*", f"%R~{EVENTS}",
                               f"&{RESULTS_CHANNEL}"), SIGNIN),
    AclUser("callmfa-service", ("~callmfa:*", "&callmfa:*"), SERVICE),
    AclUser("callmfa-security", (f"%R~{AUDIT}", f"&{SECURITY_CHANNEL}"), SECURITY),
)


PLACEHOLDER = "CHANGE-ME"  # the password to replace, in the docs and the shipped file


def setuser_line(user: str = "callmfa") -> str:
    """``ACL SETUSER`` for the service's commands, as docs/operations.md shows it."""
    rules = USERS[1].rules()
    return " ".join(["ACL", "SETUSER", user, "on", f">{PLACEHOLDER}", *rules])


def acl_file() -> str:
    """``docker/redis/callmfa.acl``: no default user, and the three users above."""
    lines = ["user default off"]
    for u in USERS:
        lines.append(" ".join(["user", u.name, "on", f">{PLACEHOLDER}-{u.name.split('-', 1)[1]}",
                               *u.rules()]))
    return "\n".join(lines) + "\n"
