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
    ) -> None:
        self._routes = dict(routes)
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
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_LINE_BYTES, reuse_address=True
        )
        log.info("fastagi_listening", host=self._host, port=self.port)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._allowed_peers is not None and not peer_allowed(peer, self._allowed_peers):
            log.warning("fastagi_peer_refused", peer=str(peer))
            writer.close()
            return
        if len(self._tasks) >= self._max_sessions:
            log.warning("fastagi_session_refused", reason="max_sessions")
            writer.close()
            return
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                async with asyncio.timeout(self._header_timeout):  # no task, as wait_for makes
                    headers = await _read_headers(reader)
            except (AgiError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                log.warning("fastagi_bad_client", peer=str(peer), error=type(e).__name__)
                return
            session = AgiSession(
                headers, AgiChannel(reader, writer, timeout_s=self._command_timeout),
                _peer_text(peer),
            )
            handler = self._routes.get(session.script)
            if handler is None:
                log.warning("fastagi_unknown_script", script=session.script, peer=str(peer))
                return
            await handler(session)
        except Exception:
            # The one boundary per session: log it, end the call, keep serving others.
            log.exception("fastagi_session_failed", peer=str(peer))
        finally:
            writer.close()

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


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        try:
            raw = await reader.readuntil(b"\n")
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
