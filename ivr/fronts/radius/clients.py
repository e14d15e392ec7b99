"""The NAS clients file (``CALLMFA_RADIUS_CLIENTS_FILE``): who may ask, with which secret.

One client a line, fields separated by blanks; ``#`` starts a comment::

    # address or CIDR   secret or file:PATH           name      options
    127.0.0.1           file:/etc/callmfa/radius-vpn  vpn
    10.20.0.0/24        s3cr3t-shared-with-the-wlc    wifi      require_message_authenticator=no

The name is optional (the address is used instead); the one option,
``require_message_authenticator`` (``yes`` by default), may be turned off only for a NAS that
cannot send Message-Authenticator (BlastRADIUS, CVE-2024-3596: docs/radius.md). A packet's
source address picks the client of the longest matching prefix. Any malformed line stops
start-up with its line number.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...exceptions import SettingsError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_SECRET_BYTES = 128  # what RADIUS implementations accept; RFC 2865 sets no limit
_YES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


@dataclass(frozen=True)
class RadiusClient:
    """One NAS (or a network of them) and the secret it shares with callmfa."""

    network: Network
    secret: bytes = field(repr=False)
    name: str
    require_message_authenticator: bool = True


class ClientTable:
    """The clients, looked up by a packet's source address (longest prefix wins)."""

    def __init__(self, clients: list[RadiusClient]) -> None:
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[RadiusClient]:
        return iter(self._clients)

    def find(self, address: str) -> RadiusClient | None:
        """The client that ``address`` belongs to, or None for an unknown source."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return next((c for c in self._clients if ip in c.network), None)


def parse_clients(text: str, *, source: str = "CALLMFA_RADIUS_CLIENTS_FILE",
                  base: Path | None = None) -> ClientTable:
    """The clients of a clients file's ``text``; SettingsError naming ``source`` and the line
    number for the first malformed line. ``file:`` paths are relative to ``base``."""
    clients: list[RadiusClient] = []
    seen: dict[Network, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not body:
            continue
        where = f"{source}:{number}"
        client = _parse_line(body.split(), where, base)
        if client.network in seen:
            raise SettingsError(f"{where}: {client.network} is already listed on line "
                                f"{seen[client.network]}")
        seen[client.network] = number
        clients.append(client)
    if not clients:
        raise SettingsError(f"{source}: no client is listed: nothing could ask for a "
                            "verification (one line: ADDRESS SECRET [NAME])")
    return ClientTable(clients)


def _parse_line(fields: list[str], where: str, base: Path | None) -> RadiusClient:
    if len(fields) < 2:
        raise SettingsError(f"{where}: expected ADDRESS-OR-CIDR SECRET-OR-file:PATH [NAME] "
                            "[require_message_authenticator=yes|no]")
    try:
        network = ipaddress.ip_network(fields[0], strict=True)
    except ValueError as e:
        raise SettingsError(f"{where}: {fields[0]!r} is not an address or network: {e}") from None
    secret = _secret(fields[1], where, base)
    name, require = "", True
    for item in fields[2:]:
        key, sep, value = item.partition("=")
        if not sep:
            if name:
                raise SettingsError(f"{where}: unexpected {item!r}: one name per client")
            name = item
        elif key == "require_message_authenticator" and value.lower() in _YES:
            require = _YES[value.lower()]
        elif key == "require_message_authenticator":
            raise SettingsError(f"{where}: require_message_authenticator must be yes or no")
        elif key == "name" and value:
            name = value
        else:
            raise SettingsError(f"{where}: unknown option {key!r} "
                                "(require_message_authenticator=yes|no, name=NAME)")
    if not name.isprintable() or len(name) > 64:
        raise SettingsError(f"{where}: a name is at most 64 printable characters")
    return RadiusClient(network, secret, name or str(network), require)


def _secret(text: str, where: str, base: Path | None) -> bytes:
    if text.startswith("file:"):
        path = Path(text[len("file:"):])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            secret = path.read_bytes().strip()
        except OSError as e:
            raise SettingsError(f"{where}: cannot read the secret file {path}: "
                                f"{e.strerror}") from None
    else:
        secret = text.encode()
    if not secret:
        raise SettingsError(f"{where}: the secret is empty")
    if len(secret) > MAX_SECRET_BYTES:
        raise SettingsError(f"{where}: the secret is over {MAX_SECRET_BYTES} bytes")
    return secret


def load_clients(path: str) -> ClientTable:
    """The clients file at ``path`` (CALLMFA_RADIUS_CLIENTS_FILE); SettingsError if it is
    missing, unreadable or malformed."""
    if not path:
        raise SettingsError("the radius role needs CALLMFA_RADIUS_CLIENTS_FILE: the NAS "
                            "clients and their secrets (docs/radius.md)")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"CALLMFA_RADIUS_CLIENTS_FILE: cannot read {path}: {e}") from None
    return parse_clients(text, source=path, base=Path(path).parent)
