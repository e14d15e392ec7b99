"""The HTTP API (``CALLMFA_ROLES`` api): verifications, admin actions and the demo page, over
the Redis contract (docs/openapi.yaml)."""

from .app import build_app
from .parts import ApiParts

__all__ = ["ApiParts", "build_app"]
