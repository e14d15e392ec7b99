"""The verification IVR over FastAGI: one session per answered call.

It loads the call marker the originator wrote and admits the session only if the channel
holds the call's token (see :mod:`ivr.domain.calltoken`) and no other session took the
call; a refused session is closed at once and changes nothing. It then loads the user's
PIN state in pin mode, drives the sans-IO flow over the AGI channel and stores the outcome
the moment the keys are known, before the goodbye prompt. The slow code hash runs in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from .call import STORE_RETRY_S, CallContext, PinEffect
from .domain.flow import (
    CheckCode,
    Collect,
    Done,
    Event,
    Hangup,
    HungUp,
    Play,
    Recite,
    Recited,
    Report,
    Started,
    Step,
    VerificationFlow,
    keys_are_secret,
)
from .domain.outcome import Outcome
from .domain.request import otp_of
from .exceptions import AgiConnectionLostError, AgiError, AgiHangup
from .security import Security
from .settings import Settings
from .storage.pins import PinState, PinStore
from .storage.retry import retrying
from .storage.store import Store
from .transport.agi import AgiChannel
from .transport.fastagi import AgiSession

log = structlog.get_logger("ivr.session")

# Reads before the first prompt longer than this (a failover) make "no input" an error.
REDIS_STALL_S = 1.0


class IvrObserver(Protocol):
    """Told of what the IVR refused (the metrics)."""

    def session_refused(self, reason: str) -> None:
        """An AGI session was refused: it is not (or no longer) the call it names."""


class VerificationIvr:
    """The FastAGI handler for the ``verify`` route."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        pins: PinStore | None = None,
        security: Security | None = None,
        observer: IvrObserver | None = None,
    ) -> None:
        self._settings = settings
        self._pepper = settings.pin_pepper.encode()
        self._store = store
        self._observer = observer
        self._pins = pins or PinStore.for_settings(store.redis, settings)
        self._security = security or Security.for_redis(settings, store.redis)

    def reload(self, settings: Settings) -> None:
        """Apply settings that may change at run time (SIGHUP)."""
        self._settings = settings

    async def __call__(self, session: AgiSession) -> None:
        """Run one verification call to its end."""
        answered = time.time()
        rid = session.args[0] if session.args else session.headers.get("agi_uniqueid", "")
        structlog.contextvars.bind_contextvars(
            verification_id=rid, channel=session.headers.get("agi_channel")
        )
        # The marker's dict is not kept for the call's length: only its CallContext.
        call = CallContext.from_marker(
            rid, await self._store.call_info(rid) if rid else {}, answered)
        read_s = time.time() - answered
        refusal, claim_s = await self._admit(call, session.channel)
        # Keys pressed while these Redis calls waited (a failover) are dropped by Asterisk
        # before the first GET DATA: then "no input" would not be the truth.
        stalled = max(read_s, claim_s) > REDIS_STALL_S
        if refusal is not None:
            log.warning("ivr_session_refused", reason=refusal, peer=session.peer)
            if self._observer is not None:
                self._observer.session_refused(refusal)
            return
        try:
            started = await self._prepare(call, session.channel)
            await self._run(call.flow(self._settings), started, session.channel, call,
                            stalled=stalled)
        except AgiConnectionLostError as e:
            log.error("ivr_asterisk_lost", error=str(e))
            await self._report(call, Report(Outcome.ERROR, "asterisk_lost"))
        except AgiError as e:
            log.error("ivr_agi_failed", error=str(e), raw=e.raw)
            await self._report(call, Report(Outcome.ERROR, "agi_failed"))
            if not session.channel.hung_up:
                # After a failed command (a timeout: Asterisk may be stuck) the HANGUP is a
                # courtesy, waited for the header timeout at most.
                with contextlib.suppress(AgiError):
                    await session.channel.hangup(timeout_s=self._settings.agi_header_timeout_s)

    async def _admit(self, call: CallContext, channel: AgiChannel) -> tuple[str | None, float]:
        """None when this session is the call its marker describes and now owns it; else
        why it is refused; and how long the claim took. Reads the channel probe (the token,
        AMD, early keys) on the way.

        The probe gets the header deadline, not the command timeout: a client that never
        answers must not hold a session slot for long.
        """
        if not call.token_hash:
            return "unknown_call", 0.0  # never placed by callmfa, or its marker expired
        try:
            call.apply_channel_probe(await channel.get_full_variable(
                call.channel_probe(self._settings),
                timeout_s=self._settings.agi_header_timeout_s,
            ))
        except (AgiError, AgiHangup):
            return "no_token", 0.0
        if not call.token_proven:
            return "bad_token", 0.0
        started = time.time()
        if not await self._store.claim_ivr(call.id, started):
            return "already_claimed", time.time() - started
        return None, time.time() - started

    async def _prepare(self, call: CallContext, channel: AgiChannel) -> Started:
        """The channel's language, the PIN state; keys before a hang-up are dropped."""
        pin = await self._pins.state(call.user) if call.mode == "pin" and call.user \
            else PinState()
        if call.mode == "otp":
            # The code is read from the request's stream entry, here, never passed through
            # Asterisk (whose Originate variables AMI publishes and its log shows).
            call.otp = otp_of(await self._store.request_payload(call.entry_id), call.id)
        with contextlib.suppress(AgiHangup):  # the flow's first step reports hung_up
            await channel.set_variable("CHANNEL(language)", call.lang)
        if channel.hung_up:  # Asterisk said HANGUP: keys pressed before it never count
            call.early_keys = ""
        # How many keys make a PIN or a match code is a secret: only say whether any came.
        early = bool(call.early_keys) if keys_are_secret(call.mode) else len(call.early_keys)
        log.info("ivr_started", mode=call.mode, lang=call.lang, amd=call.amd_status or None,
                 amd_cause=call.amd_cause or None, early_keys=early)
        return call.started(pin_hash=pin.hash, pin_locked=pin.locked)

    async def _run(
        self, flow: VerificationFlow, started: Started, channel: AgiChannel, call: CallContext,
        *, stalled: bool = False,
    ) -> None:
        step: Step = flow.send(started)
        if flow.answered_early:
            call.note_input()
        while not isinstance(step, Hangup):
            if (input_at := call.input_due(step)) is not None:
                await self._store.event(call.id, "input", input_at)
            event: Event
            try:
                if isinstance(step, Collect):
                    files = call.files(step.prompts, self._settings)
                    heard, kept = "", False
                    if step.secret:
                        digits, timed_out = await channel.get_data(
                            files[0], step.timeout_ms, step.max_digits
                        )
                    else:
                        digits, timed_out, heard, kept = await channel.read_keys(
                            files, step.timeout_ms, step.max_digits, call.heard_expression,
                            seen=call.collect_seen,
                        )
                    event = call.collected(digits, timed_out, heard, step.max_digits)
                    if step.secret:
                        log.info("dtmf_collected", secret=True, timed_out=timed_out)
                    else:
                        log.info("dtmf_collected", keys=len(digits), timed_out=timed_out,
                                 kept=kept)
                elif isinstance(step, CheckCode):
                    ok = await asyncio.to_thread(call.check_code, step.digits, self._pepper)
                    log.info("code_checked", ok=ok)
                    event = call.code_checked(ok)
                elif isinstance(step, Play):
                    await channel.playback(call.files(step.prompts, self._settings))
                    event = Done()
                elif isinstance(step, Recite):
                    event = await _recite(channel, call.files(step.prompts, self._settings),
                                          step)
                    log.info("code_read", keyed=bool(event.key))
                else:
                    if stalled and step.outcome is Outcome.NO_INPUT:
                        log.warning("no_input_after_redis_stall", stall_s=REDIS_STALL_S)
                        step = Report(Outcome.ERROR, "redis_unavailable")
                    await self._report(call, step)
                    event = Done()
            except AgiHangup:
                log.info("caller_hung_up")
                event = HungUp()
            step = flow.send(event)
        if not channel.hung_up:
            await channel.hangup()

    async def _report(self, call: CallContext, step: Report) -> None:
        if step.outcome is Outcome.FRAUD_REPORTED and call.user:
            # Block before the outcome is published: the next request must find the block.
            user = call.user
            await retrying(lambda: self._security.report_fraud(
                rid=call.id, user=user, number=call.number, context=call.context),
                what="report_fraud", for_s=STORE_RETRY_S)
        record = call.record(step.outcome, step.detail)
        input_at = call.take_input()  # the 'input' event rides with the outcome
        stored = await retrying(
            lambda: self._store.store_outcome(record, input_at=input_at),
            what="store_outcome", for_s=STORE_RETRY_S,
        )
        published = time.time()
        log.info(
            "outcome_published" if stored else "outcome_already_known",
            outcome=step.outcome.value,
            detail=step.detail,
            input_to_published_ms=round((published - call.input_at) * 1000, 2)
            if call.input_at else None,
        )
        effect = call.pin_effect(step.outcome) if stored else PinEffect.NONE
        if effect is PinEffect.COUNT_DENIAL and call.user:
            if await self._pins.record_denial(call.user, rid=call.id):
                log.warning("pin_locked_out", after=self._settings.pin_lockout_after)
        elif (effect is PinEffect.RESET and call.user
              and await self._pins.reset(call.user, call.pin_upgrade) == 2):
            log.info("pin_hash_upgraded")


async def _recite(channel: AgiChannel, files: tuple[str, ...], step: Recite) -> Recited:
    """Play ``files`` one STREAM FILE each (``*`` cuts them when interruptible), then wait
    ``step.wait_ms`` for a key."""
    escape = "*" if step.interruptible else ""
    for played, file in enumerate(files):
        if key := await channel.stream_file(file, escape):
            return Recited(key, played)
    key = await channel.wait_for_digit(step.wait_ms) if step.wait_ms else ""
    return Recited(key, len(files))
