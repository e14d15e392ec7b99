"""The live sign-in demo page (``CALLMFA_API_DEMO=on``): see docs/security.md."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
