"""The per-call AGI token: proof that an AGI session is the call the originator placed.

The originator draws a token for each call and hands it to Asterisk as a channel variable
with the Originate; the call marker in Redis keeps only its SHA-256. The IVR reads the
variable back over AGI and admits the session only if its hash matches. A process that
merely connects to the FastAGI port (or runs the classic script) cannot know the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 24  # 192 bits, as 48 hex digits: safe in an AMI header and in the dialplan


def new_token() -> str:
    """A fresh random token (lower-case hex)."""
    return secrets.token_hex(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the call marker stores: the token's SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash``, compared in constant time."""
    if not token or not stored_hash:
        return False
    return hmac.compare_digest(token_hash(token).encode(), stored_hash.encode("ascii", "replace"))
