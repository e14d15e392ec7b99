"""callmfa's HTTP listeners, on aiohttp: ``/healthz``, ``/metrics`` and the API.

A :class:`HttpListener` serves one aiohttp application on host:port, with what the
hand-written server it replaces guaranteed: at most ``max_connections`` connections at once
(one more gets a 503 at once, unread, is closed and counted through ``on_refused``, so idle
connections cannot starve the health checks), and an idle deadline on every connection,
the first request's headers included (aiohttp's keep-alive timer starts at the accept).
aiohttp has no deadline for a body once the headers are in: the fronts read theirs with
:func:`request_body`, which has one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger("ivr.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IDLE_TIMEOUT_S = 5.0
# How long a request's body may take to arrive once its headers have.
BODY_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 5.0
MAX_CONNECTIONS = 64
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")


class BodyError(Exception):
    """A request body that was not read whole: ``status`` and ``reason`` for the answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


async def read_body(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer (the caller
    refuses those). ``StreamReader.read(n)`` returns what has arrived so far, which on a
    network can be a part of the body: it is called until the end or the limit."""
    chunks = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def request_body(request: web.Request, limit: int,
                       timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """``request``'s whole body, at most ``limit`` bytes, within ``timeout_s``; BodyError
    (413 too large, 408 too slow, 400 cut off) otherwise. It is kept, so aiohttp's own
    readers (``request.post()``) find it read."""
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await read_body(request.content, limit)
    except TimeoutError:
        raise BodyError(408, "body_timeout",
                        f"the body did not arrive within {timeout_s:g} s") from None
    except (ConnectionError, aiohttp.http_exceptions.HttpProcessingError):
        raise BodyError(400, "incomplete_body", "the body was cut off") from None
    if len(raw) > limit:
        raise _too_large(limit)
    request._read_bytes = raw  # what request.read() returns from now on
    return raw


def _too_large(limit: int) -> BodyError:
    return BodyError(413, "too_large", f"the body is over {limit} bytes")


class _Refusal(asyncio.Protocol):
    """A connection over the cap: a 503, written at once, and closed, unread."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


@web.middleware
async def _one_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:  # 404, 405: answered as plain text, like the rest
        response = web.Response(status=e.status, text=f"{e.reason.lower()}\n",
                                headers={k: v for k, v in e.headers.items() if k == "Allow"})
    response.force_close()
    return response


def ops_app(routes: dict[str, Handler]) -> web.Application:
    """An application of GET routes (path -> handler): /healthz and /metrics. Each
    connection carries one request (health checkers and scrapers need no more)."""
    app = web.Application(middlewares=[_one_request])
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


class HttpListener:
    """Serves ``app`` on host:port (TLS when ``tls`` is given)."""

    def __init__(
        self, app: web.Application, *, host: str, port: int, name: str = "http",
        max_connections: int = MAX_CONNECTIONS, on_refused: Callable[[], None] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S, tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self._host = host
        self._port = port
        self._name = name
        self._max_connections = max_connections
        self._on_refused = on_refused
        self._tls = tls
        self._idle_timeout_s = idle_timeout_s
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_s,
                                     shutdown_timeout=SHUTDOWN_GRACE_S, handle_signals=False)
        self._server: asyncio.Server | None = None
        self._unmade = 0

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """Connections being served now."""
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    def _made(self) -> None:
        self._unmade -= 1

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        # asyncio runs connection_made (where aiohttp counts a connection) a loop step
        # after this factory, so a burst accepted in one step would all see the same
        # count: the handlers made here and not yet counted are added by hand.
        if len(server.connections) + self._unmade >= self._max_connections:
            log.warning("http_connection_refused", listener=self._name, port=self.port,
                        max_connections=self._max_connections)
            if self._on_refused is not None:
                self._on_refused()
            return _Refusal()
        self._unmade += 1
        asyncio.get_running_loop().call_soon(self._made)
        return server()

    async def start(self) -> None:
        """Start listening."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, reuse_address=True, ssl=self._tls,
            ssl_handshake_timeout=self._idle_timeout_s if self._tls is not None else None,
        )
        log.info("http_listening", listener=self._name, host=self._host, port=self.port,
                 tls=self._tls is not None)

    async def close(self) -> None:
        """Stop listening; let the requests in progress finish (a few seconds), then end
        the rest."""
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2 or later)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def get(host: str, port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """One GET (for ``callmfa health`` and the tests): (status, body)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"http://{host}:{port}{path}") as response:
        return response.status, await response.read()
