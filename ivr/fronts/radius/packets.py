"""RADIUS on the wire, through pyrad: decode and check a request, encode a reply. No I/O.

pyrad does the packet format, the User-Password hiding (RFC 2865 5.2), the Response
Authenticator and Message-Authenticator (RFC 2869 5.14, RFC 3579 3.2), and copies Proxy-State
into replies (RFC 2865 5.33). What is decided here is which packets are answered at all:
:func:`screen` says why one is dropped (BlastRADIUS, CVE-2024-3596: a missing or wrong
Message-Authenticator) before anything else reads it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pyrad.dictionary import Dictionary
from pyrad.packet import (
    AccessAccept,
    AccessChallenge,
    AccessReject,
    AccessRequest,
    AuthPacket,
    PacketError,
    StatusServer,
)

from .clients import RadiusClient

__all__ = ["AccessAccept", "AccessChallenge", "AccessReject", "AccessRequest", "StatusServer"]

MAX_PACKET_BYTES = 4096  # RFC 2865 section 3
MAX_TEXT_BYTES = 253  # one attribute's value
HEADER = struct.Struct("!BBH16s")
# What a reply adds to the request's Proxy-State: Message-Authenticator, the longest
# Reply-Message and a State of callmfa's (16 octets).
REPLY_OWN_BYTES = HEADER.size + 18 + (2 + MAX_TEXT_BYTES) + (2 + 16)
PROXY_STATE = 33
EAP_MESSAGE = 79

# The attributes callmfa reads or writes (RFC 2865, 2869, 3579, 5997). Others are carried
# along undecoded. User-Password is octets here: pyrad's PwDecrypt un-hides it.
DICTIONARY = """
ATTRIBUTE User-Name 1 string
ATTRIBUTE User-Password 2 octets
ATTRIBUTE CHAP-Password 3 octets
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE NAS-Port 5 integer
ATTRIBUTE Service-Type 6 integer
ATTRIBUTE Reply-Message 18 string
ATTRIBUTE State 24 octets
ATTRIBUTE Class 25 octets
ATTRIBUTE Session-Timeout 27 integer
ATTRIBUTE Called-Station-Id 30 string
ATTRIBUTE Calling-Station-Id 31 string
ATTRIBUTE NAS-Identifier 32 string
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE NAS-Port-Type 61 integer
ATTRIBUTE EAP-Message 79 octets
ATTRIBUTE Message-Authenticator 80 octets
"""


def dictionary() -> Dictionary:
    """pyrad's dictionary of :data:`DICTIONARY` (build it once per server)."""
    return Dictionary(io.StringIO(DICTIONARY))


class Drop(StrEnum):
    """Why a packet gets no reply at all (RFC 2865: silently discarded); a metric label."""

    UNKNOWN_CLIENT = "unknown_client"
    MALFORMED = "malformed"
    UNSUPPORTED_CODE = "unsupported_code"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"


@dataclass(frozen=True)
class Header:
    """The fixed 20 octets of a packet."""

    code: int
    identifier: int
    length: int
    authenticator: bytes


def header(data: bytes) -> Header | None:
    """The header of ``data``, or None if it is not even that."""
    if len(data) < HEADER.size:
        return None
    return Header(*HEADER.unpack_from(data))


def screen(data: bytes, client: RadiusClient, dict_: Dictionary) -> AuthPacket | Drop:
    """The decoded request from ``client``, or why it is dropped unanswered.

    Only Access-Request and Status-Server are served. Status-Server always needs a
    Message-Authenticator (RFC 5997 section 3); an Access-Request needs one unless the client
    is listed with ``require_message_authenticator=no``, and a present one must be right
    (a wrong secret shows here).
    """
    head = header(data)
    if head is None or not HEADER.size <= head.length <= min(len(data), MAX_PACKET_BYTES):
        return Drop.MALFORMED
    if head.code not in (AccessRequest, StatusServer):
        return Drop.UNSUPPORTED_CODE
    if not _attributes_fit(data, head.length):
        return Drop.MALFORMED
    try:
        packet = AuthPacket(secret=client.secret, dict=dict_, packet=data[:head.length])
    except (PacketError, struct.error, KeyError, IndexError, ValueError, TypeError):
        return Drop.MALFORMED
    packet.code = head.code
    if sum(2 + len(v) for v in packet.get(PROXY_STATE, [])) + REPLY_OWN_BYTES > \
            MAX_PACKET_BYTES:
        return Drop.MALFORMED  # no reply could carry its Proxy-State within 4096 octets
    authenticators = len(packet.get(80, []))
    if authenticators == 0:
        # EAP-Message always needs one (RFC 3579 3.2), whatever the client is allowed.
        if (head.code == StatusServer or client.require_message_authenticator
                or is_eap(packet)):
            return Drop.MISSING_MESSAGE_AUTHENTICATOR
        return packet
    if authenticators > 1 or len(packet[80][0]) != 16:
        return Drop.MALFORMED
    if not packet.verify_message_authenticator():
        return Drop.BAD_MESSAGE_AUTHENTICATOR
    return packet


def _attributes_fit(data: bytes, length: int) -> bool:
    """Whether the attributes fill the packet exactly, each at least its 2-octet header
    (pyrad cuts an attribute that runs past the end short instead of refusing it)."""
    at = HEADER.size
    while at < length:
        if at + 2 > length or data[at + 1] < 2 or at + data[at + 1] > length:
            return False
        at += data[at + 1]
    return True


def is_eap(packet: AuthPacket) -> bool:
    """Whether the request carries EAP, which callmfa does not speak."""
    return EAP_MESSAGE in packet


def text(packet: AuthPacket, name: str) -> str | None:
    """The first value of the string attribute ``name``, or None (absent or not UTF-8)."""
    try:
        values: list[Any] = packet[name]
    except KeyError:
        return None
    except UnicodeDecodeError:
        return None
    return values[0] if values and isinstance(values[0], str) else None


def octets(packet: AuthPacket, name: str) -> bytes | None:
    """The first value of the octets attribute ``name``, or None."""
    try:
        values: list[Any] = packet[name]
    except KeyError:
        return None
    return values[0] if values and isinstance(values[0], bytes) else None


def password(packet: AuthPacket) -> str | None:
    """The PAP password (User-Password un-hidden), or None when the request has none."""
    hidden = octets(packet, "User-Password")
    if hidden is None or len(hidden) % 16 or not 16 <= len(hidden) <= 128:
        return None
    value: str = packet.PwDecrypt(hidden)
    return value


def _clip(message: str) -> str:
    encoded = message.encode()[:MAX_TEXT_BYTES]
    return encoded.decode(errors="ignore")


def reply(request: AuthPacket, code: int, *, message: str | None = None,
          state: bytes | None = None) -> bytes:
    """The encoded reply to ``request``: Message-Authenticator first (always, BlastRADIUS),
    then the request's Proxy-State, Reply-Message and State."""
    response = request.CreateReply()
    response.code = code
    if message:
        response.AddAttribute("Reply-Message", _clip(message))
    if state is not None:
        response.AddAttribute("State", state)
    encoded: bytes = response.ReplyPacket()
    return encoded
