"""The AGI protocol: header and reply parsing (pure), and an async command channel.

Replies look like ``200 result=<n> [(data)] [endpos=<n>]``. Quirks handled here:
``100 Trying`` may precede the real reply; a bare ``HANGUP`` line may arrive at any time
after the caller hangs up; ``511`` means the channel is dead; ``520`` is followed by usage
lines up to ``520 End of proper usage.``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import AgiCommandError, AgiConnectionLostError, AgiError, AgiHangup

MAX_LINE_BYTES = 4096
MAX_HEADER_LINES = 200
# GOSUB's reply has words: "200 result=0 Gosub complete", "... (abnormal exit)" (a hang-up).
_REPLY = re.compile(
    r"(\d{3}) result=(\S*)(?: Gosub [a-z ]+)?(?: \((.*)\))?(?: endpos=\d+)?\s*\Z"
)
# One argument: printable, no blank (it would split), no quote or backslash.
_SAFE_ARG = re.compile(r"[!#-&(-\[\]-~]+\Z")
EMPTY_ARG = '""'  # an empty argument, as Asterisk's AGI parser reads one


@dataclass(frozen=True)
class AgiReply:
    """One parsed ``200`` reply. ``raw`` is the line as Asterisk sent it."""

    code: int
    result: str
    data: str | None
    raw: str


def parse_header_line(line: str) -> tuple[str, str]:
    """``agi_request: agi://...`` -> ("agi_request", "agi://...")."""
    key, sep, value = line.partition(":")
    if not sep or not key.startswith("agi_") or not key.replace("_", "").isalnum():
        raise AgiError("malformed AGI header line", line)
    return key, value.strip()


def parse_reply(line: str) -> AgiReply:
    """Parse a ``200 result=...`` line; raise AgiError for anything else."""
    m = _REPLY.match(line)
    if m is None or m.group(1) != "200":
        raise AgiError("unexpected AGI reply", line)
    return AgiReply(200, m.group(2), m.group(3), line)


def format_command(*parts: str) -> bytes:
    """One command line. Arguments come from our own catalogue; anything odd is refused."""
    for part in parts[1:]:
        if part != EMPTY_ARG and not _SAFE_ARG.match(part):
            raise AgiError("unsafe AGI argument", part)
    return (" ".join(parts) + "\n").encode()


READ_VARIABLE = "CALLMFA_KEYS"
READ_RESULT = "${READSTATUS}:${CALLMFA_KEYS}"


def read_args(files: tuple[str, ...], timeout_ms: int, max_digits: int) -> str:
    """The argument of ``EXEC Read`` that plays ``files`` and collects keys up to '#'."""
    return f"{READ_VARIABLE},{'&'.join(files)},{max_digits},,1,{timeout_ms / 1000:g}"


COLLECT_CONTEXT = "callmfa-collect"  # the dialplan subroutine of extensions_callmfa.conf


def collect_args(seen: int, files: tuple[str, ...], timeout_ms: int, max_digits: int) -> str:
    """The argument of ``GOSUB callmfa-collect s 1``: how many kept keys the IVR has seen,
    then what Read() plays and collects (as :func:`read_args`)."""
    return f"{seen},{'&'.join(files)},{max_digits},{timeout_ms / 1000:g}"


def read_result(heard: str = "") -> str:
    """The expression that tells how Read() ended, and what ``heard`` (another expression,
    such as the keys StoreDTMF kept) holds, in one round trip."""
    return f"{READ_RESULT}:{heard}" if heard else READ_RESULT


def parse_read_result(data: str, raw: str = "") -> tuple[str, bool, str, bool]:
    """:func:`read_result`'s value as (keys, timed_out, heard, kept); AgiHangup if the caller
    hung up. ``kept``: the ``callmfa-collect`` subroutine collected nothing because an
    answer was already kept (READSTATUS=KEPT, its own)."""
    status, _, rest = data.partition(":")
    keys, _, heard = rest.partition(":")
    if status == "HANGUP":
        raise AgiHangup()
    if status not in ("OK", "TIMEOUT", "KEPT"):
        raise AgiError(f"Read() ended with {status or 'no status'}", raw or data)
    return keys, status == "TIMEOUT", heard, status == "KEPT"


class TimedLineReader(Protocol):
    """What a channel reads lines with: lines by a deadline on a clock of the reader's
    (the FastAGI server's stream, which keeps one timer for all of a connection's reads;
    an asyncio StreamReader is read through :class:`_Deadlines`)."""

    def time(self) -> float:
        """The clock of the deadlines."""

    async def readline_by(self, deadline: float) -> bytes:
        """One line, with its newline; TimeoutError past ``deadline``."""


class _Deadlines:
    """An asyncio StreamReader read by deadlines, with asyncio.timeout_at around each read."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def time(self) -> float:
        """The running loop's clock."""
        return asyncio.get_running_loop().time()

    async def readline_by(self, deadline: float) -> bytes:
        """One line, within the deadline (no task per read, as wait_for makes)."""
        async with asyncio.timeout_at(deadline):
            return await self._reader.readuntil(b"\n")


class CommandWriter(Protocol):
    """What a channel sends commands with (asyncio's StreamWriter, or the same stream)."""

    def write(self, data: bytes) -> None:
        """Buffer ``data`` for sending."""

    async def drain(self) -> None:
        """Wait until there is room to write."""


class AgiChannel:
    """Runs AGI commands over one connection; every read has a timeout."""

    def __init__(
        self, reader: TimedLineReader | asyncio.StreamReader, writer: CommandWriter, *,
        timeout_s: float,
    ) -> None:
        self._lines = _Deadlines(reader) if isinstance(reader, asyncio.StreamReader) else reader
        self._writer = writer
        self._timeout = timeout_s
        self.hung_up = False
        self._told_hangup = False  # Asterisk sent its HANGUP line

    async def _readline(self, timeout_s: float | None = None) -> str:
        timeout = self._timeout if timeout_s is None else timeout_s
        lines = self._lines
        try:
            raw = await lines.readline_by(lines.time() + timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            # After a caller's hang-up Asterisk says HANGUP before it closes the socket;
            # a socket that just closes means Asterisk (or the network) went away.
            if self.hung_up:
                raise AgiHangup() from None
            raise AgiConnectionLostError("the AGI connection closed without a hang-up") from None
        except TimeoutError:
            raise AgiError(f"no AGI reply within {timeout}s") from None
        except asyncio.LimitOverrunError:
            raise AgiError("AGI line too long") from None
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def execute(
        self, *parts: str, minus_one_is_hangup: bool = True, timeout_s: float | None = None
    ) -> AgiReply:
        """Send one command and return its reply; raise AgiHangup if the caller is gone.

        ``minus_one_is_hangup=False`` returns ``result=-1`` for commands where it means a
        failure (STREAM FILE of a missing file) rather than a hang-up. ``timeout_s``
        replaces the channel's reply timeout for this command.
        """
        if self.hung_up:
            raise AgiHangup()
        self._writer.write(format_command(*parts))
        try:
            await self._writer.drain()
        except ConnectionError:
            raise AgiConnectionLostError("the AGI connection broke") from None
        while True:
            line = await self._readline(timeout_s)
            if line == "HANGUP":
                self.hung_up = self._told_hangup = True
                continue  # the reply to the pending command still follows
            code = line[:3]
            if code == "100":
                continue
            if code == "200":
                reply = parse_reply(line)
                if reply.result == "-1" and minus_one_is_hangup:
                    self.hung_up = True
                    raise AgiHangup()
                return reply
            if code == "511":
                self.hung_up = True
                raise AgiHangup()
            if line.startswith("520-"):
                usage = [line]
                while not usage[-1].startswith("520 "):
                    usage.append(await self._readline())
                raise AgiCommandError(520, "\n".join(usage))
            if code.isdigit():
                raise AgiCommandError(int(code), line)
            raise AgiError("unexpected AGI line", line)

    async def read_keys(
        self, files: tuple[str, ...], timeout_ms: int, max_digits: int, heard: str = "",
        *, seen: int | None = None,
    ) -> tuple[str, bool, str, bool]:
        """Play ``files`` (a key cuts them) and collect keys up to '#', and read the value of
        the expression ``heard`` (the keys StoreDTMF kept) in the same round trip:
        (keys, timed_out, heard's value, kept: see :func:`parse_read_result`).

        Not GET DATA: it takes one file only and answers a missing file with
        ``result=-1``, like a hang-up. Read() takes a list and says how it ended.
        With ``seen`` (how many kept keys the IVR has been given), Read() runs inside the
        dialplan subroutine ``callmfa-collect``, which returns at once, with no keys (kept),
        when an answer was kept since then (a '#' that came before this command).
        """
        if seen is None:
            await self.execute("EXEC", "Read", read_args(files, timeout_ms, max_digits))
        else:
            await self.execute("GOSUB", COLLECT_CONTEXT, "s", "1",
                               collect_args(seen, files, timeout_ms, max_digits))
        reply = await self.execute("GET FULL VARIABLE", read_result(heard))
        try:
            return parse_read_result(reply.data or "", reply.raw)
        except AgiHangup:
            self.hung_up = True
            raise

    async def get_data(self, file: str, timeout_ms: int, max_digits: int) -> tuple[str, bool]:
        """GET DATA: play one file (a key cuts it), collect keys up to '#': (keys, timed_out).

        For secret keys: unlike Read(), it does not log what was keyed.
        """
        reply = await self.execute("GET DATA", file, str(timeout_ms), str(max_digits),
                                   minus_one_is_hangup=False)
        if reply.result == "-1":
            # GET DATA answers a missing file with result=-1 too. A caller's hang-up is
            # always announced by a HANGUP line before the next reply; ask and see.
            if not self._told_hangup:
                await self.execute("NOOP")
            if self._told_hangup:
                raise AgiHangup()
            raise AgiError(f"GET DATA failed on a live call: is the prompt {file} installed?",
                           reply.raw)
        return reply.result, reply.data == "timeout"

    async def stream_file(self, file: str, escape: str) -> str:
        """STREAM FILE: play one file to the end or until a key of ``escape`` (no key: '');
        the key pressed, or ''. Unlike Playback, no log line names the file's neighbours."""
        reply = await self.execute("STREAM FILE", file, escape or EMPTY_ARG, "0",
                                   minus_one_is_hangup=False)
        if reply.result == "-1":
            await self._hangup_or_missing(file, reply.raw)
        return chr(int(reply.result)) if reply.result.isdigit() and reply.result != "0" else ""

    async def wait_for_digit(self, timeout_ms: int) -> str:
        """WAIT FOR DIGIT: the key pressed within ``timeout_ms``, or '' on a timeout."""
        reply = await self.execute("WAIT FOR DIGIT", str(timeout_ms))
        return chr(int(reply.result)) if reply.result.isdigit() and reply.result != "0" else ""

    async def _hangup_or_missing(self, file: str, raw: str) -> None:
        # A missing file answers result=-1, like a hang-up; a caller's hang-up is always
        # announced by a HANGUP line before the next reply: ask and see.
        if not self._told_hangup:
            await self.execute("NOOP")
        if self._told_hangup:
            self.hung_up = True
            raise AgiHangup()
        raise AgiError(f"cannot play {file} on a live call: is the prompt installed?", raw)

    async def get_full_variable(self, expression: str, *, timeout_s: float | None = None) -> str:
        """Evaluate a dialplan expression such as ``${AMDSTATUS}`` ('' when empty)."""
        reply = await self.execute("GET FULL VARIABLE", expression, timeout_s=timeout_s)
        return reply.data or ""

    async def set_variable(self, name: str, value: str) -> None:
        """Set a channel variable or function, e.g. ``CHANNEL(language)``."""
        await self.execute("SET VARIABLE", name, value)

    def playback(self, files: tuple[str, ...]) -> Awaitable[AgiReply]:
        """Play ``files`` to the end (:meth:`execute`'s own coroutine: no frame of its own
        held for the prompt's length)."""
        return self.execute("EXEC", "Playback", "&".join(files))

    async def hangup(self, *, timeout_s: float | None = None) -> None:
        """Hang up the channel; a caller (or an Asterisk) that is already gone is fine."""
        with contextlib.suppress(AgiHangup, AgiConnectionLostError):
            await self.execute("HANGUP", timeout_s=timeout_s)
