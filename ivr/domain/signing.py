"""Signed outcomes: HMAC-SHA256 over the canonical JSON of an outcome (docs/contract.md).

The canonical form is the outcome object without ``sig``, keys sorted, no whitespace,
UTF-8 with non-ASCII characters as they are. callmfa writes exactly that form with
``,"sig":"<hex>"`` added before the closing brace, so a verifier may either rebuild the
canonical form from the parsed object or cut the ``sig`` member out of the stored bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from ..exceptions import OutcomeSignatureError
from .outcome import OutcomeRecord

SIG_FIELD = "sig"
_SIG = re.compile(r"[0-9a-f]{64}\Z")


def canonical(data: dict[str, Any]) -> bytes:
    """The bytes that are signed: ``data`` without ``sig``, sorted keys, no whitespace."""
    body = {k: v for k, v in data.items() if k != SIG_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, data: dict[str, Any]) -> str:
    """Lower-case hex HMAC-SHA256 of the canonical form."""
    return hmac.new(key, canonical(data), hashlib.sha256).hexdigest()


def signed_json(key: bytes, record: OutcomeRecord) -> str:
    """The wire form of ``record``: its canonical JSON with ``sig`` as the last member."""
    body = canonical(record.to_wire())  # rendered once: signed, and sent
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    return f'{body[:-1].decode()},"{SIG_FIELD}":"{sig}"}}'


def verified(keys: bytes | Sequence[bytes], raw: str | bytes) -> OutcomeRecord:
    """Parse an outcome, refusing it unless its ``sig`` is by ``keys`` (one key, or the
    current one and the one before it while they are rotated); raise OutcomeSignatureError."""
    try:
        data = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        raise OutcomeSignatureError("outcome is not valid JSON") from None
    if not isinstance(data, dict):
        raise OutcomeSignatureError("outcome is not a JSON object")
    sig = data.get(SIG_FIELD)
    if sig is None:
        raise OutcomeSignatureError(f"unsigned outcome for id {data.get('id')!r}")
    if not isinstance(sig, str) or not _SIG.match(sig):
        raise OutcomeSignatureError("outcome sig is not 64 lower-case hex digits")
    try:
        body = canonical(data)
    except (TypeError, ValueError):  # keys that cannot be sorted, lone surrogates, ...
        raise OutcomeSignatureError("outcome is not a signable object") from None
    given = sig.encode()
    if not any(hmac.compare_digest(given, hmac.new(key, body, hashlib.sha256).hexdigest()
                                   .encode())
               for key in ((keys,) if isinstance(keys, bytes) else keys)):
        raise OutcomeSignatureError(f"outcome signature mismatch for id {data.get('id')!r}")
    try:
        return OutcomeRecord.from_wire(data)
    except ValueError as e:
        raise OutcomeSignatureError(f"signed outcome is malformed: {e}") from None
