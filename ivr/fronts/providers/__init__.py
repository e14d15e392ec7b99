"""Provider endpoints: callmfa as the "SMS or voice provider" of identity systems.

Each module accepts, unchanged, what one system sends to its provider, with that system's
documented auth, and turns it into an ``otp`` verification (:mod:`.gateway`):
:mod:`.privacyidea`, :mod:`.authentik`, :mod:`.okta`, :mod:`.linotp`. Their ``routes()``
are mounted by the HTTP API; :func:`provider_app` is a minimal application of them alone.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ...settings import Settings
from . import authentik, linotp, okta, privacyidea
from .gateway import MAX_BODY_BYTES, OtpGateway, Verifier

GATEWAY = web.AppKey("gateway", OtpGateway)
VENDORS = (privacyidea, authentik, okta, linotp)


def provider_routes(gateway: OtpGateway) -> list[web.RouteTableDef]:
    """Every vendor's routes, on its own path (``/providers/<vendor>``)."""
    return [vendor.routes(gateway) for vendor in VENDORS]


def provider_app(settings: Settings, client: Verifier,
                 on_refused: Callable[[str, str], None] | None = None) -> web.Application:
    """An application serving the provider endpoints through ``client`` (a
    :class:`~ivr.client.VerificationClient`); ``on_refused(vendor, reason)`` counts refusals."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    gateway = OtpGateway(settings, client, on_refused)
    app[GATEWAY] = gateway
    for table in provider_routes(gateway):
        app.add_routes(table)
    return app
