"""``callmfa check``: connect with the configured settings and say what works, with fixes.

Each check ends ok, warn (works, but look at it), FAIL (callmfa cannot work this way) or
skip (an earlier failure hides it). Checks that need no call on a phone go through a
*probe*: a Local channel into the verification context whose AGI runs callmfa's ``check``
route (see :mod:`ivr.ops.probe`); that proves, from Asterisk's side, that the context exists,
that it reaches the FastAGI address and which prompts Asterisk can play. It works with the
least-privilege AMI account (``write = originate``), which may not run ``ShowDialPlan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..client import VerificationClient
from ..domain.outcome import Outcome
from ..exceptions import (
    AmiConnectError,
    AmiError,
    AmiLoginError,
    DirectoryError,
    OutcomeBindingError,
    OutcomeSignatureError,
    SettingsError,
)
from ..fronts.radius.clients import load_clients
from ..fronts.radius.packets import dictionary as radius_dictionary
from ..fronts.radius.upstream import UpstreamError, UpstreamPasswordChecker
from ..redaction import redacted_url
from ..settings import Settings, agi_address
from ..storage.acl import SERVICE
from ..storage.directory import LocalDirectory
from ..storage.failover import sentinel_report
from ..storage.keys import STORE_OUTCOME, WEBHOOK_DEAD
from ..storage.store import _CLAIM, GROUP, REQUESTS, RESULTS_CHANNEL, connect_for, queue_state
from ..storage.webhooks import DeliveryQueue
from ..transport.ami import AmiClient
from . import pbxcheck
from .dialcheck import policy_summary
from .eamcheck import check_eam
from .probe import PROBE_ROUTE, new_probe_id, probe_key
from .results import CheckResult as CheckResult  # re-exported: doctor.Status, ...
from .results import Status as Status

SAMPLE_NUMBER = "+12015550100"
CHECK_USER_PREFIX = "callmfa-check-"
KNOWN_TECHNOLOGIES = {"PJSIP", "SIP", "IAX2", "DAHDI", "Local", "Motif", "UNISTIM", "WebSocket"}
DANGEROUS_PRIVILEGES = ("system", "command", "config")
PROBE_WAIT_S = 5.0
_CHANNEL = re.compile(r"[A-Za-z][A-Za-z0-9_]*/[^\s,|&;]+\Z")
_PRIV = re.compile(r"\(Priv: ([^)]*)\)")

# What to do about each outcome of a test call (also docs/troubleshooting.md): every
# Outcome has one (tests/unit/test_operations.py iterates the enum).
OUTCOME_FIXES: dict[Outcome, str] = {
    Outcome.APPROVED: "nothing: the whole chain works",
    Outcome.DELIVERED: "nothing: the one-time code was read to the phone (mode otp)",
    Outcome.FRAUD_REPORTED: "the phone pressed 0#: press # alone to approve; the check user "
                            "is now blocked (`callmfa blocked`)",
    Outcome.DENIED: "a wrong PIN or number was keyed (mode pin or match): key the right one; "
                    "a forgotten PIN: `callmfa pin set USER`",
    Outcome.LOCKED_OUT: "too many denied PIN calls in a row: `callmfa pin unlock USER` once "
                        "you know it was the user",
    Outcome.MACHINE_ANSWERED: "answering-machine detection heard a machine (a voicemail, or a "
                              "phone that stays silent): say \"hello\" when you answer, or set "
                              "CALLMFA_AMD=off",
    Outcome.NO_INPUT: "answered but no '#': a voicemail or a phone that cannot send DTMF "
                      "(check the trunk's dtmf_mode: rfc4733 or info)",
    Outcome.HUNG_UP: "the callee hung up during the prompt",
    Outcome.NO_ANSWER: "nobody answered: raise CALLMFA_RING_TIMEOUT_S or check the number",
    Outcome.BUSY: "the line was busy or the call was declined",
    Outcome.UNREACHABLE: "the trunk refused the call: check CALLMFA_DIAL_TEMPLATE, the trunk's "
                         "registration and the Q.850 cause in detail",
    Outcome.REJECTED: "the request was invalid: see detail (the number must be E.164, +..., "
                      "and inside CALLMFA_ALLOWED_PREFIXES)",
    Outcome.EXPIRED: "not placed in time: is `callmfa serve` running and consuming "
                     "callmfa:requests?",
    Outcome.ERROR: "see detail: originate_failed (Asterisk refused: context, channel "
                   "technology, AMI rights), no_ivr_outcome (Asterisk cannot reach FastAGI)",
    Outcome.THROTTLED: "callmfa's throttles refused the call (detail; CALLMFA_THROTTLE_*): "
                       "number_cooldown means this number was called less than "
                       "CALLMFA_THROTTLE_NUMBER_COOLDOWN_S ago: run the check again later",
    Outcome.BLOCKED: "the user is blocked: `callmfa blocked`, then `callmfa unblock USER`",
    Outcome.BYPASSED: "a one-time bypass (`callmfa bypass`) was used instead of a call: run "
                      "the check again",
}


def probe_url(agi_url: str) -> str:
    """The AGI URL with its route replaced by the probe's."""
    parts = urlsplit(agi_url)
    return urlunsplit(parts._replace(path="/" + PROBE_ROUTE, query=""))


def check_dial_template(template: str) -> CheckResult:
    """The template must render a ``TECH/resource`` dial string for a sample number."""
    try:
        channel = template.format(number=SAMPLE_NUMBER, digits=SAMPLE_NUMBER[1:])
    except (KeyError, IndexError, ValueError) as e:
        return CheckResult("dial-template", Status.FAIL, f"{template!r} does not render: {e!r}",
                           "use only {number} and {digits} as placeholders")
    if not _CHANNEL.match(channel):
        return CheckResult("dial-template", Status.FAIL,
                           f"{template!r} gives {channel!r}, not a TECH/resource dial string",
                           "e.g. CALLMFA_DIAL_TEMPLATE='PJSIP/{number}@my-trunk'")
    tech = channel.split("/", 1)[0]
    if tech not in KNOWN_TECHNOLOGIES:
        return CheckResult("dial-template", Status.WARN,
                           f"{SAMPLE_NUMBER} dials {channel}: unusual technology {tech!r}",
                           "check the channel driver name (PJSIP, IAX2, DAHDI, ...)")
    return CheckResult("dial-template", Status.OK, f"{SAMPLE_NUMBER} dials {channel}")


def check_number_policy(settings: Settings) -> CheckResult:
    """The number policy builds (serve refuses to start otherwise)."""
    ok, text = policy_summary(settings)
    if ok:
        return CheckResult("numbers", Status.OK, text)
    return CheckResult("numbers", Status.FAIL, text,
                       "set CALLMFA_ALLOWED_PREFIXES and CALLMFA_ALLOWED_REGIONS together "
                       "(e.g. +44 with GB); `callmfa check --number N` explains one number")


def check_agi_address(settings: Settings) -> CheckResult | None:
    """A loopback AGI URL with Asterisk elsewhere means Asterisk calls itself."""
    agi_host = (agi_address(settings.agi_url) or ("", 0))[0]
    loopback = {"127.0.0.1", "localhost", "::1"}
    if agi_host in loopback and settings.ami_host not in loopback:
        return CheckResult(
            "agi-url", Status.WARN,
            f"CALLMFA_AGI_URL points at {agi_host} but Asterisk is at {settings.ami_host}: "
            "Asterisk would connect to itself",
            "set CALLMFA_AGI_URL=agi://<this host's address>:<port>/verify and "
            "CALLMFA_AGI_HOST=0.0.0.0 (behind a firewall)")
    return None


def check_pin_pepper(settings: Settings) -> CheckResult:
    """PINs (mode pin) are peppered only with CALLMFA_PIN_PEPPER."""
    if settings.pin_pepper:
        return CheckResult("pin-pepper", Status.OK, "PIN hashes are peppered")
    return CheckResult(
        "pin-pepper", Status.WARN,
        "CALLMFA_PIN_PEPPER is not set: PIN hashes are scrypt only, so whoever reads "
        "callmfa:pin:* can search short PINs offline",
        "set CALLMFA_PIN_PEPPER_FILE to a file of 32 random bytes or more, kept outside Redis "
        "(head -c 32 /dev/urandom | base64); existing PINs are upgraded on their next use")


async def check_radius(settings: Settings) -> CheckResult | None:
    """The RADIUS listener answers Status-Server (RFC 5997), signed with the secret of the
    client that covers this host's loopback; None when the radius role is not configured."""
    if "radius" not in settings.role_set and not settings.radius_clients_file:
        return None
    host = settings.radius_host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - read, not bound
    where = f"{host}:{settings.radius_port}"
    try:
        clients = load_clients(settings.radius_clients_file)
    except SettingsError as e:
        return CheckResult("radius", Status.FAIL, str(e),
                           "fix the line named, then restart callmfa serve (docs/radius.md)")
    client = clients.find(host)
    if client is None:
        return CheckResult("radius", Status.SKIP, f"no client in the clients file covers {host}: "
                           "cannot sign a Status-Server", f"list {host} to let check ask")
    probe = UpstreamPasswordChecker(host, settings.radius_port, client.secret,
                                    min(settings.connect_timeout_s, 2.0), radius_dictionary())
    try:
        answered = await probe.status()
    except UpstreamError:
        answered = False
    if not answered:
        return CheckResult(
            "radius", Status.FAIL, f"no verified answer to Status-Server from {where}",
            "is callmfa serve running with CALLMFA_ROLES including radius, on "
            "CALLMFA_RADIUS_HOST:CALLMFA_RADIUS_PORT? (its log says radius_listening)")
    return CheckResult("radius", Status.OK,
                       f"{where} answers Status-Server (client {client.name!r})")


# --- Redis ---------------------------------------------------------------------------

def check_signing(settings: Settings) -> CheckResult:
    """Outcomes are signed with a long enough key, or unsigned on purpose (a warning)."""
    refusal = settings.signing_refusal()
    if refusal is not None:
        return CheckResult("signing", Status.FAIL, refusal,
                           "set CALLMFA_SIGNING_KEY_FILE to a file holding "
                           "`head -c 32 /dev/urandom | base64`, for serve and every verifier")
    if not settings.signing_key:
        return CheckResult("signing", Status.WARN,
                           "CALLMFA_INSECURE_UNSIGNED=1: outcomes are not signed, anyone who "
                           "can write to Redis can forge an approval",
                           "set CALLMFA_SIGNING_KEY_FILE and remove CALLMFA_INSECURE_UNSIGNED")
    return CheckResult("signing", Status.OK,
                       f"outcomes are signed (HMAC-SHA256, a {len(settings.signing_key.encode())}"
                       "-byte key)")


def check_amd(settings: Settings) -> CheckResult:
    """The answering-machine detection callmfa asks Asterisk for (AMD()'s arguments)."""
    if settings.amd == "off":
        return CheckResult("amd", Status.WARN, "answering-machine detection is off: a "
                           "voicemail greeting that holds a '#' tone could approve",
                           "CALLMFA_AMD=on")
    return CheckResult(
        "amd", Status.OK,
        f"AMD({settings.amd_initial_silence_ms},{settings.amd_greeting_ms},,"
        f"{settings.amd_total_ms}): MACHINE after {settings.amd_initial_silence_ms} ms of "
        f"silence (a key then asks again) or a greeting over {settings.amd_greeting_ms} ms; "
        f"at most {settings.amd_total_ms} ms of listening",
    )


async def _redis_acl(redis: Redis) -> list[str]:
    """Run every command callmfa uses, on throwaway keys; return those the ACL refuses."""
    base = f"callmfa:check:{uuid.uuid4().hex}"
    result, call, events, stream = (f"{base}:{k}" for k in ("result", "call", "events", "q"))
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("EVALSHA/SCRIPT LOAD (claim script)", lambda: redis.register_script(_CLAIM)(
            keys=[result, call], args=[30, "user", "check"])),
        ("HGETALL", lambda: redis.hgetall(call)),
        ("HSET", lambda: redis.hset(call, "answered_at", "0")),
        ("EVALSHA (outcome script: SET, PUBLISH, XADD)", lambda: redis.register_script(
            STORE_OUTCOME)(keys=[result, events], args=[
                "{}", 30, base, 10, "check", "", "approved", "", ""])),
        ("GET", lambda: redis.get(result)),
        ("XGROUP CREATE", lambda: redis.xgroup_create(stream, "g", id="0", mkstream=True)),
        ("XADD", lambda: redis.xadd(stream, {"request": "{}"}, maxlen=10, approximate=True)),
        ("XREADGROUP", lambda: redis.xreadgroup("g", "check", {stream: ">"}, count=1)),
        ("MULTI/EXEC: XACK, XDEL (settling a request)", lambda: _ack_and_delete(redis, stream)),
        ("XLEN", lambda: redis.xlen(stream)),
        ("XINFO GROUPS", lambda: redis.xinfo_groups(stream)),
        ("XRANGE", lambda: redis.xrange(events, count=1)),
        ("XREAD", lambda: redis.xread({events: "0-0"}, count=1)),
        ("EXPIRE", lambda: redis.expire(stream, 30)),
    ]
    refused = []
    for name, step in steps:
        try:
            await step()
        except ResponseError as e:
            if not _refused(e):
                raise
            refused.append(name)
    for key in (events, stream):
        with contextlib.suppress(ResponseError):
            await redis.expire(key, 30)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(RESULTS_CHANNEL)
        confirmed = await pubsub.get_message(timeout=5)  # a refusal is raised here
        if confirmed is None or confirmed.get("type") != "subscribe":
            refused.append(f"SUBSCRIBE {RESULTS_CHANNEL} (no confirmation)")
        await pubsub.unsubscribe(RESULTS_CHANNEL)
    except ResponseError as e:
        if not _refused(e):
            raise
        refused.append(f"SUBSCRIBE {RESULTS_CHANNEL}")
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return refused


async def _ack_and_delete(redis: Redis, stream: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xack(stream, "g", "0-1")
        pipe.xdel(stream, "0-1")
        await pipe.execute()


async def _acl_dryrun(redis: Redis) -> list[str] | None:
    """The commands of :data:`ivr.storage.acl.SERVICE` that the ACL refuses this user, as
    Redis itself says with ``ACL DRYRUN``; None when Redis will not answer that question
    (no ``+acl|whoami`` / ``+acl|dryrun``, or a Redis older than 7.0)."""
    try:
        me: Any = await redis.execute_command("ACL", "WHOAMI")  # type: ignore[no-untyped-call]
    except ResponseError:
        return None
    user = me.decode() if isinstance(me, bytes) else str(me)
    refused = []
    for needed in SERVICE:
        try:
            reply: Any = await redis.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "DRYRUN", user, *needed.sample)
        except ResponseError as e:
            if _refused(e) or "unknown subcommand" in str(e).lower():
                return None  # DRYRUN itself is not allowed or not there
            refused.append(needed.name)
            continue
        if (reply.decode() if isinstance(reply, bytes) else str(reply)) != "OK":
            refused.append(needed.name)
    return list(dict.fromkeys(refused))  # a command is asked for on several keys


def _refused(error: ResponseError) -> bool:
    text = str(error)
    # Inside a script, Redis 7.0 words the ACL refusal without the NOPERM prefix.
    return "NOPERM" in text or "permission" in text.lower() or "can't run this command" in text


async def check_sentinels(settings: Settings) -> CheckResult:
    """With CALLMFA_REDIS_SENTINELS: the primary, its replicas and the quorum, as the
    Sentinels see them."""
    report = await sentinel_report(settings)
    usable = report.usable
    if not usable:
        why = "; ".join(f"{a.address}: {a.error}" for a in report.answers)
        return CheckResult("redis-sentinel", Status.FAIL, f"no Sentinel answers ({why})",
                           "start the Sentinels or fix CALLMFA_REDIS_SENTINELS and "
                           "CALLMFA_REDIS_SENTINEL_USER / _PASSWORD")
    first = usable[0]
    replicas = ", ".join(first.replicas) or "none"
    message = (f"service {settings.redis_sentinel_service!r}: primary {first.primary}, "
               f"replicas {replicas}; {len(usable)} usable Sentinels of "
               f"{len(report.answers)}, quorum {first.quorum}: {first.ckquorum}")
    if report.failover:
        return CheckResult("redis-sentinel", Status.WARN, "failover in progress: " + message,
                           "wait for the Sentinels to promote a replica")
    if any(not a.ckquorum.startswith("OK") for a in usable) or not first.replicas:
        return CheckResult("redis-sentinel", Status.WARN, message,
                           "a failover needs a replica and a majority of the Sentinels")
    return CheckResult("redis-sentinel", Status.OK, message)


async def check_redis(settings: Settings) -> AsyncIterator[CheckResult]:
    """Reachable, every command allowed, and the request queue's state."""
    url = redacted_url(settings.redis_url)
    if settings.redis_sentinels:
        yield await check_sentinels(settings)
    redis = connect_for(settings, max_connections=4)
    try:
        try:
            await asyncio.wait_for(redis.ping(), settings.connect_timeout_s)
        except (RedisError, OSError, TimeoutError) as e:
            yield CheckResult("redis", Status.FAIL, f"cannot reach {url}: {e or 'timeout'}",
                              "start Redis or fix CALLMFA_REDIS_URL (user:password@ for ACL)")
            return
        refused = await _acl_dryrun(redis)
        asked = refused is not None
        if refused is None:
            yield CheckResult(
                "redis-acl", Status.WARN,
                "Redis does not answer ACL DRYRUN for this user: only a subset of the "
                "commands was tried",
                "allow +acl|whoami and +acl|dryrun (docs/operations.md has the ACL line)")
            refused = await _redis_acl(redis)
        if refused:
            yield CheckResult(
                "redis-acl", Status.FAIL, "the Redis ACL refuses: " + ", ".join(refused),
                "allow callmfa's commands on ~callmfa:* and &callmfa:* "
                "(docs/operations.md has the ACL line)")
            yield CheckResult("queue", Status.SKIP, "needs the commands the ACL refuses")
            return
        if asked:
            yield CheckResult("redis", Status.OK,
                              f"{url} reachable; the ACL allows all {len(SERVICE)} commands "
                              "callmfa uses (ACL DRYRUN)")
        else:
            yield CheckResult("redis", Status.OK,
                              f"{url} reachable; the ACL allows the commands tried")
        yield await _queue_state(redis)
        yield await _webhooks_state(redis, settings)
    finally:
        await redis.aclose()


async def check_directory(settings: Settings) -> CheckResult:
    """The user directory: how many local users, and whether the LDAP service bind works."""
    redis = connect_for(settings, max_connections=2)
    try:
        count = await LocalDirectory(redis).count()
    except (RedisError, OSError, TimeoutError) as e:
        return CheckResult("directory", Status.FAIL, f"cannot count the local users: {e}",
                           "the service's ACL needs SCAN on callmfa:user:* "
                           "(docs/operations.md)")
    finally:
        await redis.aclose()
    local = f"{count} local user(s) (`callmfa user`)"
    if not settings.ldap_url:
        return CheckResult("directory", Status.OK, f"{local}; no LDAP source")
    try:
        from ..storage.ldap import LdapDirectory
    except ImportError:
        return CheckResult("directory", Status.FAIL, f"{local}; CALLMFA_LDAP_URL is set but "
                           "bonsai is not installed", "pip install 'callmfa[ldap]'")
    who = settings.ldap_bind_dn or "anonymous"
    try:
        await LdapDirectory(settings).ping()
    except DirectoryError as e:
        return CheckResult("directory", Status.FAIL, f"{local}; {e}",
                           "check CALLMFA_LDAP_URL, CALLMFA_LDAP_BIND_DN and "
                           "CALLMFA_LDAP_BIND_PASSWORD_FILE (docs/directory.md)")
    return CheckResult("directory", Status.OK,
                       f"{local}; LDAP bind as {who} on {redacted_url(settings.ldap_url)} works")


async def _queue_state(redis: Redis) -> CheckResult:
    state = await queue_state(redis)
    if not state.group:
        return CheckResult("queue", Status.WARN,
                           f"{REQUESTS} has no consumer group {GROUP!r} yet "
                           f"({state.length} entries)",
                           "`callmfa serve` creates it at start-up: is it running?")
    return CheckResult(
        "queue", Status.OK,
        f"{REQUESTS}: {state.length} entries, {state.lag} waiting, {state.pending} "
        f"being worked on, {state.consumers} consumer(s) known")


async def _webhooks_state(redis: Redis, settings: Settings) -> CheckResult:
    """Webhook and alert deliveries: where they go, what waits, what was given up on."""
    queue = DeliveryQueue(redis)
    figures = await queue.figures()
    where = []
    if settings.webhook_url:
        where.append(f"outcomes to {redacted_url(settings.webhook_url, query=False)}")
    if settings.webhook_allowed_urls:
        where.append("callback_url allowed")
    if settings.security_url:
        where.append(f"security events to {redacted_url(settings.security_url, query=False)}")
    if settings.alert_recipients:
        where.append(f"alert e-mails to {len(settings.alert_recipients)} recipient(s) "
                     f"via {settings.smtp_host}:{settings.smtp_port}")
    summary = (f"{'; '.join(where) or 'none configured'}; {figures.pending} pending "
               f"({figures.scheduled} waiting to retry), {figures.dead} dead-lettered")
    if figures.dead:
        latest = (await queue.dead_letters(1))[0]
        return CheckResult(
            "webhooks", Status.WARN,
            f"{summary}; the latest: {latest.get('type')} to "
            f"{latest.get('target', '').split('?', 1)[0]} after {latest.get('attempts')} "
            f"attempts ({latest.get('error')})",
            f"fix the receiver, then read them with XRANGE {WEBHOOK_DEAD} - + (docs/webhooks.md)")
    return CheckResult("webhooks", Status.OK, summary)


# --- AMI and the probe -----------------------------------------------------------------

def _privileges(list_commands: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(permitted actions, privilege classes they need) from a ListCommands reply."""
    actions, classes = set(), set()
    for action, text in list_commands.items():
        m = _PRIV.search(str(text))
        if m is None:
            continue
        actions.add(action)
        classes |= {c.strip() for c in m.group(1).split(",")} - {"<none>", "all"}
    return actions, classes


async def check_ami(settings: Settings, ami: AmiClient) -> AsyncIterator[CheckResult]:
    """Login, then what the account may do."""
    where = f"{settings.ami_user}@{ami.endpoint}"
    try:
        await ami.connect()
    except AmiLoginError as e:
        yield CheckResult("ami-login", Status.FAIL, str(e).split(" (check")[0],
                          "give callmfa the secret of the [" + settings.ami_user + "] account "
                          "in manager.conf (CALLMFA_AMI_SECRET or CALLMFA_AMI_SECRET_FILE), "
                          "permit this host there, then `manager reload`")
        return
    except AmiConnectError as e:
        yield CheckResult("ami-login", Status.FAIL, str(e),
                          "is Asterisk running with manager.conf enabled = yes and bindaddr/"
                          "port matching CALLMFA_AMI_HOST/CALLMFA_AMI_PORT (or "
                          "CALLMFA_AMI_ENDPOINTS)?")
        return
    yield CheckResult("ami-login", Status.OK, f"logged in as {where}")
    reply = (await ami.action({"Action": "ListCommands"}, timeout_s=settings.connect_timeout_s))[0]
    actions, classes = _privileges(reply)
    if "Originate" not in actions:
        yield CheckResult("ami-rights", Status.FAIL, f"{settings.ami_user} may not Originate",
                          "write = originate in its manager.conf section")
        return
    dangerous = sorted(c for c in classes if c in DANGEROUS_PRIVILEGES)
    if dangerous:
        yield CheckResult(
            "ami-rights", Status.WARN,
            f"{settings.ami_user} may originate, and also has {', '.join(dangerous)}: more "
            "than callmfa needs",
            "read = call and write = originate only (dialplan/manager_callmfa.conf)")
    else:
        yield CheckResult("ami-rights", Status.OK,
                          f"{settings.ami_user} may originate; nothing more dangerous")


async def check_probe(
    settings: Settings, ami: AmiClient, redis_url: str
) -> AsyncIterator[CheckResult]:
    """Originate a Local channel into the context; its AGI must reach callmfa's probe."""
    probe_id = new_probe_id()
    url = probe_url(settings.agi_url)
    watch = ami.watch(probe_id)
    redis = connect_for(dataclasses.replace(settings, redis_url=redis_url), max_connections=2)
    try:
        try:
            await ami.originate(
                {"Channel": f"Local/s@{settings.context}", "Application": "Wait", "Data": "1",
                 "Timeout": "10000", "ChannelId": probe_id},
                # No AMD: a Local channel is silent, and AMD would listen for 5 s for nothing.
                {"CALLMFA_ID": probe_id, "CALLMFA_AGI": url, "CALLMFA_EXTENSION": "",
                 "CALLMFA_MAX_SECS": "30", "CALLMFA_AMD": "off", "CALLMFA_KEEP_KEYS": "on",
                 pbxcheck.ENDPOINT_VARIABLE: pbxcheck.endpoint_of(settings.dial_template) or ""},
                timeout_s=settings.connect_timeout_s + 15,
            )
        except AmiError as e:
            yield CheckResult("dialplan", Status.FAIL, f"the probe call was refused: {e}",
                              "check the AMI account's write = originate")
            return
        # The probe stores its finding before it hangs up, so after the hang-up it is there.
        with contextlib.suppress(TimeoutError, AmiConnectError):
            await asyncio.wait_for(asyncio.shield(watch.hangup), PROBE_WAIT_S)
        raw = await redis.get(probe_key(probe_id))
        cause = watch.hangup.result() if watch.hangup.done() and not watch.hangup.exception() \
            else None
    finally:
        ami.unwatch(probe_id)
        await redis.aclose()
    events = pbxcheck.check_ami_events(settings.ami_user, ami.events.received,
                                       ami.events.unneeded, ami.events.unneeded_names)
    ctx = settings.context
    if raw is None:
        if cause == 0:  # Asterisk found nothing to run: the Local channel never started
            yield CheckResult("dialplan", Status.FAIL,
                              f"Asterisk has no extension s in context [{ctx}]",
                              "include extensions_callmfa.conf in extensions.conf "
                              "(callmfa install-dialplan DIR), then `dialplan reload`")
            yield CheckResult("fastagi", Status.SKIP, "needs the dialplan")
        else:
            yield CheckResult("dialplan", Status.OK, f"Asterisk runs [{ctx}]")
            yield CheckResult(
                "fastagi", Status.FAIL, f"Asterisk ran [{ctx}] but did not reach {url}",
                "is `callmfa serve` running, and is CALLMFA_AGI_URL's host:port reachable "
                "from the Asterisk host (CALLMFA_AGI_HOST, firewall)? The Asterisk log says "
                "'Connecting to ... failed'")
        for name in ("prompts", "early-keys", "modules", "endpoint"):
            yield CheckResult(name, Status.SKIP, "needs the FastAGI probe")
        yield events
        return
    found = json.loads(raw)
    yield CheckResult("dialplan", Status.OK,
                      f"Asterisk runs [{ctx}] (proved by a probe call; ShowDialPlan not needed)")
    yield CheckResult("fastagi", Status.OK, f"Asterisk reached callmfa at {url}")
    missing: dict[str, list[str]] = found.get("missing", {})
    if missing:
        text = "; ".join(f"{lang}: {', '.join(files)}" for lang, files in missing.items())
        yield CheckResult("prompts", Status.FAIL, f"Asterisk cannot play {text}",
                          "record callmfa's prompts into Asterisk's sounds directory: "
                          "callmfa install-dialplan --prompts /usr/share/asterisk/sounds "
                          "(on the Asterisk host; needs espeak-ng and sox)")
    else:
        yield CheckResult("prompts", Status.OK,
                          "Asterisk can play every prompt in " + ", ".join(found["languages"]))
    yield check_early_keys(found.get("early_keys"), found.get("collect"))
    for result in pbxcheck.check_modules(settings.amd, found):
        yield result
    yield pbxcheck.check_endpoint(settings.dial_template, found)
    yield events


def check_early_keys(trystatus: str | None, collect: bool | None = None) -> CheckResult:
    """What ``TryExec(StoreDTMF(...))`` in [callmfa-prepare] said on the probe call, and
    whether the dialplan has [callmfa-collect] (``collect``; None for both: the running
    ``callmfa serve`` is older than this check and did not ask)."""
    if trystatus is None:
        return CheckResult("early-keys", Status.SKIP,
                           "the running callmfa serve does not report it: restart it")
    if trystatus == "SUCCESS" and collect is False:
        return CheckResult(
            "early-keys", Status.WARN,
            "the dialplan is older than [callmfa-collect]: a '#' pressed between two AGI "
            "commands can be lost",
            "install the current extensions_callmfa.conf (callmfa install-dialplan DIR), "
            "then `dialplan reload`")
    if trystatus == "SUCCESS":
        return CheckResult("early-keys", Status.OK,
                           "StoreDTMF keeps the keys pressed before the greeting")
    if trystatus == "NOAPP":
        return CheckResult(
            "early-keys", Status.WARN,
            "app_dtmfstore is not loaded: a '#' pressed before the greeting is lost",
            "load app_dtmfstore.so (modules.conf, then `module load app_dtmfstore.so`)")
    return CheckResult(
        "early-keys", Status.WARN,
        "the dialplan does not keep the keys pressed before the greeting"
        + (f" (StoreDTMF: {trystatus})" if trystatus else ""),
        "install the current extensions_callmfa.conf (callmfa install-dialplan DIR), "
        "then `dialplan reload`")


def check_user() -> str:
    """A user of its own for each ``check --call``: a second check within the user cooldown
    is not throttled, and no real user's counters, blocks or bypasses are touched."""
    return f"{CHECK_USER_PREFIX}{uuid.uuid4().hex[:8]}"


async def check_call(settings: Settings, number: str, timeout_s: float) -> CheckResult:
    """Place a real verification to ``number`` through the running service; the outcome
    counts only if its signature verifies (no key: nothing is placed, unless
    CALLMFA_INSECURE_UNSIGNED=1)."""
    user = check_user()
    try:
        verifier = VerificationClient.from_settings(settings)
    except SettingsError as e:
        return CheckResult("call", Status.FAIL, f"{number}: not placed: {e}",
                           "set CALLMFA_SIGNING_KEY (or _FILE) to the key `callmfa serve` "
                           "signs with")
    async with verifier as client:
        try:
            record = await client.verify(user=user, phone=number, timeout_s=timeout_s,
                                         expires_in_s=timeout_s)
        except OutcomeBindingError as e:
            return CheckResult(
                "call", Status.FAIL, f"{number}: the outcome does not answer this request: {e}",
                "a replayed or copied outcome: see docs/security.md (forged outcomes)")
        except OutcomeSignatureError as e:
            return CheckResult(
                "call", Status.FAIL, f"{number}: the outcome's signature does not verify: {e}",
                "CALLMFA_SIGNING_KEY (or _FILE) must be the key `callmfa serve` signs with")
    if record is None:
        return CheckResult("call", Status.FAIL, f"no outcome for {number} within {timeout_s:g}s",
                           OUTCOME_FIXES[Outcome.EXPIRED])
    text = f"{number}: {record.outcome.value}" + (f" ({record.detail})" if record.detail else "")
    if record.retry_after:
        text += f", retry after {record.retry_after}s"
    if settings.signing_key:
        text += ", signature verified"
    if record.outcome is Outcome.APPROVED:
        return CheckResult("call", Status.OK, text + " - the whole chain works")
    return CheckResult("call", Status.FAIL, f"{text} (user {user})", OUTCOME_FIXES[record.outcome])


async def run_checks(
    settings: Settings, *, call: str | None = None, call_timeout_s: float = 90
) -> AsyncIterator[CheckResult]:
    """Every check, in order, as each one finishes."""
    yield check_signing(settings)
    yield check_dial_template(settings.dial_template)
    yield check_amd(settings)
    yield check_number_policy(settings)
    agi = check_agi_address(settings)
    if agi is not None:
        yield agi
    yield check_pin_pepper(settings)
    yield pbxcheck.check_ami_secret_file(settings.asterisk_config_dir)
    redis_ok = True
    async for result in check_redis(settings):
        redis_ok = redis_ok and result.status is not Status.FAIL
        yield result
    yield await check_directory(settings)
    ami_ok = True
    for host, port in settings.asterisks:  # each Asterisk serve places calls through
        ami = AmiClient(host=host, port=port, user=settings.ami_user,
                        secret=settings.ami_secret, timeout_s=settings.connect_timeout_s)
        try:
            this_ok = True
            async for result in check_ami(settings, ami):
                this_ok = this_ok and result.status is not Status.FAIL
                yield result
            if this_ok and redis_ok:
                async for result in check_probe(settings, ami, settings.redis_url):
                    yield result
            else:
                for name in ("dialplan", "fastagi", "prompts", "early-keys", "modules",
                             "endpoint", "ami-events"):
                    yield CheckResult(name, Status.SKIP, "needs AMI and Redis")
            ami_ok = ami_ok and this_ok
        finally:
            await ami.close()
    radius = await check_radius(settings)
    if radius is not None:
        yield radius
    eam = await check_eam(settings)
    if eam is not None:
        yield eam
    if call is not None:
        if ami_ok and redis_ok:
            yield await check_call(settings, call, call_timeout_s)
        else:
            yield CheckResult("call", Status.SKIP, "needs AMI and Redis")
