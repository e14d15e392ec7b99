"""The verification IVR over FastAGI: one session per answered call.

It loads the call marker the originator wrote, drives the sans-IO flow over the AGI
channel and stores the outcome the moment the keys are known, before the goodbye prompt.
"""

from __future__ import annotations

import time

import structlog

from .domain.flow import (
    Collect,
    Digits,
    Done,
    Event,
    Hangup,
    HungUp,
    Play,
    StandardFlow,
    Started,
    Step,
)
from .domain.outcome import Outcome, OutcomeRecord
from .domain.prompts import sound_files
from .exceptions import AgiConnectionLostError, AgiError, AgiHangup
from .settings import Settings
from .storage.retry import retrying
from .storage.store import Store
from .transport.agi import AgiChannel
from .transport.fastagi import AgiSession

log = structlog.get_logger("ivr.session")

# The caller is on the line: an outcome stored a little late beats none (Redis restarting).
STORE_RETRY_S = 30.0


class VerificationIvr:
    """The FastAGI handler for the ``verify`` route."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

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
        info = await self._store.call_info(rid) if rid else {}
        if not info:
            # Not a call we placed (or its marker expired): say sorry, record nothing.
            log.warning("ivr_unknown_call")
            await _play_and_hang_up(session.channel, ("failed",))
            return
        call = _Call(rid, info, answered)
        flow = StandardFlow(
            input_timeout_ms=int(self._settings.input_timeout_s * 1000),
            max_attempts=self._settings.max_attempts,
        )
        try:
            await self._run(flow, session.channel, call)
        except AgiConnectionLostError as e:
            log.error("ivr_asterisk_lost", error=str(e))
            await self._report(call, Outcome.ERROR, "asterisk_lost")
        except AgiError as e:
            log.error("ivr_agi_failed", error=str(e), raw=e.raw)
            await self._report(call, Outcome.ERROR, "agi_failed")
            if not session.channel.hung_up:
                await session.channel.hangup()

    async def _run(self, flow: StandardFlow, channel: AgiChannel, call: _Call) -> None:
        step: Step = flow.send(Started())
        while not isinstance(step, Hangup):
            event: Event
            try:
                if isinstance(step, Collect):
                    digits, timed_out = await channel.read_keys(
                        sound_files(step.prompts, call.lang), step.timeout_ms, step.max_digits
                    )
                    if digits or not timed_out:
                        call.input_at = time.time()
                        await self._store.event(call.id, "input")
                    log.info("dtmf_collected", keys=len(digits), timed_out=timed_out)
                    event = Digits(digits, timed_out)
                elif isinstance(step, Play):
                    await channel.playback(sound_files(step.prompts, call.lang))
                    event = Done()
                else:
                    await self._report(call, step.outcome, step.detail)
                    event = Done()
            except AgiHangup:
                log.info("caller_hung_up")
                event = HungUp()
            step = flow.send(event)
        if not channel.hung_up:
            await channel.hangup()

    async def _report(self, call: _Call, outcome: Outcome, detail: str | None) -> None:
        record = OutcomeRecord(
            id=call.id, user=call.user, outcome=outcome, detail=detail,
            requested_at=call.requested_at, call_started_at=call.call_started_at,
            answered_at=call.answered_at, input_at=call.input_at, finished_at=time.time(),
        )
        stored = await retrying(lambda: self._store.store_outcome(record),
                                what="store_outcome", for_s=STORE_RETRY_S)
        published = time.time()
        log.info(
            "outcome_published" if stored else "outcome_already_known",
            outcome=outcome.value,
            detail=detail,
            input_to_published_ms=round((published - call.input_at) * 1000, 2)
            if call.input_at else None,
        )


class _Call:
    """What one IVR session knows about its verification."""

    def __init__(self, rid: str, info: dict[str, str], answered: float) -> None:
        self.id = rid
        self.user = info.get("user")
        self.lang = info.get("lang", "en")
        self.requested_at = _float(info.get("requested_at"))
        self.call_started_at = _float(info.get("call_started_at"))
        # The originator records the answer; if its note is not in yet, ours is as good.
        self.answered_at = _float(info.get("answered_at")) or answered
        self.input_at: float | None = None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def _play_and_hang_up(channel: AgiChannel, prompts: tuple[str, ...]) -> None:
    try:
        await channel.playback(sound_files(prompts))
    except AgiHangup:
        return
    await channel.hangup()
