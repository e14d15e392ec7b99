"""The scripted Asterisk of fake_asterisk.py, spoken to the classic AGI driver (pyst2 over
stdin and stdout), so that one script runs a call through both drivers.

pyst2 quotes some arguments (``SET VARIABLE "name" "value"``, ``EXEC Read "..."``); Asterisk's
parser drops the quotes, and so does this adapter before it asks :class:`FakeAsterisk`. A
classic AGI script learns of a hang-up by SIGHUP, not by a ``HANGUP`` line: such a line
sets pyst2's SIGHUP flag instead of being written.
"""

from __future__ import annotations

import io
import time
from typing import Any

from asterisk.agi import AGI
from redis import Redis

from ivr.classic import ClassicDriver
from ivr.settings import Settings
from ivr.storage.sync import SyncStore

from .fake_asterisk import FakeAsterisk

HEADERS = "agi_request: callmfa-verify.agi\nagi_channel: PJSIP/trunk-00000001\n"


class _Stdout:
    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe

    def write(self, data: str) -> int:
        self._pipe.pending += data
        return len(data)

    def flush(self) -> None:
        pass


class _Pipe:
    """pyst2's stdin and stdout: each command line written is answered on the next reads."""

    def __init__(self, asterisk: FakeAsterisk, rid: str) -> None:
        self.asterisk = asterisk
        self.agi: Any = None
        self.pending = ""
        self._lines = [*f"{HEADERS}agi_uniqueid: {rid}\n\n".splitlines(keepends=True)]
        self.stdout = _Stdout(self)

    def readline(self) -> str:
        while not self._lines:
            line, sep, self.pending = self.pending.partition("\n")
            assert sep, "pyst2 read a reply to no command"
            command = line.replace('"', "").rstrip()
            self.asterisk.commands.append(command)
            answer = self.asterisk.reply(command)
            assert answer is not None, "closing the pipe is not scripted for pyst2"
            for reply in answer.decode().splitlines(keepends=True):
                if reply == "HANGUP\n":
                    self.agi._got_sighup = True  # what Asterisk's SIGHUP does to pyst2
                else:
                    self._lines.append(reply)
        return self._lines.pop(0)


def run_classic(
    redis_url: str, settings: Settings, rid: str, asterisk: FakeAsterisk
) -> list[str]:
    """Run the classic driver for ``rid`` against ``asterisk``; the commands it sent."""
    pipe = _Pipe(asterisk, rid)
    agi = AGI(pipe, pipe.stdout, io.StringIO())
    pipe.agi = agi
    store = SyncStore(Redis.from_url(redis_url), settings)
    try:
        started = time.monotonic()
        ClassicDriver(agi, store, settings).run(rid)
        assert time.monotonic() - started < 30
    finally:
        store.close()
    return [c for c in asterisk.commands if not c.startswith("VERBOSE ")]
