"""``CALLMFA_RADIUS_PASSWORD=radius``: the first factor checked by another RADIUS server.

callmfa sends the user's PAP password in an Access-Request of its own (with its own secret,
``CALLMFA_RADIUS_UPSTREAM_SECRET``, and a Message-Authenticator) to NPS or FreeRADIUS, and
counts the password right only on an Access-Accept whose authenticators verify. Anything
else (Reject, Challenge, a forged or unsigned reply) is a wrong password; no answer within
the timeout, after one retransmission, is :class:`UpstreamError` (the user is told the
service is unavailable, not that the password is wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from pyrad.dictionary import Dictionary
from pyrad.packet import AccessAccept, AccessRequest, AuthPacket, PacketError, StatusServer

from ...exceptions import IvrError
from .packets import MAX_PACKET_BYTES

log = structlog.get_logger("ivr.fronts.radius.upstream")

TRIES = 2  # the first send and one retransmission of the same packet (RFC 5080 2.2.1)


class UpstreamError(IvrError):
    """The upstream RADIUS server did not answer in time, or could not be reached."""


class _Answer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable): the retransmission or the timeout decides.
        log.warning("radius_upstream_unreachable", error=str(exc))


class UpstreamPasswordChecker:
    """A :class:`~ivr.domain.directory.PasswordChecker` that asks an upstream RADIUS server."""

    def __init__(self, host: str, port: int, secret: bytes, timeout_s: float,
                 dict_: Dictionary, on_refused: Callable[[], None] | None = None) -> None:
        self._address = (host, port)
        self._on_refused = on_refused  # a reply whose authenticators do not verify
        self._secret = secret
        self._timeout_s = timeout_s
        self._dict = dict_

    def __repr__(self) -> str:
        return f"UpstreamPasswordChecker({self._address[0]}:{self._address[1]}, secret=***)"

    async def check_password(self, user: str, password: str) -> bool:
        """True only on the upstream's verified Access-Accept; UpstreamError on no answer."""
        request = AuthPacket(code=AccessRequest, secret=self._secret, dict=self._dict)
        request.AddAttribute("User-Name", user)
        request.AddAttribute("User-Password", request.PwCrypt(password))
        request.AddAttribute("NAS-Identifier", "callmfa")
        request.add_message_authenticator()
        return await self.ask(request)

    async def status(self) -> bool:
        """Status-Server (RFC 5997): True when the server answers it, verified."""
        request = AuthPacket(code=StatusServer, secret=self._secret, dict=self._dict)
        request.authenticator = request.CreateAuthenticator()
        request.add_message_authenticator()
        return await self.ask(request)

    async def ask(self, request: AuthPacket) -> bool:
        """Send ``request`` (retransmitted once); True on a verified Access-Accept, False on
        another verified reply, UpstreamError on none."""
        raw: bytes = request.RequestPacket()
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                _Answer, remote_addr=self._address)
        except OSError as e:
            raise UpstreamError(f"upstream RADIUS unreachable: {e}") from None
        try:
            for _ in range(TRIES):
                transport.sendto(raw)
                try:
                    async with asyncio.timeout(self._timeout_s):
                        while True:
                            data = await protocol.replies.get()
                            verdict = self._read(request, data)
                            if verdict is not None:
                                return verdict
                except TimeoutError:
                    continue
        finally:
            transport.close()
        log.warning("radius_upstream_timed_out", upstream=f"{self._address[0]}:"
                    f"{self._address[1]}", timeout_s=self._timeout_s, tries=TRIES)
        raise UpstreamError("the upstream RADIUS server did not answer")

    def _read(self, request: AuthPacket, data: bytes) -> bool | None:
        """The upstream's verdict in ``data``, or None for a packet that is not the reply."""
        if len(data) > MAX_PACKET_BYTES:
            return None
        try:
            answer = request.CreateReply(packet=data)
            genuine = request.VerifyReply(answer, data, enforce_ma=True)
        except (PacketError, KeyError, IndexError, ValueError, TypeError):
            return None
        if not genuine:
            log.warning("radius_upstream_reply_refused", reason="authenticator does not verify")
            if self._on_refused is not None:
                self._on_refused()
            return None
        return bool(answer.code == AccessAccept)

