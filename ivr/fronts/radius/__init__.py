"""The RADIUS front (role ``radius`` of ``callmfa serve``): VPNs, Wi-Fi and SSH ask for the
phone call in an Access-Request and get an Access-Accept, -Challenge or -Reject
(docs/radius.md).

Layers: :mod:`.clients` (the clients file), :mod:`.packets` (the wire, through pyrad),
:mod:`.replies` (outcome to answer), :mod:`.front` (the decisions, retransmissions, number
match), :mod:`.server` (the UDP socket), :mod:`.upstream` (``CALLMFA_RADIUS_PASSWORD=radius``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ...client import VerificationClient
from ...domain.directory import PasswordChecker, UserDirectory
from ...exceptions import SettingsError
from ...settings import Settings
from . import packets
from .clients import ClientTable, RadiusClient, load_clients, parse_clients
from .front import RadiusFront
from .metrics import RadiusMetrics
from .server import RadiusServer
from .upstream import UpstreamPasswordChecker

__all__ = [
    "ClientTable", "RadiusClient", "RadiusFront", "RadiusMetrics", "RadiusRole",
    "RadiusServer", "load_clients", "parse_clients",
]


def passwords_for(
    settings: Settings, ldap: PasswordChecker | None = None,
    metrics: RadiusMetrics | None = None,
) -> PasswordChecker | None:
    """The first-factor check of CALLMFA_RADIUS_PASSWORD (None for ``none``); ``ldap`` is the
    LDAP source's bind check (None without CALLMFA_LDAP_URL); ``metrics`` count the
    upstream's replies refused."""
    if settings.radius_password == "radius":  # noqa: S105 - a mode, not a password
        host, port = settings.radius_upstream_address()
        return UpstreamPasswordChecker(
            host, port, settings.radius_upstream_secret.encode(),
            settings.radius_upstream_timeout_s, packets.dictionary(),
            metrics.upstream_refused.inc if metrics is not None else None)
    if settings.radius_password == "ldap":  # noqa: S105 - a mode, not a password
        if ldap is None:
            raise SettingsError("CALLMFA_RADIUS_PASSWORD=ldap needs the LDAP source: set "
                                "CALLMFA_LDAP_URL (docs/directory.md)")
        return ldap
    return None


class RadiusRole:
    """The front, its listener and its own client of the Redis contract, started and
    closed in order."""

    def __init__(self, settings: Settings, directory: UserDirectory,
                 ldap: PasswordChecker | None, registry: CollectorRegistry) -> None:
        clients = load_clients(settings.radius_clients_file)
        metrics = RadiusMetrics(registry)
        passwords = passwords_for(settings, ldap, metrics)
        self.verifier = VerificationClient.from_settings(settings)
        self.front = RadiusFront(settings, clients, self.verifier, directory, metrics,
                                 passwords=passwords)
        self.server = RadiusServer(self.front, settings.radius_host, settings.radius_port)
        self._closed = False

    async def start(self) -> None:
        """Subscribe to outcomes, then listen."""
        await self.verifier.__aenter__()
        await self.server.start()

    async def close(self, grace_s: float) -> None:
        """Answer or cancel the held requests, stop listening, close the client (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.server.close(grace_s)
        finally:
            await self.verifier.aclose()
