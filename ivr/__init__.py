"""callmfa: self-hosted phone-call verification on Asterisk."""

from .client import VerificationClient
from .domain.outcome import Outcome, OutcomeRecord

__version__ = "0.1.0"
__all__ = ["Outcome", "OutcomeRecord", "VerificationClient", "__version__"]
