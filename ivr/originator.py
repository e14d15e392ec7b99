"""The originator: takes requests from the stream, places the calls, settles the outcomes.

Per request: validate, check expiry, claim the call (once per id), Originate through the
least busy Asterisk, then either map a failed call to its outcome or wait for the IVR's
outcome. The stream entry is acknowledged only once an outcome is stored: for a call it
placed, by the script that stores the outcome in this process (its own, or its IVR's), else
here, after.

Crash recovery uses what Redis offers: each originator holds a short lease
(``callmfa:consumer:<name>``) that it renews every second. Entries still pending for a
consumer whose lease lapsed are taken over with XCLAIM (only one claimer wins). A taken-over
request whose call was already placed is never dialled again: the new owner waits for the
IVR's outcome until the call must have ended, then records ``error`` (``originator_lost``).
XAUTOCLAIM alone is not enough: it goes by idle time, and a live originator's entry is idle
for as long as its call lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from redis.exceptions import RedisError, ResponseError

from .domain.calltoken import new_token, token_hash
from .domain.directory import UserDirectory
from .domain.fallback import resolve
from .domain.flow import keys_are_secret
from .domain.outcome import Outcome, OutcomeRecord, failed_call_outcome, iso
from .domain.request import VerificationRequest, parse_fields, peek_id, request_fields
from .domain.webhooks import parse_allowed_urls
from .exceptions import AmiConnectError, AmiError, DirectoryError, RequestError
from .security import Security
from .settings import Settings
from .storage.guard import Admission, Verdict
from .storage.results import Expected, ResultListener
from .storage.retry import TRANSIENT, backoff, retrying
from .storage.store import Claim, Entry, Store
from .tasks import cancel_and_wait, drain, either
from .transport.ami import AmiClient, ChannelWatch
from .transport.ami_pool import AmiPool

log = structlog.get_logger("ivr.originator")

HANGUP_EVENT_WAIT_S = 2.0
READ_BLOCK_MS = 1000
# How long a write that settles a request (outcome, ack) is retried across a Redis outage.
SETTLE_RETRY_S = 300.0
# How long the 'ringing' event waits for an answer to be written with (one round trip for
# both when the phone answers at once); a phone that rings longer gets it on its own.
RINGING_HOLD_S = 0.05
# How long an answer seen before its phone's ring waits for the ring: Asterisk sends
# OriginateResponse at once but Newstate through its message bus (stasis), so the Newstate
# of a phone that rang just before answering may come after the answer. (A phone that never
# rings, such as a trunk that sends 183 and no 180, costs its answer this much.)
RING_LAG_S = 0.1
# How long the first acknowledgement waits for others to share its round trip.
ACK_BATCH_S = 0.05
# How long the answer waits for this process's IVR session, to be written with its claim
# (one round trip for both; with AMD off the session starts within milliseconds).
ANSWER_HOLD_S = 0.05
# A request's expires_at was checked on the sign-in side's clock (the HTTP API's host), its
# queueing time is Redis's: the hour's bound allows them a minute apart.
CLOCK_SKEW_S = 60.0
_CLAIMS = frozenset(c.value for c in Claim)


class Originator:
    """Consumes ``callmfa:requests`` with at most ``settings.max_in_flight`` calls at once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ami: AmiPool,
        results: ResultListener,
        security: Security | None = None,
        directory: UserDirectory | None = None,
    ) -> None:
        self._settings = settings
        self._directory = directory  # completes requests that give no phone
        self._store = store
        self._ami = ami
        self._results = results
        self._security = security or Security.for_redis(settings, store.redis)
        self._callback_rules = parse_allowed_urls(settings.webhook_allowed_urls)
        self._tasks: dict[asyncio.Task[None], str] = {}  # task -> entry id
        self._acks = _Acks(store)
        self._stopping = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Requests being worked on now."""
        return len(self._tasks)

    def reload(self, settings: Settings) -> None:
        """Apply settings that may change at run time (SIGHUP)."""
        self._settings = settings

    @property
    def _answer_hold_s(self) -> float:
        """How long an answer waits for the IVR session's claim to carry it: only when this
        process runs the IVR and the session starts right after the answer (no AMD)."""
        s = self._settings
        return ANSWER_HOLD_S if s.amd == "off" and s.ivr_here else 0.0

    async def run(self) -> None:
        """Read, take over and dispatch requests until :meth:`stop`.

        The heartbeat and the take-over retry what Redis may answer for a while; anything
        else that ends one of them ends the run with its error (a lease no longer renewed
        would hand this process's calls to the others while it still runs them).
        """
        lease = self._settings.lease_s
        await retrying(lambda: self._store.heartbeat(self._settings.consumer, int(lease * 1000)),
                       what="heartbeat", for_s=SETTLE_RETRY_S)
        reading = asyncio.create_task(self._read_loop(), name="originator-read")
        helpers = [asyncio.create_task(self._heartbeat(), name="originator-heartbeat"),
                   asyncio.create_task(self._take_over(), name="originator-take-over")]
        try:
            await asyncio.wait({reading, *helpers}, return_when=asyncio.FIRST_COMPLETED)
            for helper in helpers:
                if helper.done():
                    log.error("originator_part_failed", part=helper.get_name(),
                              error=repr(helper.exception()))
                    helper.result()
            reading.result()
        finally:
            await cancel_and_wait(reading, *helpers)

    async def _read_loop(self) -> None:
        attempt = 0
        group_ready = False
        while not self._stopping.is_set():
            free = self._settings.max_in_flight - len(self._tasks)
            if free <= 0:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                if not group_ready:
                    await self._store.ensure_group()
                    group_ready = True
                entries = await self._store.read_requests(
                    self._settings.consumer, count=min(free, 100), block_ms=READ_BLOCK_MS
                )
                attempt = 0
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                group_ready = False  # Redis lost its data: the group must be made again
                log.warning("requests_group_missing")
                continue
            except TRANSIENT as e:
                wait = backoff(attempt)
                attempt += 1
                log.warning("requests_read_failed", error=str(e) or type(e).__name__,
                            retry_in_s=round(wait, 3))
                await asyncio.sleep(wait)
                continue
            if self._stopping.is_set():
                break  # read during stop(): leave them pending, undialled
            for entry in entries:
                self._spawn(entry, taken_over=False)

    def _spawn(self, entry: Entry, *, taken_over: bool) -> None:
        task = asyncio.create_task(self._handle(entry, taken_over=taken_over))
        self._tasks[task] = entry.entry_id
        task.add_done_callback(self._tasks.pop)

    async def _heartbeat(self) -> None:
        lease_ms = int(self._settings.lease_s * 1000)
        while True:
            await asyncio.sleep(self._settings.lease_s / 4)
            try:
                await self._store.heartbeat(self._settings.consumer, lease_ms)
            except (*TRANSIENT, ResponseError) as e:  # e.g. OOM, until memory is freed
                log.warning("heartbeat_failed", error=str(e) or type(e).__name__)

    async def _take_over(self) -> None:
        """Claim entries left pending by originators whose lease lapsed (or by ourselves)."""
        min_idle_ms = int(self._settings.lease_s * 1000)
        while True:
            await asyncio.sleep(self._settings.lease_s / 2)
            free = self._settings.max_in_flight - len(self._tasks)
            if free <= 0 or self._stopping.is_set():
                continue
            try:
                pending = await self._store.pending(min_idle_ms, count=max(free * 4, 50))
                alive = await self._store.alive({p.consumer for p in pending})
                mine = set(self._tasks.values())
                orphans = [p.entry_id for p in pending
                           if (p.consumer not in alive or p.consumer == self._settings.consumer)
                           and p.entry_id not in mine][:free]
                entries = await self._store.claim(self._settings.consumer, orphans, min_idle_ms)
            except (*TRANSIENT, ResponseError) as e:
                log.warning("take_over_failed", error=str(e) or type(e).__name__)
                continue
            if self._stopping.is_set():
                continue  # claimed during stop(): left pending, for the others
            for entry in entries:
                log.info("request_taken_over", entry_id=entry.entry_id)
                self._spawn(entry, taken_over=True)

    async def stop(self, grace_s: float) -> None:
        """Take no new requests; let calls finish for ``grace_s``, then cancel the rest.

        A cancelled request stays pending; the lease is given up so that another
        originator takes it over at once.
        """
        self._stopping.set()
        if left := await drain(list(self._tasks), grace_s):
            log.warning("requests_left_pending", count=left)
        await self._acks.close()
        with contextlib.suppress(RedisError, OSError):
            await self._store.retire(self._settings.consumer)

    async def _handle(self, entry: Entry, *, taken_over: bool) -> None:
        structlog.contextvars.bind_contextvars(entry_id=entry.entry_id)
        try:
            if await self._process(entry, taken_over=taken_over):
                await self._acks.ack(entry.entry_id)
        except Exception:
            # Redis gone for minutes, or a bug: the entry stays pending and is taken over
            # again later (by us or another originator): retried, never lost.
            log.exception("request_failed")

    async def _request(self, entry: Entry) -> VerificationRequest:
        """The entry's request (its fields are not kept for the call's length)."""
        # A request without a phone takes the directory's (docs/contract.md).
        fields = await resolve(request_fields(entry.payload or b""), self._directory)
        return parse_fields(fields, requested_at=entry.enqueued_at,
                            default_ttl_s=self._settings.request_ttl_s,
                            callback_rules=self._callback_rules, clock_skew_s=CLOCK_SKEW_S)

    async def _process(self, entry: Entry, *, taken_over: bool) -> bool:
        """Settle one entry; True when it may be acknowledged, False when it was (by the
        script that stored its call's outcome in this process)."""
        try:
            req = await self._request(entry)
        except RequestError as e:
            return await self._reject(entry, Outcome.REJECTED, e.detail, e.message)
        except DirectoryError as e:
            # Fail closed: no number, no call; the outcome says it is callmfa's side.
            log.error("directory_lookup_failed", error=str(e))
            return await self._reject(entry, Outcome.ERROR, "directory_unavailable", str(e))
        structlog.contextvars.bind_contextvars(verification_id=req.id)
        if taken_over:
            try:
                if await self._store.get_outcome(req.id) is not None:
                    return True
            except ValueError as e:  # an outcome is there, unreadable: never dial again
                log.error("stored_outcome_unreadable", error=str(e))
                return True
            info = await self._store.call_info(req.id)
            if info:
                await self._adopt(req, info)
                return True
        if time.time() > req.expires_at:
            await self._finish(req, Outcome.EXPIRED, None)
            return True
        # Security policy (docs/security.md): decided before the call is claimed or placed.
        refusal = await self._security.check_number(req)
        if refusal is None:
            # An Asterisk with room now: 'dialing' rides with admission and the claim.
            ami = await self._ami.acquire(timeout_s=0)
            try:
                token = new_token()  # only Asterisk learns it; the marker keeps its hash
                # With no room now, the call waits for one until the request expires; its
                # lock lasts that much longer, never past its outcome's key (which frees it).
                lock_ttl = self._security.guard.lock_ttl_s
                wait_s = 0.0 if ami is not None else min(
                    req.expires_at - time.time(), self._settings.result_ttl_s - lock_ttl)
                found, detail, retry = await self._store.place_call(
                    req.id, self._security.guard.admission(req.id, req.user, req.number,
                                                           wait_s=wait_s),
                    _call_fields(req, token, entry.entry_id), dialing=ami is not None)
                if found in _CLAIMS:
                    claim = Claim(found)
                    if claim is not Claim.NEW:
                        log.info("request_duplicate", found=claim.value)
                        return True
                    held, ami = ami, None  # _call releases it
                    try:
                        await self._call(req, token, held)
                    finally:
                        settled = self._store.forget_call(req.id)
                    return not settled
                refusal = self._security.refusal(
                    Admission(Verdict(found), detail or None, int(retry) or None))
            finally:
                if ami is not None:
                    await self._ami.release(ami)
        if refusal is not None:
            await self._finish(req, refusal.outcome, refusal.detail,
                               retry_after=refusal.retry_after, reason=refusal.reason)
        return True

    def _ends_by(self, started: float) -> float:
        """When a call placed at ``started`` has ended at the latest, its IVR's outcome in."""
        s = self._settings
        return started + s.ring_timeout_s + s.max_call_s + s.outcome_grace_s

    async def _adopt(self, req: VerificationRequest, info: dict[str, str]) -> None:
        """A taken-over request whose call was placed: never dial again; wait, then settle."""
        try:
            started = float(info.get("call_started_at") or time.time())
        except ValueError:  # unreadable: the call may have just started
            started = time.time()
        ends_by = self._ends_by(started)
        log.info("call_adopted", wait_s=round(max(0.0, ends_by - time.time()), 1))
        record = await self._results.wait(req.id, max(0.0, ends_by - time.time()))
        if record is None:
            await self._finish(req, Outcome.ERROR, "originator_lost", started=started)

    async def _reject(self, entry: Entry, outcome: Outcome, detail: str, message: str) -> bool:
        """An outcome for a request that was never parsed into one (nothing dialled)."""
        rid = peek_id(entry.payload or b"")
        log.warning("request_rejected", verification_id=rid, detail=detail, error=message,
                    outcome=outcome.value)
        if rid is None:
            await self._store.deadletter(entry.entry_id, entry.payload, message)
            return True
        record = OutcomeRecord(
            id=rid, user=None, outcome=outcome, detail=detail,
            requested_at=entry.enqueued_at, finished_at=time.time(),
        )
        await self._store_outcome(record)
        return True

    async def _call(self, req: VerificationRequest, token: str, ami: AmiClient | None) -> None:
        """Place the call through ``ami`` (its 'dialing' event written with the claim), or
        through the first Asterisk with room; release it after."""
        dialing = ami is None
        if ami is None:
            ami = await self._ami.acquire(timeout_s=req.expires_at - time.time())
        if ami is None:
            log.warning("no_asterisk_available")
            await self._finish(req, Outcome.EXPIRED, "asterisk_unavailable")
            return
        try:
            await self._call_through(ami, req, token, dialing=dialing)
        finally:
            await self._ami.release(ami)

    async def _originate(self, ami: AmiClient, req: VerificationRequest, token: str,
                         channel: str) -> tuple[bool, int | None]:
        """Send the Originate and wait for its response: (answered, its Reason). Neither
        the action nor the response is kept for the call's length."""
        s = self._settings
        fields = {
            "Channel": channel,
            "Context": s.dialplan_context,
            "Exten": "s",
            "Priority": "1",
            "Timeout": str(int(s.ring_timeout_s * 1000)),
            "ChannelId": req.id,
        }
        if s.caller_id:
            fields["CallerID"] = s.caller_id
        variables = {
            "CALLMFA_ID": req.id,
            "CALLMFA_EXTENSION": req.extension,
            "CALLMFA_AGI": s.agi_url,
            "CALLMFA_MAX_SECS": str(s.max_call_s),
            "CALLMFA_AMD": s.amd,
            # AMD()'s arguments (ms), one variable each: AMI splits a Variable on commas.
            "CALLMFA_AMD_SILENCE": str(s.amd_initial_silence_ms),
            "CALLMFA_AMD_GREETING": str(s.amd_greeting_ms),
            "CALLMFA_AMD_TOTAL": str(s.amd_total_ms),
            # Keys pressed before the IVR runs are kept for it in a channel variable, which
            # Asterisk publishes (AMI VarSet): never for a PIN or a match code.
            "CALLMFA_KEEP_KEYS": "off" if keys_are_secret(req.mode) else "on",
            # The IVR reads it back with GET FULL VARIABLE (never an AGI() argument, which
            # Asterisk's verbose log shows).
            "CALLMFA_TOKEN": token,
        }
        log.debug("originate_sent", channel=channel, asterisk=ami.endpoint)
        result = await ami.originate(fields, variables, timeout_s=s.ring_timeout_s + 15)
        return result.answered, result.reason

    async def _call_through(self, ami: AmiClient, req: VerificationRequest, token: str,
                            *, dialing: bool) -> None:
        s = self._settings
        channel = s.dial_template.format(number=req.number, digits=req.number[1:])
        started = time.time()
        watch = ami.watch(req.id)
        ringing = _Ringing(watch, lambda at: self._store.event(req.id, "ringing", at))
        try:
            with self._results.expecting(req.id) as expected:
                if dialing:
                    await self._store.event(req.id, "dialing")
                answered_call, reason = await self._originate(ami, req, token, channel)
                if answered_call:
                    answered = time.time()
                    rang = await ringing.take(answered_at=answered)
                    await self._store.mark_answered(req.id, answered, ringing_at=rang,
                                                    hand_over_s=self._answer_hold_s)
                    log.info("call_answered", ring_ms=round((answered - started) * 1000),
                             channel=channel, asterisk=ami.endpoint)
                    await self._settle_answered(req, ami, watch, started, expected)
                    return
                cause = await _hangup_cause(watch, HANGUP_EVENT_WAIT_S)
                outcome, detail = failed_call_outcome(reason, cause)
                log.info("call_failed", reason=reason, hangup_cause=cause,
                         channel=channel, asterisk=ami.endpoint)
                await self._report_ringing(req.id, ringing)
                await self._finish(req, outcome, detail, started=started, cause=cause)
        except AmiConnectError as e:
            log.error("call_lost", error=str(e))
            await self._report_ringing(req.id, ringing)
            # The IVR may still have had its say (or say it now): give it the grace time.
            record = await self._results.wait(req.id, s.outcome_grace_s)
            if record is None:
                await self._finish(req, Outcome.ERROR, "asterisk_lost", started=started)
        except AmiError as e:
            log.error("originate_failed", error=str(e), payload=e.payload)
            await self._report_ringing(req.id, ringing)
            await self._finish(req, Outcome.ERROR, "originate_failed", started=started)
        finally:
            await ringing.close()
            ami.unwatch(req.id)

    async def _settle_answered(
        self, req: VerificationRequest, ami: AmiClient, watch: ChannelWatch, started: float,
        expected: Expected,
    ) -> None:
        """The IVR stores the outcome; if the channel ends without one, store an error."""
        s = self._settings
        arrived = expected.arrived  # a future, not a task: nothing per call to cancel
        await either(arrived, watch.hangup, timeout_s=s.max_call_s + 30)
        if not arrived.done() and watch.hangup.done():
            # Hung up: the IVR's outcome is at most a moment behind the Hangup event.
            lost = watch.hangup.exception() is not None  # the AMI connection, instead
            wait_s = await self._ivr_wait_s(ami, started) if lost else s.outcome_grace_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(arrived), wait_s)
        if arrived.done():
            record: OutcomeRecord | None = arrived.result()
        elif watch.hangup.done():
            record = None
        else:  # the call outlasted its limit with no message: the key may have it
            record = await expected.read(s.outcome_grace_s)
        if record is not None:
            if s.agi_mode == "classic":
                # The classic script stored it and counts nothing: this is the one process
                # that knows the call, so it counts the outcome (callmfa_outcomes_total).
                self._store.outcome_seen(record)
            _log_finished(record)
            return
        lost = watch.hangup.done() and watch.hangup.exception() is not None
        cause = watch.hangup.result() if watch.hangup.done() and not lost else None
        detail = "asterisk_lost" if lost else "no_ivr_outcome"
        await self._finish(req, Outcome.ERROR, detail, started=started, cause=cause)

    async def _ivr_wait_s(self, ami: AmiClient, started: float) -> float:
        """How long an answered call's IVR may still take once the AMI connection dropped:
        back within the grace time, Asterisk lives or restarted; over FastAGI a session
        still running has its say until the call's latest end, and one that died with
        Asterisk says so itself (asterisk_lost). Else no longer (the grace time is waited
        here)."""
        s = self._settings
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ami.connected.wait(), s.outcome_grace_s)
        if not ami.connected.is_set() or s.agi_mode != "fastagi":
            return 0.0
        return max(0.0, self._ends_by(started) - time.time())

    async def _report_ringing(self, rid: str, ringing: _Ringing) -> None:
        """The 'ringing' event of a call that was not answered (before its outcome)."""
        if (at := await ringing.take()) is not None:
            await self._store.event(rid, "ringing", at)

    async def _store_outcome(self, record: OutcomeRecord, *, callback_url: str = "") -> bool:
        return await retrying(
            lambda: self._store.store_outcome(record, callback_url=callback_url),
            what="store_outcome", for_s=SETTLE_RETRY_S)

    async def _finish(
        self,
        req: VerificationRequest,
        outcome: Outcome,
        detail: str | None,
        *,
        started: float | None = None,
        cause: int | None = None,
        retry_after: int | None = None,
        reason: str | None = None,
    ) -> None:
        record = OutcomeRecord(
            id=req.id, user=req.user, outcome=outcome, detail=detail, hangup_cause=cause,
            requested_at=req.requested_at, call_started_at=started, finished_at=time.time(),
            retry_after=retry_after, reason=reason,
        )
        if await self._store_outcome(record, callback_url=req.callback_url):
            _log_finished(record)


def _call_fields(req: VerificationRequest, token: str, entry_id: str) -> dict[str, str]:
    """What the IVR (possibly another process) needs to know about the call.

    The request's stream entry (``entry_id``), which the outcome's script acknowledges and
    deletes. Never an otp request's code: the IVR reads it from that entry, so that no copy
    of it outlives the call.
    """
    fields = {
        "token_hash": token_hash(token),
        "user": req.user,
        "number": req.number,
        "mode": req.mode,
        "lang": req.lang,
        "requested_at": str(req.requested_at),
        "call_started_at": str(time.time()),
        "context": json.dumps(req.context),
    }
    if req.match_hash:
        fields["match_hash"] = req.match_hash
    if req.callback_url:
        fields["callback_url"] = req.callback_url  # the outcome script sends the webhook there
    fields["entry_id"] = entry_id
    return fields


class _Acks:
    """Acknowledgements sent together: those asked for within ``ACK_BATCH_S`` of the first
    share one round trip (an entry is acknowledged only once its outcome is stored, and
    what waits for its acknowledgement waits a moment longer)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ids: list[str] = []
        self._flush: asyncio.Task[None] | None = None  # the batch still taking ids
        self._sending: set[asyncio.Task[None]] = set()  # every batch not yet done

    async def ack(self, entry_id: str) -> None:
        """Acknowledge and delete ``entry_id`` (retried across a Redis outage)."""
        self._ids.append(entry_id)
        if self._flush is None:
            self._flush = asyncio.create_task(self._send())
            self._sending.add(self._flush)
            self._flush.add_done_callback(self._sending.discard)
        # Shielded: a cancelled waiter must not cancel the others' acknowledgements.
        await asyncio.shield(self._flush)

    async def _send(self) -> None:
        await asyncio.sleep(ACK_BATCH_S)
        ids, self._ids, self._flush = self._ids, [], None
        await retrying(lambda: self._store.ack_all(ids), what="ack", for_s=SETTLE_RETRY_S)

    async def close(self) -> None:
        """Cancel every batch still under way, its ids taken or not (at stop, after the
        drain): those entries stay pending, to be taken over."""
        await cancel_and_wait(*self._sending)


class _Ringing:
    """The 'ringing' event, written once the phone has rung for ``RINGING_HOLD_S``; an
    answer (or the end of the call) that comes sooner takes it, to write both at once.

    No task waits for the ring: the watch tells us, and a timer starts the write.
    """

    def __init__(self, watch: ChannelWatch, write: Callable[[float], Coroutine[Any, Any, None]]
                 ) -> None:
        self._watch = watch
        self._write = write
        self._at: float | None = None
        self._taken = False
        self._written = False  # its event is in, by the timer's write
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        watch.on_ringing = self._rang

    def _rang(self) -> None:  # once: ChannelWatch.ring
        if self._taken:
            return
        self._at = time.time()
        self._timer = asyncio.get_running_loop().call_later(RINGING_HOLD_S, self._due)

    def _due(self) -> None:  # cancelled once taken
        self._timer = None
        assert self._at is not None
        self._writing = asyncio.create_task(self._write(self._at))

    def _stop_timer(self) -> None:
        self._taken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def take(self, *, answered_at: float | None = None) -> float | None:
        """When the phone started ringing, if its event is still to be written (the caller
        writes it now); None if it was written (waited for) or the phone has not rung.

        With ``answered_at`` (the call was answered), a ring not seen yet is waited for up
        to ``RING_LAG_S``, and dated to the answer if it comes."""
        self._stop_timer()
        if self._writing is not None:
            task, self._written = self._writing, True
            await asyncio.wait({task})  # so that 'ringing' precedes what comes next
            self._writing = None  # a finished task keeps its coroutine for the call's length
            if not task.cancelled():
                task.exception()  # a failed write is not the call's failure: read, dropped
        if self._written:
            return None
        rang = self._watch.ringing
        if self._at is None and not rang.is_set() and answered_at is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rang.wait(), RING_LAG_S)
        if self._at is not None:
            return self._at
        if not rang.is_set():
            return None
        return answered_at or time.time()  # rang an instant ago: not yet noted

    async def close(self) -> None:
        """Stop watching."""
        self._stop_timer()
        self._watch.on_ringing = None
        task, self._writing = self._writing, None
        if task is not None:
            await cancel_and_wait(task)


async def _hangup_cause(watch: ChannelWatch, wait_s: float) -> int | None:
    try:
        return await asyncio.wait_for(asyncio.shield(watch.hangup), wait_s)
    except (TimeoutError, AmiConnectError):
        return None


def _log_finished(record: OutcomeRecord) -> None:
    """The canonical one line per verification."""
    def ms(a: float | None, b: float | None) -> int | None:
        return round((b - a) * 1000) if a is not None and b is not None else None

    log.info(
        "verification_finished",
        outcome=record.outcome.value,
        detail=record.detail,
        reason=record.reason,
        hangup_cause=record.hangup_cause,
        total_ms=ms(record.requested_at, record.finished_at),
        queue_ms=ms(record.requested_at, record.call_started_at),
        input_at=iso(record.input_at),
    )
