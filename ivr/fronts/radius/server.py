"""The RADIUS listener: one UDP socket, each datagram handed to :class:`RadiusFront`.

pyrad's own asyncio server (``pyrad.server_async``) is not used: it looks clients up by
exact address (no networks), has one Message-Authenticator policy for all, answers no
Status-Server on the authentication port, and hands requests to a synchronous callback, so
the held requests, their retransmissions and their replies would still be ours to own.
"""

from __future__ import annotations

import asyncio
from typing import cast

import structlog

from .front import Address, RadiusFront

log = structlog.get_logger("ivr.fronts.radius")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, front: RadiusFront) -> None:
        self._front = front
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # What create_datagram_endpoint gives (its class is not a DatagramTransport subclass).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._front.datagram(data, (addr[0], addr[1]), self._send)

    def error_received(self, exc: Exception) -> None:
        log.warning("radius_socket_error", error=str(exc))

    def _send(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)


class RadiusServer:
    """Listens on ``host``:``port`` (UDP) for the front; :meth:`close` drains it."""

    def __init__(self, front: RadiusFront, host: str, port: int) -> None:
        self.front = front
        self._host, self._port = host, port
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._transport is None:
            return self._port
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    async def start(self) -> None:
        """Bind the socket; OSError (address in use, permission) stops start-up."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.front), local_addr=(self._host, self._port))
        self._transport = transport
        log.info("radius_listening", host=self._host, port=self.port,
                 clients=[c.name for c in self.front.clients],
                 password=self.front.settings.radius_password)

    async def close(self, grace_s: float) -> None:
        """Stop taking requests, let the held ones be answered for ``grace_s``, then close."""
        await self.front.close(grace_s)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
