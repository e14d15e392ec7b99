"""A minimal HTTP/1.1 server for operational endpoints (``/healthz``, ``/metrics``).

Each connection gets one request with a deadline and size limits, one response, and is
closed: enough for health checkers and scrapers, nothing a browser session needs. At most
``max_connections`` are served at once; one over the cap gets a 503 at once, unread, and is
closed (and counted through ``on_refused``), so idle connections cannot starve the checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog

from ..tasks import drain

log = structlog.get_logger("ivr.http")

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")


class HttpServer:
    """Serves ``routes`` (path -> handler) on host:port."""

    def __init__(
        self, routes: Mapping[str, Route], *, host: str, port: int,
        max_connections: int = MAX_CONNECTIONS, on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._tasks)

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_REQUEST_BYTES, reuse_address=True
        )
        log.info("http_listening", host=self._host, port=self.port)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self._max_connections:
            # Over the cap: answer without reading, close, and spawn nothing.
            writer.write(_BUSY)
            writer.close()
            log.warning("http_connection_refused", peer=_peer(writer), port=self.port,
                        max_connections=self._max_connections)
            if self._on_refused is not None:
                self._on_refused()
            return
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            route = self._routes.get(path)
            if method not in ("GET", "HEAD"):
                status, kind, body = 405, "text/plain", b"GET only\n"
            elif route is None:
                status, kind, body = 404, "text/plain", b"not found\n"
            else:
                status, kind, body = await route()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except Exception:
            log.exception("http_request_failed")
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop listening; let the requests in progress finish, then cancel the rest."""
        if self._server is not None:
            self._server.close()
        await drain(self._tasks, READ_TIMEOUT_S)
        if self._server is not None:
            await self._server.wait_closed()


def _peer(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None


async def get(host: str, port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """A tiny GET client (for ``callmfa health``): (status, body)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            raw = await reader.read(1_000_000)
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body
