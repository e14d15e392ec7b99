"""The FastAGI server over real sockets: headers, routing, limits and shutdown.

Each test runs the real :class:`FastAgiServer` on a free loopback port with one ``echo``
route; scripted clients play Asterisk (or a bad peer) with ``asyncio.open_connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.exceptions import AgiHangup
from ivr.metrics import Metrics
from ivr.transport.agi import MAX_HEADER_LINES
from ivr.transport.fastagi import AgiSession, FastAgiServer

from .conftest import close_writer, eventually, read_until_closed

HEADER_TIMEOUT_S = 0.3
# Scheduling slack on top of a deadline the server promises.
SLACK_S = 0.7

GOOD_HEADERS = b"agi_network_script: echo\nagi_request: agi://127.0.0.1/echo\nagi_arg_1: x\n\n"


def headers_for(arg: str, script: str = "echo") -> bytes:
    """A well-formed header block for ``script`` with one argument."""
    return (
        f"agi_network_script: {script}\nagi_request: agi://127.0.0.1/{script}\n"
        f"agi_arg_1: {arg}\n\n"
    ).encode()


@dataclass
class EchoApp:
    """The test route: runs one command (``VERBOSE <arg_1> 1``) and notes what it saw."""

    seen: list[AgiSession] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # the server's refusals, by reason

    async def __call__(self, session: AgiSession) -> None:
        self.seen.append(session)
        arg = session.args[0] if session.args else "none"
        try:
            reply = await session.channel.execute("VERBOSE", arg, "1")
        except AgiHangup:
            return
        except asyncio.CancelledError:
            self.cancelled.append(arg)
            raise
        self.replies[arg] = reply.raw


ServerFactory = Callable[..., Awaitable[tuple[FastAgiServer, EchoApp]]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start FastAGI servers on free ports (an ``echo`` route); close them all at the end."""
    servers: list[FastAgiServer] = []

    async def start(**overrides: float) -> tuple[FastAgiServer, EchoApp]:
        app = EchoApp()
        options: dict[str, float] = {
            "header_timeout_s": HEADER_TIMEOUT_S, "command_timeout_s": 5.0, "max_sessions": 50,
        }
        options.update(overrides)
        server = FastAgiServer(
            {"echo": app},
            host="127.0.0.1",
            port=0,
            header_timeout_s=options["header_timeout_s"],
            command_timeout_s=options["command_timeout_s"],
            max_sessions=int(options["max_sessions"]),
            on_refused=app.refused.append,
        )
        await server.start()
        servers.append(server)
        return server, app

    yield start
    for server in servers:
        await server.close(grace_s=1.0)


_open_writers: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Close every client connection a test opened, whatever the test did with it."""
    yield
    while _open_writers:
        await close_writer(_open_writers.pop())


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection, closed at the end of the test at the latest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _open_writers.append(writer)
    return reader, writer


async def good_session(port: int, arg: str = "x", timeout_s: float = 2.0) -> bytes:
    """Play a well-behaved Asterisk for one echo session; returns the command it got."""
    reader, writer = await connect(port)
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(headers_for(arg))
            command = await reader.readline()
            writer.write(b"200 result=0\n")
            await writer.drain()
            assert await reader.read() == b"", "the server closes once the handler returns"
        return command
    finally:
        await close_writer(writer)


class TestGoodSession:
    async def test_well_formed_headers_reach_the_route(self, serve: ServerFactory) -> None:
        """The handler of the named script gets the headers, script name and arguments."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(GOOD_HEADERS)
        command = await asyncio.wait_for(reader.readline(), 2)

        assert command == b"VERBOSE x 1\n"
        [session] = app.seen
        assert session.script == "echo"
        assert session.args == ["x"]
        assert session.headers["agi_request"] == "agi://127.0.0.1/echo"
        await close_writer(writer)

    async def test_handler_runs_a_command_and_gets_the_reply(self, serve: ServerFactory) -> None:
        """The handler's command reaches the client and the client's 200 reply reaches it."""
        server, app = await serve()

        command = await good_session(server.port, "x")

        assert command == b"VERBOSE x 1\n"
        assert app.replies == {"x": "200 result=0"}

    async def test_script_with_query_and_slashes_is_routed(self, serve: ServerFactory) -> None:
        """``agi://host/echo?x=1`` style names route on the path alone."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(b"agi_network_script: /echo/?lang=en#x\nagi_arg_1: q\n\n")

        assert await asyncio.wait_for(reader.readline(), 2) == b"VERBOSE q 1\n"
        assert app.seen[0].script == "echo"
        await close_writer(writer)

    async def test_crlf_headers_are_accepted(self, serve: ServerFactory) -> None:
        """Header lines ending in CRLF are read like LF lines."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(GOOD_HEADERS.replace(b"\n", b"\r\n"))

        assert await asyncio.wait_for(reader.readline(), 2) == b"VERBOSE x 1\n"
        assert app.seen[0].args == ["x"]
        await close_writer(writer)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _bad_connect_close(conn: Conn) -> bool:
    await close_writer(conn[1])
    return False  # nothing left to read from


async def _bad_connect_half_close(conn: Conn) -> bool:
    conn[1].write_eof()
    return True


async def _bad_half_header_then_close(conn: Conn) -> bool:
    conn[1].write(b"agi_network_script: echo\nagi_requ")
    conn[1].write_eof()
    return True


async def _bad_half_header_stays_open(conn: Conn) -> bool:
    conn[1].write(b"agi_network_script: echo\nagi_requ")
    return True


async def _bad_garbage(conn: Conn) -> bool:
    conn[1].write(b"\x00\xff garbage\n\n")
    return True


async def _bad_silent(conn: Conn) -> bool:
    return True


async def _bad_long_line(conn: Conn) -> bool:
    conn[1].write(b"agi_network_script: " + b"a" * 10_000 + b"\n\n")
    return True


async def _bad_long_line_no_newline(conn: Conn) -> bool:
    conn[1].write(b"agi_network_script: " + b"a" * 10_000)
    return True


async def _bad_too_many_lines(conn: Conn) -> bool:
    conn[1].write(b"".join(b"agi_x%d: y\n" % i for i in range(MAX_HEADER_LINES + 5)))
    return True


async def _bad_empty_block(conn: Conn) -> bool:
    conn[1].write(b"\n")
    return True


async def _bad_no_script(conn: Conn) -> bool:
    conn[1].write(b"agi_channel: PJSIP/x\nagi_arg_1: x\n\n")
    return True


# Each makes one bad peer out of a fresh connection; True if the peer can still read.
BAD_CLIENTS: dict[str, Callable[[Conn], Awaitable[bool]]] = {
    "connect_then_close": _bad_connect_close,
    "connect_then_half_close": _bad_connect_half_close,
    "half_header_then_close": _bad_half_header_then_close,
    "half_header_stays_open": _bad_half_header_stays_open,
    "garbage": _bad_garbage,
    "silent": _bad_silent,
    "10kB_line": _bad_long_line,
    "10kB_without_newline": _bad_long_line_no_newline,
    "too_many_header_lines": _bad_too_many_lines,
    "empty_header_block": _bad_empty_block,
    "no_agi_request": _bad_no_script,
}


class TestBadClients:
    @pytest.mark.parametrize("kind", sorted(BAD_CLIENTS))
    async def test_bad_client_is_closed_and_blocks_nobody(
        self, serve: ServerFactory, kind: str
    ) -> None:
        """A bad peer neither delays a concurrent good session nor outlives the header
        timeout: the server closes it (EOF) and frees its slot."""
        server, app = await serve()
        started = time.monotonic()
        reader, writer = await connect(server.port)
        can_read = await BAD_CLIENTS[kind]((reader, writer))

        command = await asyncio.wait_for(good_session(server.port, "good"), HEADER_TIMEOUT_S)

        assert command == b"VERBOSE good 1\n"
        assert app.replies == {"good": "200 result=0"}
        if can_read:
            sent = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
            assert sent == b"", f"{kind}: expected EOF and nothing sent, got {sent!r}"
            assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S
        await eventually(
            lambda: server.active_sessions == 0, timeout_s=HEADER_TIMEOUT_S + SLACK_S,
            what="every session slot freed",
        )
        assert [s.args for s in app.seen] == [["good"]], "no bad peer reached the handler"

    async def test_all_bad_clients_at_once(self, serve: ServerFactory) -> None:
        """Every kind of bad peer at the same time, plus good sessions: the good ones finish
        at once and every bad one is closed within the header timeout."""
        server, _ = await serve()
        started = time.monotonic()
        readers = []
        for make in BAD_CLIENTS.values():
            conn = await connect(server.port)
            if await make(conn):
                readers.append(conn[0])

        commands = await asyncio.wait_for(
            asyncio.gather(*(good_session(server.port, f"g{i}") for i in range(5))),
            HEADER_TIMEOUT_S,
        )

        assert commands == [f"VERBOSE g{i} 1\n".encode() for i in range(5)]
        results = await asyncio.gather(
            *(read_until_closed(r, HEADER_TIMEOUT_S + SLACK_S) for r in readers)
        )
        assert results == [b""] * len(results)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S

    async def test_slow_drip_is_cut_at_the_header_deadline(self, serve: ServerFactory) -> None:
        """A peer that drips a valid header a byte at a time is closed at the header
        deadline, which covers the whole block and not each read."""
        server, _ = await serve()
        reader, writer = await connect(server.port)
        started = time.monotonic()
        closed = asyncio.create_task(read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S))
        for byte in GOOD_HEADERS:
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.sleep(0.02)  # the attacker's pace, not a synchronisation

        assert await closed == b""
        assert HEADER_TIMEOUT_S - 0.05 <= time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S
        await close_writer(writer)

    async def test_silent_peer_is_closed_by_the_timeout(self, serve: ServerFactory) -> None:
        """A peer that says nothing is kept until the header timeout, then closed."""
        server, _ = await serve()
        started = time.monotonic()
        reader, _ = await connect(server.port)

        assert await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S) == b""
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.05


class TestRouting:
    async def test_unknown_script_is_closed(self, serve: ServerFactory) -> None:
        """A script name with no route gets no command: the connection is closed."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(headers_for("x", script="nope"))

        assert await read_until_closed(reader, 2) == b""
        assert app.seen == []
        await close_writer(writer)

    async def test_handler_exception_closes_only_that_session(
        self, serve: ServerFactory
    ) -> None:
        """A handler that breaks the protocol (an unsafe argument) ends its own session;
        the server keeps serving."""
        server, _ = await serve()
        reader, writer = await connect(server.port)
        writer.write(headers_for("has'quote"))

        assert await read_until_closed(reader, 2) == b""
        assert await good_session(server.port) == b"VERBOSE x 1\n"
        await close_writer(writer)

    async def test_client_hanging_up_mid_command_ends_the_session(
        self, serve: ServerFactory
    ) -> None:
        """A peer that closes while the handler waits for a reply frees the session."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(GOOD_HEADERS)
        assert await asyncio.wait_for(reader.readline(), 2) == b"VERBOSE x 1\n"
        await close_writer(writer)

        await eventually(lambda: server.active_sessions == 0, what="session ended")
        assert app.replies == {}


class TestMaxSessions:
    async def test_connection_over_the_limit_is_closed_at_once(
        self, serve: ServerFactory
    ) -> None:
        """With max_sessions=2 and two sessions in progress, a third connection is closed
        at once; the two finish normally, and then new sessions are accepted again."""
        server, app = await serve(max_sessions=2)
        pairs = [await connect(server.port) for _ in range(2)]
        for i, (reader, writer) in enumerate(pairs):
            writer.write(headers_for(f"s{i}"))
            assert await asyncio.wait_for(reader.readline(), 2) == f"VERBOSE s{i} 1\n".encode()

        third_reader, third_writer = await connect(server.port)
        third_writer.write(headers_for("third"))
        started = time.monotonic()
        assert await read_until_closed(third_reader, 1.0) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT_S, "refused, not timed out"
        assert app.refused == ["max_sessions"]

        for reader, writer in pairs:
            writer.write(b"200 result=0\n")
            assert await read_until_closed(reader, 2) == b""
            await close_writer(writer)
        assert app.replies == {"s0": "200 result=0", "s1": "200 result=0"}
        await eventually(lambda: server.active_sessions == 0, what="slots freed")
        assert await good_session(server.port, "after") == b"VERBOSE after 1\n"
        await close_writer(third_writer)


class TestAllowedPeers:
    async def test_a_peer_not_allowed_is_closed_logged_and_counted(self) -> None:
        """A connection from outside CALLMFA_AGI_ALLOWED_PEERS is closed before any read,
        and counted on /metrics (callmfa_fastagi_connections_refused_total)."""
        metrics = Metrics()
        app = EchoApp()
        server = FastAgiServer({"echo": app}, host="127.0.0.1", port=0, header_timeout_s=5,
                               command_timeout_s=5, max_sessions=5,
                               allowed_peers=[ipaddress.ip_network("10.0.0.0/8")],
                               on_refused=metrics.fastagi_connection_refused)
        await server.start()
        try:
            reader, writer = await connect(server.port)
            writer.write(GOOD_HEADERS)
            assert await read_until_closed(reader, 2) == b""
            await close_writer(writer)
        finally:
            await server.close(grace_s=1)
        assert app.seen == []
        assert metrics.registry.get_sample_value(
            "callmfa_fastagi_connections_refused_total", {"reason": "peer_not_allowed"}) == 1


class TestClose:
    async def test_close_waits_for_a_session_that_finishes_in_time(
        self, serve: ServerFactory
    ) -> None:
        """close(grace_s) lets an in-flight session finish: its reply still arrives, the
        client sees the normal end, and close returns well before the grace period."""
        server, app = await serve()
        reader, writer = await connect(server.port)
        writer.write(GOOD_HEADERS)
        assert await asyncio.wait_for(reader.readline(), 2) == b"VERBOSE x 1\n"

        port = server.port
        started = time.monotonic()
        closing = asyncio.create_task(server.close(grace_s=5.0))
        await asyncio.sleep(0)  # a yield: close() stops listening before its first await
        assert await _refused_or_closed(port), "no new sessions while closing"
        assert not closing.done(), "close waits for the session"
        writer.write(b"200 result=0\n")
        await asyncio.wait_for(closing, 2)

        assert time.monotonic() - started < 2
        assert app.replies == {"x": "200 result=0"}
        assert app.cancelled == []
        assert await read_until_closed(reader, 1) == b""
        assert await _refused_or_closed(port)
        await close_writer(writer)

    async def test_close_cancels_a_session_that_overruns(self, serve: ServerFactory) -> None:
        """A session still running when the grace period ends is cancelled: the client sees
        EOF, and close returns shortly after grace_s."""
        server, app = await serve(command_timeout_s=30.0)
        reader, writer = await connect(server.port)
        writer.write(GOOD_HEADERS)
        assert await asyncio.wait_for(reader.readline(), 2) == b"VERBOSE x 1\n"
        port = server.port

        started = time.monotonic()
        await asyncio.wait_for(server.close(grace_s=0.2), 2)
        elapsed = time.monotonic() - started

        assert 0.15 <= elapsed < 1.0
        assert await read_until_closed(reader, 1) == b""
        assert app.cancelled == ["x"]
        assert await _refused_or_closed(port)
        await close_writer(writer)

    async def test_close_with_nothing_in_flight_stops_listening(
        self, serve: ServerFactory
    ) -> None:
        """An idle server closes at once and refuses new connections."""
        server, _ = await serve()
        assert await good_session(server.port) == b"VERBOSE x 1\n"
        port = server.port

        await asyncio.wait_for(server.close(grace_s=5.0), 1)

        assert await _refused_or_closed(port)


class TestFuzz:
    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.one_of(
        st.binary(max_size=600),
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([
                    b"agi_network_script: echo", b"agi_network_script: nope",
                    b"agi_request: agi://127.0.0.1/echo", b"agi_arg_1: x", b"agi_arg_1: a b",
                    b"agi_: ", b"agi_network_script:", b"", b"\r", b"\xff\xfe", b"agi_arg_2",
                ]),
                st.binary(max_size=30).map(lambda b: b"agi_network_script: " + b),
            ),
            max_size=12,
        ).map(b"\n".join),
    ), half_close=st.booleans())
    async def test_arbitrary_header_bytes(
        self, fuzz_server: tuple[FastAgiServer, EchoApp], data: bytes, half_close: bool
    ) -> None:
        """Whatever bytes arrive as the header block, the server closes that connection
        within its deadlines and a good session still works afterwards."""
        server, _ = fuzz_server
        reader, writer = await connect(server.port)
        try:
            writer.write(data)
            if half_close:
                writer.write_eof()
            # A block that happens to be a valid echo request costs one command timeout.
            sent = await read_until_closed(reader, FUZZ_HEADER_S + FUZZ_COMMAND_S + SLACK_S)
            assert sent is not None, "the server left the connection open"
            # A block that parses as an echo request gets its one command, then the end.
            assert sent == b"" or (sent.startswith(b"VERBOSE ") and sent.endswith(b" 1\n")), sent
        finally:
            await close_writer(writer)

        assert await good_session(server.port, "ok") == b"VERBOSE ok 1\n"


FUZZ_HEADER_S = 0.1
FUZZ_COMMAND_S = 0.3


@pytest.fixture
async def fuzz_server(serve: ServerFactory) -> tuple[FastAgiServer, EchoApp]:
    """One server for all the examples of a fuzz run (short deadlines)."""
    return await serve(header_timeout_s=FUZZ_HEADER_S, command_timeout_s=FUZZ_COMMAND_S)


async def _refused_or_closed(port: int) -> bool:
    """True if a new connection is refused, or accepted and closed with nothing sent."""
    try:
        reader, writer = await connect(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    try:
        writer.write(GOOD_HEADERS)
        return await read_until_closed(reader, 1) == b""
    finally:
        await close_writer(writer)
