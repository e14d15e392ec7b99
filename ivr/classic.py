"""The classic AGI driver: the same flow, run by Asterisk as a process per call (pyst2).

``agi_scripts/callmfa-verify.agi`` calls :func:`main`. Settings come from the environment
Asterisk passes and from ``$AST_CONFIG_DIR/callmfa.env`` (``CALLMFA_X=value`` lines; the
environment wins). Nothing is written to stderr: pyst2 traces every command and reply
there (the keys, a PIN among them), and Asterisk may log it, so it goes to /dev/null.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

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
    Step,
)
from .domain.outcome import Outcome
from .exceptions import AgiError, AgiHangup, IvrError
from .settings import Settings, read_config_file
from .storage.backoff import retrying_sync
from .transport.agi import (
    COLLECT_CONTEXT,
    collect_args,
    parse_read_result,
    parse_reply,
    read_args,
    read_result,
)

ENV_FILE = "callmfa.env"
# The settings this script reads (the driver, ivr.call, ivr.storage.sync and its Sentinel
# plan): `callmfa install-dialplan` writes these to callmfa.env and no others, so that the
# file, which Asterisk's group reads, holds no secret the script does not use.
SETTINGS_READ = frozenset({
    "redis_url", "connect_timeout_s", "redis_sentinels", "redis_sentinel_service",
    "redis_sentinel_user", "redis_sentinel_password", "redis_sentinel_tls",
    "redis_failover_s", "redis_wait_replicas", "redis_wait_timeout_ms",
    "result_ttl_s", "events_maxlen", "signing_key", "webhook_url",
    "input_timeout_s", "max_attempts", "prompt_override_dir",
    "pin_pepper", "pin_lockout_after", "pin_lockout_s", "fraud_block_s",
})
# What callmfa.env says of its role: AGI only (no webhook sender, so no webhook secret).
ROLE = "agi"

T = TypeVar("T")


def load_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment over ``$AST_CONFIG_DIR/callmfa.env`` (if there is one)."""
    path = Path(environ.get("CALLMFA_ENV_FILE")
                or Path(environ.get("AST_CONFIG_DIR", "/etc/asterisk")) / ENV_FILE)
    values = read_config_file(path) if path.is_file() else {}
    values.update({k: v for k, v in environ.items() if k.startswith("CALLMFA_")})
    return values


class _LastLine:
    """pyst2's stdin, keeping the last line read: pyst2 parses both ``200 result=`` ('#'
    alone) and ``200 result= (timeout)`` as ``('', '')``, and only the raw line tells them
    apart."""

    def __init__(self, stdin: Any) -> None:
        self._stdin = stdin
        self.last = ""

    def readline(self) -> Any:
        line = self._stdin.readline()
        self.last = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        return line


class ClassicDriver:
    """Carries out the flow's steps over pyst2's AGI (stdin/stdout) and redis-py's sync client."""

    def __init__(self, agi: Any, store: Any, settings: Settings) -> None:
        self._lines = _LastLine(agi.stdin)
        agi.stdin = self._lines
        self._agi = agi
        self._store = store
        self._settings = settings

    def _command(self, method: str, *args: str) -> Any:
        return self._call(method, lambda: getattr(self._agi, method)(*args))

    def _call(self, what: str, command: Callable[[], Any]) -> Any:
        from asterisk.agi import AGIAppError, AGIError

        try:
            return command()
        except AGIAppError:
            raise AgiHangup() from None  # result=-1, SIGHUP or SIGPIPE: the caller is gone
        except AGIError as e:
            raise AgiError(f"AGI {what} failed", str(e)) from None

    def _gosub(self, *args: str) -> None:
        """AGI GOSUB. Asterisk answers it with '100 result=0 Trying...' before the
        subroutine's '200 result=0 Gosub complete'; pyst2 takes any 100 for an error."""
        from asterisk.agi import AGIUnknownError

        def gosub() -> Any:
            try:
                return self._agi.execute("GOSUB", *args)
            except AGIUnknownError as e:
                if e.args[:1] != (100,):
                    raise
                return self._agi.get_result()

        self._call("GOSUB", gosub)

    def _playing(self, file: str, method: str, *args: str) -> Any:
        """A command that plays ``file``. Its ``result=-1`` is a hang-up or a missing file
        (as FastAGI's channel tells them apart): after a hang-up, Asterisk sends SIGHUP
        before it reads the next command, so a NOOP says which."""
        try:
            return self._command(method, *args)
        except AgiHangup:
            raw = self._lines.last.strip()
            self._command("noop")  # AgiHangup if the SIGHUP came (before or with it)
            self._command("test_hangup")
            raise AgiError(f"cannot play {file} on a live call: is the prompt installed?",
                           raw) from None

    def _read_result(self, expression: str) -> str:
        """GET FULL VARIABLE of how Read() ended, without pyst2's SIGHUP check first: after
        a hang-up just as Read() returned (its SIGHUP comes before Asterisk reads this
        command), the answer Read() collected still counts, as in serve's IVR. The command
        is allowed on a dead channel; a hang-up during Read() reads READSTATUS=HANGUP."""
        def get_full_variable() -> str:
            try:
                self._agi.send_command("GET FULL VARIABLE", f'"{expression}"')
            except BrokenPipeError:
                raise AgiHangup() from None
            return str(self._agi.get_result()["result"][1])

        return str(self._call("GET FULL VARIABLE", get_full_variable))

    def _log(self, message: str, level: int = 3) -> None:
        with contextlib.suppress(AgiHangup, AgiError):  # a log line is not worth a failed call
            self._command("verbose", f"callmfa: {message}", str(level))

    def _admit(self, call: CallContext) -> str | None:
        """None when this process is the call its marker describes and now owns it; else
        why it is refused (as the FastAGI IVR's ``_admit``)."""
        if not call.token_hash:
            return "unknown_call"
        try:
            call.apply_channel_probe(
                str(self._command("get_full_variable", call.channel_probe(self._settings)))
            )
        except (AgiHangup, AgiError):
            return "no_token"
        if not call.token_proven:
            return "bad_token"
        if not self._store.claim_ivr(call.id, time.time()):
            return "already_claimed"
        return None

    def run(self, rid: str) -> None:
        """Run one verification call to its end; an error nobody expected (Redis down past
        the retries, a bug) is logged and the call hung up, never raised to pyst2."""
        try:
            self._run(rid)
        except Exception as e:  # noqa: BLE001 - the session's one boundary: logged, hung up
            self._log(f"{rid}: failed ({type(e).__name__}: {e}); hanging up", level=1)
            self._play_and_hang_up(())

    def _run(self, rid: str) -> None:
        info = self._store.call_info(rid) if rid else {}
        call = CallContext.from_marker(rid, info, time.time())
        refusal = self._admit(call)
        if refusal is not None:
            self._log(f"{rid}: AGI session refused ({refusal}); nothing recorded", level=1)
            return
        pin = self._store.pin_state(call.user) if call.mode == "pin" and call.user else None
        if call.mode == "otp":  # from the request's stream entry, never through Asterisk
            from .domain.request import otp_of  # (only otp calls load the request parser)

            call.otp = otp_of(self._store.request_payload(call.entry_id), call.id)
        try:  # an AGI error from here on is agi_failed, as in serve's IVR
            try:
                self._command("set_variable", "CHANNEL(language)", call.lang)
                self._command("test_hangup")  # Asterisk's SIGHUP: keys before it never count
            except AgiHangup:
                call.early_keys = ""  # the flow's first step finds the caller gone
            started = call.started(
                pin_hash=pin.hash if pin else "", pin_locked=bool(pin and pin.locked)
            )
            flow = call.flow(self._settings)
            step: Step = flow.send(started)
            if flow.answered_early:  # keys pressed before the IVR ran are the answer
                call.note_input()
            while not isinstance(step, Hangup):
                step = flow.send(self._carry_out(step, call))
        except AgiError as e:
            self._log(f"{rid}: AGI failed: {e}")
            self._report(call, Report(Outcome.ERROR, "agi_failed"))
        self._play_and_hang_up(())

    def _carry_out(self, step: Step, call: CallContext) -> Event:
        if (input_at := call.input_due(step)) is not None:
            self._store.event(call.id, "input", input_at)
        try:
            if isinstance(step, Collect):
                files = call.files(step.prompts, self._settings)
                heard = ""
                if step.secret:  # GET DATA: unlike Read(), it does not log the keys
                    reply = self._playing(files[0], "execute", "GET DATA", files[0],
                                          str(step.timeout_ms), str(step.max_digits))
                    digits = reply["result"][0]
                    timed_out = parse_reply(self._lines.last.strip()).data == "timeout"
                elif (seen := call.collect_seen) is not None:
                    self._gosub(COLLECT_CONTEXT, "s", "1", collect_args(
                        seen, files, step.timeout_ms, step.max_digits))
                else:
                    self._command("appexec", "Read", read_args(
                        files, step.timeout_ms, step.max_digits))
                if not step.secret:
                    digits, timed_out, heard, _ = parse_read_result(
                        self._read_result(read_result(call.heard_expression)))
                return call.collected(digits, timed_out, heard, step.max_digits)
            if isinstance(step, CheckCode):
                return call.code_checked(
                    call.check_code(step.digits, self._settings.pin_pepper.encode()))
            if isinstance(step, Play):
                self._command("appexec", "Playback", "&".join(
                    call.files(step.prompts, self._settings)))
                return Done()
            if isinstance(step, Recite):  # one STREAM FILE per digit: no log line holds all
                files = call.files(step.prompts, self._settings)
                escape = "*" if step.interruptible else ""
                for played, file in enumerate(files):
                    if key := str(self._playing(file, "stream_file", file, escape)):
                        return Recited(key, played)
                waited = self._command("wait_for_digit", str(step.wait_ms)) \
                    if step.wait_ms else ""
                return Recited(str(waited), len(files))
            assert isinstance(step, Report)
            self._report(call, step)
            return Done()
        except AgiHangup:
            return HungUp()

    def _report(self, call: CallContext, step: Report) -> None:
        if step.outcome is Outcome.FRAUD_REPORTED and call.user:
            # Block before the outcome is published: the next request must find the block.
            self._retrying("report_fraud", lambda: self._store.report_fraud(
                rid=call.id, user=call.user, number=call.number, context=call.context))
        record = call.record(step.outcome, step.detail)
        input_at = call.take_input()
        stored = self._retrying("store_outcome", lambda: self._store.store_outcome(
            record, input_at=input_at))
        self._log(f"{call.id}: outcome {step.outcome.value}"
                  + ("" if stored else " (an outcome was already stored)"))
        effect = call.pin_effect(step.outcome) if stored else PinEffect.NONE
        if effect is PinEffect.COUNT_DENIAL and call.user:
            if self._store.record_denial(call.user, rid=call.id):
                self._log(f"{call.id}: the user's PIN is now locked out")
        elif (effect is PinEffect.RESET and call.user
              and self._store.reset_pin(call.user, call.pin_upgrade) == 2):
            self._log(f"{call.id}: the user's PIN hash is now peppered")

    def _retrying(self, what: str, write: Callable[[], T]) -> T:
        """``write`` retried through a Redis restart for as long as serve's IVR does."""
        def note(error: Exception, attempt: int, wait_s: float) -> None:
            self._log(f"Redis unavailable for {what} ({error or type(error).__name__}): "
                      f"retry {attempt} in {wait_s:.2f}s", level=2)
        return retrying_sync(write, for_s=STORE_RETRY_S, on_retry=note)

    def _play_and_hang_up(self, files: tuple[str, ...]) -> None:
        try:
            if files:
                self._command("appexec", "Playback", "&".join(files))
            self._command("hangup")
        except (AgiHangup, AgiError):
            pass


def main(
    argv: Sequence[str], stdin: IO[str] | None = None, stdout: IO[str] | None = None
) -> int:
    """Run the IVR for the call Asterisk handed this process; 0 unless nothing could run."""
    from asterisk.agi import AGI

    from .storage.sync import SyncStore

    with open(os.devnull, "w") as sink:
        agi = AGI(stdin or sys.stdin, stdout or sys.stdout, sink)
        try:
            settings = Settings.from_env(load_env(os.environ))
        except IvrError as e:
            agi.verbose(f"callmfa: bad settings: {e}", 1)
            return 1
        rid = argv[1] if len(argv) > 1 else agi.env.get("agi_uniqueid", "")
        store = SyncStore.connect(settings)
        try:
            ClassicDriver(agi, store, settings).run(rid)
        finally:
            store.close()
    return 0
