"""Tests for ivr.transport.agi: reply and header parsing, command formatting, AgiChannel."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.domain.prompts import sound_files
from ivr.exceptions import AgiCommandError, AgiConnectionLostError, AgiError, AgiHangup
from ivr.transport.agi import (
    AgiChannel,
    AgiReply,
    format_command,
    parse_header_line,
    parse_reply,
)


class FakeWriter:
    """Collects what the channel writes; drain() may be told to fail."""

    def __init__(self, drain_error: BaseException | None = None) -> None:
        self.written = bytearray()
        self.closed = False
        self._drain_error = drain_error

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        if self._drain_error is not None:
            raise self._drain_error

    def close(self) -> None:
        self.closed = True


def make_channel(
    *lines: str, eof: bool = False, timeout_s: float = 5.0, writer: FakeWriter | None = None
) -> tuple[AgiChannel, FakeWriter, asyncio.StreamReader]:
    """A channel whose peer has already sent ``lines`` (each gets a newline)."""
    reader = asyncio.StreamReader()
    for line in lines:
        reader.feed_data(line.encode() + b"\n")
    if eof:
        reader.feed_eof()
    writer = writer or FakeWriter()
    channel = AgiChannel(reader, cast(asyncio.StreamWriter, writer), timeout_s=timeout_s)
    return channel, writer, reader


class TestParseReply:
    @pytest.mark.parametrize(
        ("line", "result", "data"),
        [
            ("200 result=0", "0", None),
            ("200 result=1 (OK:)", "1", "OK:"),
            ("200 result= (timeout)", "", "timeout"),
            ("200 result=-1", "-1", None),
            ("200 result=1 (OK:0) endpos=1234", "1", "OK:0"),
            ("200 result=0 endpos=0", "0", None),
            ("200 result=1 (TIMEOUT:)", "1", "TIMEOUT:"),
            ("200 result=49 (a (nested) value)", "49", "a (nested) value"),
        ],
    )
    def test_real_lines(self, line: str, result: str, data: str | None) -> None:
        """Replies as Asterisk sends them give their result and data; raw is the line."""
        assert parse_reply(line) == AgiReply(200, result, data, line)

    @pytest.mark.parametrize(
        "line",
        [
            "",
            "HANGUP",
            "100 result=0 Trying...",
            "510 Invalid or unknown command",
            "520 End of proper usage.",
            "201 result=0",
            "200",
            "200 result",
            "200 result=0 garbage",
            "200 result=1 (OK:",
            "200result=0",
            "agi_request: agi://x",
        ],
    )
    def test_garbage_raises(self, line: str) -> None:
        """Anything but a well-formed 200 reply raises AgiError keeping the line."""
        with pytest.raises(AgiError) as ei:
            parse_reply(line)

        assert ei.value.raw == line

    @given(line=st.text())
    def test_arbitrary_text_raises_only_agi_error(self, line: str) -> None:
        """parse_reply on any text returns a 200 reply or raises AgiError, nothing else."""
        try:
            reply = parse_reply(line)
        except AgiError:
            return
        assert reply.code == 200
        assert reply.raw == line

    @given(
        result=st.from_regex(r"-?[0-9]{1,5}", fullmatch=True),
        data=st.one_of(st.none(), st.text(alphabet=st.characters(exclude_characters="\n\r"))),
    )
    def test_generated_replies_parse(self, result: str, data: str | None) -> None:
        """Every well-formed reply gives back its result and data."""
        line = f"200 result={result}" + ("" if data is None else f" ({data})")

        reply = parse_reply(line)

        assert (reply.result, reply.data) == (result, data)


class TestParseHeaderLine:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (
                "agi_request: agi://127.0.0.1:4573/verify",
                ("agi_request", "agi://127.0.0.1:4573/verify"),
            ),
            ("agi_channel: PJSIP/trunk-00000001", ("agi_channel", "PJSIP/trunk-00000001")),
            ("agi_arg_1: 0b6d1e2a", ("agi_arg_1", "0b6d1e2a")),
            ("agi_callerid: unknown", ("agi_callerid", "unknown")),
            ("agi_calleridname: ", ("agi_calleridname", "")),
            ("agi_network:yes", ("agi_network", "yes")),
        ],
    )
    def test_good(self, line: str, expected: tuple[str, str]) -> None:
        """'agi_key: value' splits at the first colon; the value is stripped."""
        assert parse_header_line(line) == expected

    @pytest.mark.parametrize(
        "line",
        [
            "",
            "agi_request",
            "request: x",
            "agi request: x",
            "agi-request: x",
            ": x",
            "200 result=0",
        ],
    )
    def test_bad(self, line: str) -> None:
        """A line without a colon or an agi_ key raises AgiError."""
        with pytest.raises(AgiError) as ei:
            parse_header_line(line)

        assert ei.value.raw == line


class TestFormatCommand:
    def test_command_line(self) -> None:
        """Parts are joined by spaces and end with a newline."""
        line = format_command("EXEC", "Playback", "hello&goodbye")

        assert line == b"EXEC Playback hello&goodbye\n"

    def test_command_without_arguments(self) -> None:
        """A bare command is one line too."""
        assert format_command("HANGUP") == b"HANGUP\n"

    def test_command_itself_may_have_spaces(self) -> None:
        """The first part is the command, which may be several words."""
        assert format_command("GET FULL VARIABLE", "${X}") == b"GET FULL VARIABLE ${X}\n"

    @pytest.mark.parametrize(
        "arg", ["a b", 'a"b', "a'b", "a\\b", "a\rb", "a\nb", "ab\r\n", "a\tb", "", " "]
    )
    def test_refuses_unsafe_argument(self, arg: str) -> None:
        """Arguments with blanks, quotes, backslashes, CR/LF, or empty ones are refused."""
        with pytest.raises(AgiError) as ei:
            format_command("EXEC", "Playback", arg)

        assert ei.value.raw == arg

    @pytest.mark.parametrize("arg", ["a\x00b", "a\x07b", "a\x1bb"])
    def test_refuses_control_characters(self, arg: str) -> None:
        """Non-printable control characters are refused like blanks."""
        with pytest.raises(AgiError):
            format_command("EXEC", "Playback", arg)

    @given(args=st.lists(st.text(), max_size=4))
    def test_output_is_always_one_line(self, args: list[str]) -> None:
        """Whatever the arguments, the result is refused or exactly one line of those parts."""
        try:
            line = format_command("EXEC", *args)
        except AgiError:
            return
        text = line.decode()
        assert text.endswith("\n")
        assert text.count("\n") == 1
        assert "\r" not in text
        assert text[:-1].split(" ") == ["EXEC", *args]


class TestExecute:
    async def test_writes_command(self) -> None:
        """execute writes the formatted command line."""
        channel, writer, _ = make_channel("200 result=0")

        await channel.execute("EXEC", "Playback", "hello")

        assert bytes(writer.written) == b"EXEC Playback hello\n"

    async def test_trying_then_reply(self) -> None:
        """'100 Trying' is skipped and the 200 reply returned."""
        channel, _, _ = make_channel("100 result=0 Trying...", "200 result=0")

        reply = await channel.execute("EXEC", "Playback", "hello")

        assert reply == AgiReply(200, "0", None, "200 result=0")
        assert not channel.hung_up

    async def test_crlf_line_endings(self) -> None:
        """A CR before the newline is not part of the reply."""
        channel, _, _ = make_channel("200 result=1 (OK:)\r")

        reply = await channel.execute("GET FULL VARIABLE", "${X}")

        assert reply.raw == "200 result=1 (OK:)"
        assert reply.data == "OK:"

    async def test_hangup_line_then_minus_one(self) -> None:
        """'HANGUP' then 'result=-1' raises AgiHangup and marks the channel hung up."""
        channel, _, _ = make_channel("HANGUP", "200 result=-1")

        with pytest.raises(AgiHangup):
            await channel.execute("EXEC", "Playback", "hello")

        assert channel.hung_up

    async def test_hangup_line_then_reply(self) -> None:
        """After 'HANGUP' the pending reply is still returned, and the channel is hung up."""
        channel, _, _ = make_channel("HANGUP", "200 result=0")

        reply = await channel.execute("EXEC", "Playback", "hello")

        assert reply.result == "0"
        assert channel.hung_up

    async def test_minus_one_alone_is_hangup(self) -> None:
        """'200 result=-1' alone means the caller is gone."""
        channel, _, _ = make_channel("200 result=-1")

        with pytest.raises(AgiHangup):
            await channel.execute("EXEC", "Playback", "hello")

        assert channel.hung_up

    async def test_511_dead_channel(self) -> None:
        """511 (dead channel) raises AgiHangup."""
        channel, _, _ = make_channel(
            "511 Command Not Permitted on a dead channel or intercept routine"
        )

        with pytest.raises(AgiHangup):
            await channel.execute("EXEC", "Playback", "hello")

        assert channel.hung_up

    async def test_510_unknown_command(self) -> None:
        """510 raises AgiCommandError with code 510 and the line."""
        channel, _, _ = make_channel("510 Invalid or unknown command")

        with pytest.raises(AgiCommandError) as ei:
            await channel.execute("NOPE")

        assert ei.value.code == 510
        assert ei.value.raw == "510 Invalid or unknown command"
        assert not channel.hung_up

    async def test_520_usage(self) -> None:
        """A 520 usage block is read to its end and kept whole in .raw."""
        lines = (
            "520-Invalid command syntax.  Proper usage follows:",
            "Usage: EXEC <application> <options>",
            "       Executes application with given options.",
            "520 End of proper usage.",
        )
        channel, _, _ = make_channel(*lines, "200 result=0")

        with pytest.raises(AgiCommandError) as ei:
            await channel.execute("EXEC")

        assert ei.value.code == 520
        assert ei.value.raw == "\n".join(lines)
        # The block was consumed: the next reply belongs to the next command.
        assert (await channel.execute("NOOP")).result == "0"

    async def test_unexpected_line(self) -> None:
        """A line that is no reply raises AgiError (not a command error)."""
        channel, _, _ = make_channel("hello there")

        with pytest.raises(AgiError) as ei:
            await channel.execute("NOOP")

        assert not isinstance(ei.value, AgiCommandError)
        assert ei.value.raw == "hello there"

    async def test_malformed_200(self) -> None:
        """A malformed 200 line raises AgiError."""
        channel, _, _ = make_channel("200 result=0 garbage")

        with pytest.raises(AgiError):
            await channel.execute("NOOP")

    @pytest.mark.parametrize("partial", [b"", b"200 resu"])
    async def test_bare_eof_is_connection_lost(self, partial: bytes) -> None:
        """A socket that closes with no HANGUP first (even mid-line): Asterisk went away.

        A caller's hang-up always sends HANGUP (or result=-1) before Asterisk closes.
        """
        channel, _, reader = make_channel()
        reader.feed_data(partial)
        reader.feed_eof()

        with pytest.raises(AgiConnectionLostError):
            await channel.execute("NOOP")

        assert not channel.hung_up

    async def test_eof_after_hangup_line_is_hangup(self) -> None:
        """HANGUP, then the socket closes: the caller hung up."""
        channel, _, reader = make_channel("HANGUP")
        reader.feed_eof()

        with pytest.raises(AgiHangup):
            await channel.execute("NOOP")

        assert channel.hung_up

    async def test_reply_never_arrives(self) -> None:
        """No reply within the channel timeout is an AgiError (the IVR's error path)."""
        channel, _, _ = make_channel(timeout_s=0.05)
        start = time.monotonic()

        with pytest.raises(AgiError, match="no AGI reply"):
            await channel.execute("NOOP")

        assert time.monotonic() - start < 2

    async def test_line_too_long(self) -> None:
        """A line over the reader's limit raises AgiError."""
        reader = asyncio.StreamReader(limit=64)
        reader.feed_data(b"200 result=0 " + b"x" * 200)
        channel = AgiChannel(reader, cast(asyncio.StreamWriter, FakeWriter()), timeout_s=5)

        with pytest.raises(AgiError, match="too long"):
            await channel.execute("NOOP")

    async def test_drain_connection_error_is_connection_lost(self) -> None:
        """A connection error while sending: the AGI connection itself broke."""
        writer = FakeWriter(drain_error=ConnectionResetError())
        channel, _, _ = make_channel(writer=writer)

        with pytest.raises(AgiConnectionLostError):
            await channel.execute("NOOP")

    async def test_no_command_after_hangup(self) -> None:
        """Once hung up, execute raises AgiHangup without writing anything."""
        channel, writer, _ = make_channel("200 result=-1", "200 result=0")
        with pytest.raises(AgiHangup):
            await channel.execute("NOOP")
        writer.written.clear()

        with pytest.raises(AgiHangup):
            await channel.execute("NOOP")

        assert writer.written == b""


class TestReadKeys:
    @pytest.mark.parametrize(
        ("reply", "expected"),
        [
            ("200 result=1 (OK:)", ("", False)),
            ("200 result=1 (TIMEOUT:)", ("", True)),
            ("200 result=1 (OK:0)", ("0", False)),
            ("200 result=1 (TIMEOUT:0)", ("0", True)),
            ("200 result=1 (OK:1234)", ("1234", False)),
        ],
    )
    async def test_status_and_keys(self, reply: str, expected: tuple[str, bool]) -> None:
        """READSTATUS and the keys become (keys, timed_out)."""
        channel, _, _ = make_channel("200 result=0", reply)

        assert (await channel.read_keys(("hello",), 6000, 4))[:2] == expected

    async def test_hangup_status(self) -> None:
        """READSTATUS HANGUP raises AgiHangup."""
        channel, _, _ = make_channel("200 result=0", "200 result=1 (HANGUP:)")

        with pytest.raises(AgiHangup):
            await channel.read_keys(("hello",), 6000, 4)

        assert channel.hung_up

    @pytest.mark.parametrize("reply", ["200 result=1 (ERROR:)", "200 result=0", "200 result=1 ()"])
    async def test_other_status(self, reply: str) -> None:
        """Any other READSTATUS (or none) raises AgiError with the reply."""
        channel, _, _ = make_channel("200 result=0", reply)

        with pytest.raises(AgiError) as ei:
            await channel.read_keys(("hello",), 6000, 4)

        assert not isinstance(ei.value, AgiCommandError)
        assert ei.value.raw == reply

    async def test_hangup_during_read(self) -> None:
        """Read() returning -1 (caller gone) raises AgiHangup before asking for the keys."""
        channel, writer, _ = make_channel("HANGUP", "200 result=-1")

        with pytest.raises(AgiHangup):
            await channel.read_keys(("hello",), 6000, 4)

        assert channel.hung_up
        assert b"GET FULL VARIABLE" not in writer.written

    async def test_bytes_written(self) -> None:
        """Read() gets the files joined by '&', max digits, no options, 1 attempt, seconds."""
        channel, writer, _ = make_channel("200 result=0", "200 result=1 (OK:)")

        await channel.read_keys(("hello", "vm-press", "digits/pound"), 6000, 4)

        assert bytes(writer.written) == (
            b"EXEC Read CALLMFA_KEYS,hello&vm-press&digits/pound,4,,1,6\n"
            b"GET FULL VARIABLE ${READSTATUS}:${CALLMFA_KEYS}\n"
        )

    async def test_in_the_collect_subroutine(self) -> None:
        """With ``seen``, Read() runs in the dialplan's callmfa-collect (GOSUB), its first
        argument how many kept keys the IVR has seen; the result is read as before."""
        channel, writer, _ = make_channel("200 result=0 Gosub complete", "200 result=1 (KEPT::5##)")

        got = await channel.read_keys(("hello", "vm-press"), 6000, 4, "${E}", seen=2)

        assert got == ("", False, "5##", True)
        assert bytes(writer.written) == (
            b"GOSUB callmfa-collect s 1 2,hello&vm-press,4,6\n"
            b"GET FULL VARIABLE ${READSTATUS}:${CALLMFA_KEYS}:${E}\n"
        )

    async def test_a_hang_up_in_the_collect_subroutine(self) -> None:
        """GOSUB ends '(abnormal exit)' when the caller hangs up in Read(); READSTATUS says
        HANGUP."""
        channel, _, _ = make_channel("HANGUP", "200 result=0 Gosub complete (abnormal exit)",
                                     "200 result=1 (HANGUP::)")

        with pytest.raises(AgiHangup):
            await channel.read_keys(("hello",), 6000, 4, "${E}", seen=0)

        assert channel.hung_up

    @pytest.mark.parametrize(
        ("timeout_ms", "seconds"), [(1500, b"1.5"), (6000, b"6"), (250, b"0.25"), (90000, b"90")]
    )
    async def test_timeout_in_seconds(self, timeout_ms: int, seconds: bytes) -> None:
        """The timeout is given to Read() in seconds, without a needless '.0'."""
        channel, writer, _ = make_channel("200 result=0", "200 result=1 (OK:)")

        await channel.read_keys(("hello",), timeout_ms, 4)

        first = bytes(writer.written).split(b"\n")[0]
        assert first == b"EXEC Read CALLMFA_KEYS,hello,4,,1," + seconds

    async def test_catalogue_prompts_are_safe(self) -> None:
        """The real greeting's sound files pass format_command's checks."""
        channel, writer, _ = make_channel("200 result=0", "200 result=1 (OK:)")

        await channel.read_keys(sound_files(("retry", "greeting")), 6000, 4)

        first = bytes(writer.written).split(b"\n")[0]
        assert first.startswith(b"EXEC Read CALLMFA_KEYS,callmfa/retry&callmfa/greeting,4,,1,6")


class TestPlaybackAndHangup:
    async def test_playback(self) -> None:
        """playback runs Playback with the files joined by '&'."""
        channel, writer, _ = make_channel("200 result=0")

        await channel.playback(("auth-thankyou", "goodbye"))

        assert bytes(writer.written) == b"EXEC Playback auth-thankyou&goodbye\n"

    async def test_playback_hangup(self) -> None:
        """A caller hanging up during playback raises AgiHangup."""
        channel, _, _ = make_channel("200 result=-1")

        with pytest.raises(AgiHangup):
            await channel.playback(("goodbye",))

    async def test_hangup(self) -> None:
        """hangup sends HANGUP."""
        channel, writer, _ = make_channel("200 result=1")

        await channel.hangup()

        assert bytes(writer.written) == b"HANGUP\n"

    @pytest.mark.parametrize("lines", [("200 result=-1",), ()])
    async def test_hangup_when_caller_is_gone(self, lines: tuple[str, ...]) -> None:
        """hangup on a channel whose caller (or whose Asterisk) is gone does not raise."""
        channel, _, _ = make_channel(*lines, eof=True)

        await channel.hangup()

        assert channel.hung_up == bool(lines)
