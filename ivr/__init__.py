"""callmfa: self-hosted phone-call verification on Asterisk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .domain.outcome import Outcome, OutcomeRecord
from .domain.users import UserNameError, normalise_user

if TYPE_CHECKING:
    from .client import VerificationClient

__version__ = "0.1.0"
__all__ = [
    "Outcome", "OutcomeRecord", "UserNameError", "VerificationClient", "__version__",
    "normalise_user",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the classic AGI script loads ivr.domain without redis.asyncio.
    if name == "VerificationClient":
        from .client import VerificationClient

        return VerificationClient
    raise AttributeError(f"module 'ivr' has no attribute {name!r}")
