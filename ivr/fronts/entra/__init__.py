"""callmfa as a Microsoft Entra External Authentication Method (docs/entra.md).

:mod:`.protocol` is the OpenID Connect exchange, sans-IO; :mod:`.keys` callmfa's signing
keys; :mod:`.entra_keys` fetches Entra's; :class:`EntraFront` serves the endpoints on the
HTTP API.
"""

from .front import EntraFront
from .keys import SigningKeys, generate_pem

__all__ = ["EntraFront", "SigningKeys", "generate_pem"]
