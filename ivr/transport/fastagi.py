"""An asyncio FastAGI server: headers with limits and a deadline, routing, graceful close.

panoramisk's FastAGI loops forever when a client closes before the end of the headers;
this one gives every connection a header deadline, a line limit and its own task, so a
probe, half a header or garbage costs one task for at most ``header_timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import structlog

from ..exceptions import AgiError
from ..tasks import drain
from .agi import MAX_HEADER_LINES, MAX_LINE_BYTES, AgiChannel, parse_header_line

log = structlog.get_logger("ivr.fastagi")


@dataclass(frozen=True)
class AgiSession:
    """One FastAGI connection: the headers Asterisk sent that callmfa reads
    (:data:`KEPT_HEADERS`, the arguments) and the command channel."""

    headers: Mapping[str, str]
    channel: AgiChannel
    peer: str = ""  # host:port of the connecting side, for the log

    @property
    def script(self) -> str:
        """The route: ``verify`` for ``agi://host:port/verify?x=1``."""
        name = self.headers.get("agi_network_script", "")
        return urlsplit("//h/" + name).path.strip("/")

    @property
    def args(self) -> list[str]:
        """``agi_arg_1`` ... in order."""
        out: list[str] = []
        while f"agi_arg_{len(out) + 1}" in self.headers:
            out.append(self.headers[f"agi_arg_{len(out) + 1}"])
        return out


# The headers a session keeps (and the script's arguments, agi_arg_<n>).
KEPT_HEADERS = frozenset({"agi_request", "agi_network_script", "agi_channel", "agi_uniqueid"})
# One shared copy of each kept name. Not sys.intern: the names dropped after each call would
# leave CPython's interned-string table as they come back with the next, and that churn
# makes the table resize (issue 16's soak step of 1.9 MiB).
_NAMES = {name: name for name in KEPT_HEADERS | {f"agi_arg_{n}" for n in range(1, 10)}}


class AgiStream(asyncio.Protocol):
    """One FastAGI connection's bytes: lines in (at most ``limit`` bytes each), commands
    out, with flow control both ways.

    In place of asyncio's StreamReader, StreamReaderProtocol and StreamWriter, which cost
    about 2 KB per connection (a deque, a weak reference, three objects with a ``__dict__``
    and a coroutine frame more per read) for every call in flight. It offers what
    :class:`~ivr.transport.agi.AgiChannel` and the header reader use of them.
    """

    __slots__ = ("_armed", "_buffer", "_closed", "_deadline", "_eof", "_limit", "_loop",
                 "_on_connect", "_paused", "_reading_paused", "_timer", "_transport", "_waiter",
                 "_writable")

    def __init__(self, on_connect: Callable[[AgiStream], None], *, limit: int) -> None:
        self._on_connect = on_connect
        self._limit = limit
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for data
        self._writable: asyncio.Future[None] | None = None  # a drain waiting for room
        self._deadline: float | None = None  # the waiting read's
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0  # the deadline the timer is set for
        self._eof = False
        self._closed = False
        self._paused = False  # the transport's write buffer is full
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hand the stream to the server."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        """Buffer what came; past twice the line limit, stop reading until a line is read."""
        self._buffer += data
        self._wake()
        if len(self._buffer) > 2 * self._limit and not self._reading_paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        """The peer closed its side: reads end once the buffer is empty."""
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Wake whatever waits: reads end, writes fail."""
        self._eof = self._closed = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        """The transport's buffer is full: :meth:`drain` waits."""
        self._paused = True

    def resume_writing(self) -> None:
        """Room again."""
        self._paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def time(self) -> float:
        """The loop's clock, which :meth:`readline_by`'s deadlines are on."""
        return self._loop.time()

    async def readline_by(self, deadline: float) -> bytes:
        """One line with its newline, read by ``deadline`` (:meth:`time`): TimeoutError past
        it, LimitOverrunError for a line longer than the limit, IncompleteReadError at the
        end of the stream.

        One timer per connection, moved on only when it fires (a read's deadline is mostly
        later than the last one's): asyncio.timeout would set and cancel one per read.
        """
        if (line := self._line()) is not None:
            return line
        self._deadline = deadline
        if self._timer is None or self._armed > deadline:
            self._arm(deadline)
        try:
            while True:
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                if (line := self._line()) is not None:
                    return line
        finally:
            self._deadline = None

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = deadline
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        if self._deadline > self._armed:
            self._arm(self._deadline)
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())

    def _line(self) -> bytes | None:
        found = self._buffer.find(b"\n")
        if found >= 0:
            if found > self._limit:
                raise asyncio.LimitOverrunError("line longer than the limit", found)
            line = bytes(self._buffer[:found + 1])
            del self._buffer[:found + 1]
            if self._reading_paused and len(self._buffer) <= self._limit:
                assert self._transport is not None
                self._transport.resume_reading()
                self._reading_paused = False
            return line
        if len(self._buffer) > self._limit:
            raise asyncio.LimitOverrunError("line longer than the limit", len(self._buffer))
        if self._eof:
            partial, self._buffer = bytes(self._buffer), bytearray()
            raise asyncio.IncompleteReadError(partial, None)
        return None

    def write(self, data: bytes) -> None:
        """Send ``data`` (buffered by the transport)."""
        assert self._transport is not None
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait for room in the transport's buffer; ConnectionResetError once it closed."""
        if self._closed:
            raise ConnectionResetError("connection lost")
        if self._paused:
            self._writable = asyncio.get_running_loop().create_future()
            try:
                await self._writable
            finally:
                self._writable = None
            if self._closed:
                raise ConnectionResetError("connection lost")

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        """The transport's ``name`` (``peername``), as StreamWriter's."""
        assert self._transport is not None
        return self._transport.get_extra_info(name, default)


Handler = Callable[[AgiSession], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_allowed(peer: object, allowed: Sequence[Network]) -> bool:
    """Whether the socket peer (``(host, port, ...)``) is in one of the ``allowed`` networks."""
    try:
        ip = ipaddress.ip_address(peer[0])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allowed)


class FastAgiServer:
    """Serves ``routes`` (script name -> handler) on host:port."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        host: str,
        port: int,
        header_timeout_s: float,
        command_timeout_s: float,
        max_sessions: int,
        allowed_peers: Sequence[Network] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._on_refused = on_refused
        self._allowed_peers = allowed_peers  # None: any peer (tests); serve passes its list
        self._host = host
        self._port = port
        self._header_timeout = header_timeout_s
        self._command_timeout = command_timeout_s
        self._max_sessions = max_sessions
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: AgiStream(self._accept, limit=MAX_LINE_BYTES), self._host, self._port,
            reuse_address=True,
        )
        log.info("fastagi_listening", host=self._host, port=self.port)

    def _accept(self, stream: AgiStream) -> None:
        peer = stream.get_extra_info("peername")
        if self._allowed_peers is not None and not peer_allowed(peer, self._allowed_peers):
            log.warning("fastagi_peer_refused", peer=str(peer))
            self._refuse(stream, "peer_not_allowed")
            return
        if len(self._tasks) >= self._max_sessions:
            log.warning("fastagi_session_refused", reason="max_sessions")
            self._refuse(stream, "max_sessions")
            return
        task = asyncio.create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: AgiStream) -> None:
        peer = _peer_text(stream.get_extra_info("peername"))  # host:port, not the tuple
        try:
            try:
                headers = await _read_headers(stream, stream.time() + self._header_timeout)
            except (AgiError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                log.warning("fastagi_bad_client", peer=peer, error=type(e).__name__)
                return
            session = AgiSession(
                headers, AgiChannel(stream, stream, timeout_s=self._command_timeout), peer)
            handler = self._routes.get(session.script)
            if handler is None:
                log.warning("fastagi_unknown_script", script=session.script, peer=peer)
                return
            await handler(session)
        except Exception:
            # The one boundary per session: log it, end the call, keep serving others.
            log.exception("fastagi_session_failed", peer=peer)
        finally:
            stream.close()

    def _refuse(self, stream: AgiStream, reason: str) -> None:
        stream.close()
        if self._on_refused is not None:
            self._on_refused(reason)

    async def close(self, grace_s: float) -> None:
        """Stop listening, let sessions finish for up to ``grace_s``, then cancel the rest."""
        if self._server is not None:
            self._server.close()
        if cancelled := await drain(list(self._tasks), grace_s):
            log.warning("fastagi_sessions_cancelled", count=cancelled)
        if self._server is not None:
            await self._server.wait_closed()


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def _read_headers(reader: AgiStream, deadline: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        try:
            raw = await reader.readline_by(deadline)
        except asyncio.LimitOverrunError:
            raise AgiError("AGI header line too long") from None
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if "agi_network_script" not in headers and "agi_request" not in headers:
                raise AgiError("AGI headers without agi_request")
            return headers
        key, value = parse_header_line(line)
        if (name := _NAMES.get(key)) is not None or key.startswith("agi_arg_"):
            headers[name or key] = value  # the rest (caller id, context...) is not read
    raise AgiError("too many AGI header lines")
