"""The HTTP API's application: its middlewares and its routes.

``build_app`` takes extra route tables (the voice-OTP provider endpoints, ...) and
sub-applications, which get the same authentication, rate limit and error shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aiohttp import web

from ...domain.request import MAX_REQUEST_BYTES
from . import admin, demo, verifications
from .auth import authenticate
from .errors import error_shape
from .parts import PARTS, ApiParts


def build_app(
    parts: ApiParts,
    *,
    extra: Sequence[Iterable[web.AbstractRouteDef]] = (),
    subapps: Mapping[str, web.Application] | None = None,
    with_demo: bool = False,
) -> web.Application:
    """The API application: /v1 (verifications, admin), /demo when ``with_demo``, and ``extra``
    route tables and ``subapps`` (prefix -> application) behind the same middlewares."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES,
                          middlewares=[error_shape, authenticate])
    app[PARTS] = parts
    app.add_routes(verifications.ROUTES)
    app.add_routes(admin.ROUTES)
    for table in extra:
        app.add_routes(table)
    for prefix, sub in (subapps or {}).items():
        sub[PARTS] = parts
        app.add_subapp(prefix, sub)
    if with_demo:
        app.add_routes(demo.ROUTES)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    await app[PARTS].results.start()


async def _stop(app: web.Application) -> None:
    await app[PARTS].results.close()
