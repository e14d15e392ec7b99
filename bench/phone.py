"""sipp as the bench's phones: every call answers, waits, presses '#' over SIP INFO.

The wait is fixed, or drawn for each call by sipp (uniform between two bounds); the phone
may say something as it answers (for answering-machine detection), while it waits.
The message trace (``-trace_msg``) gives when each INVITE reached the phone, when the phone
answered and when it sent its '#', keyed by the dialled number, which the bench makes
unique per call.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ivr.testing import PhoneBehaviour, _udp_bound, scenario_xml, synthesize

from .system import cpu

_SEPARATOR = "----------------------------------------------- "
_NUMBER = re.compile(r"INVITE sip:(\+?\d+)@")


@dataclass
class PhoneTimes:
    """When the phone saw the call's INVITE, answered it and sent its '#' (epoch seconds)."""

    invite_at: float | None = None
    answered_at: float | None = None
    key_at: float | None = None


class BenchPhone:
    """One sipp process for one run: ``calls`` calls, at most ``calls`` at once."""

    def __init__(self, workdir: Path, *, address: str, calls: int, key_delay_ms: int,
                 trace: bool, key_delay_max_ms: int | None = None,
                 speech: str | None = None) -> None:
        self.workdir = workdir
        self._host, _, port = address.partition(":")
        self._port = port or "5070"
        self._calls = calls
        self._behaviour = PhoneBehaviour(
            keys="#", dtmf="info", key_delay_ms=key_delay_ms, key_delay_max_ms=key_delay_max_ms,
            speech=speech, keys_over_speech=True,
        )
        self._trace = trace
        self._proc: subprocess.Popen[bytes] | None = None
        self._times: dict[str, PhoneTimes] | None = None
        self.cpu_s = 0.0
        self.exit_code: int | None = None

    @property
    def trace_file(self) -> Path:
        """sipp's message trace."""
        return self.workdir / "messages.log"

    def start(self) -> None:
        """Start sipp; returns once it listens (reuses ivr.testing's readiness check)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        scenario = self.workdir / "phone.xml"
        speech_file, speech_ms = None, 0
        if self._behaviour.speech:
            speech_file = self.workdir / "speech.wav"
            speech_ms = synthesize(self._behaviour.speech, speech_file)
        scenario.write_text(scenario_xml(self._behaviour, speech_file=speech_file,
                                         speech_ms=speech_ms))
        cmd = [
            "sipp", "-sf", str(scenario), "-i", self._host, "-p", self._port,
            "-mp", "16000", "-m", str(self._calls), "-l", str(self._calls), "-nostdin",
            "-timeout", "600s", "-max_recv_loops", "10000",
            "-trace_err", "-error_file", str(self.workdir / "errors.log"),
        ]
        if self._trace:
            cmd += ["-trace_msg", "-message_file", str(self.trace_file)]
        with open(self.workdir / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env={**os.environ, "TZ": "UTC"},
            )
        deadline = time.monotonic() + 10
        while not _udp_bound(int(self._port)):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sipp did not start: {self.workdir / 'stdout.log'}")
            time.sleep(0.01)

    def finish(self, timeout_s: float) -> None:
        """Wait for sipp to end its calls (or stop it); record its exit code and CPU."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while self._proc.poll() is None and time.monotonic() < deadline:
            # poll() reaps, so read the CPU from /proc while it still runs.
            self.cpu_s = _cpu_s(self._proc.pid)
            time.sleep(0.05)
        if self._proc.poll() is None:
            self.cpu_s = _cpu_s(self._proc.pid)
            self._proc.terminate()
            self._proc.wait(10)
        self.exit_code = self._proc.returncode

    def times(self) -> dict[str, PhoneTimes]:
        """Per dialled number: INVITE received, answered, first '#' sent (from the trace;
        read once, after :meth:`finish`)."""
        if self._times is not None:
            return self._times
        calls: dict[str, PhoneTimes] = {}
        by_call_id: dict[str, PhoneTimes] = {}
        if not self.trace_file.exists():
            return calls
        stamp = 0.0
        first = call_id = cseq = ""
        with open(self.trace_file, errors="replace") as f:
            for line in f:
                if line.startswith(_SEPARATOR):
                    _note(calls, by_call_id, first, call_id, cseq, stamp)
                    stamp = _epoch(line[len(_SEPARATOR):].strip())
                    first = call_id = cseq = ""
                elif not first and line.startswith(("INVITE ", "INFO ", "SIP/", "ACK ", "BYE ")):
                    first = line
                elif line.startswith("Call-ID:"):
                    call_id = line[8:].strip()
                elif line.startswith("CSeq:"):
                    cseq = line[5:].strip()
        _note(calls, by_call_id, first, call_id, cseq, stamp)
        if self.exit_code is not None:
            self._times = calls
        return calls


def _note(calls: dict[str, PhoneTimes], by_call_id: dict[str, PhoneTimes], first: str,
          call_id: str, cseq: str, stamp: float) -> None:
    if first.startswith("SIP/2.0 200") and cseq.endswith(" INVITE"):
        # The phone's own 200 to the INVITE (Asterisk sends none): the answer.
        answered = by_call_id.get(call_id)
        if answered is not None and answered.answered_at is None:
            answered.answered_at = stamp
    elif first.startswith("INVITE "):
        m = _NUMBER.match(first)
        if m and call_id not in by_call_id:
            times = calls.setdefault(m.group(1), PhoneTimes())
            times.invite_at = stamp
            by_call_id[call_id] = times
    elif first.startswith("INFO "):
        times_or_none = by_call_id.get(call_id)
        if times_or_none is not None and times_or_none.key_at is None:
            times_or_none.key_at = stamp


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


def _cpu_s(pid: int) -> float:
    try:
        return cpu(pid).self_s
    except OSError:
        return 0.0
