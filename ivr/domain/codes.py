"""Salted hashes of the codes a user keys (PINs, match numbers): scrypt, never the code itself.

The stored form is one ASCII string, ``scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`` (salt and
hash in unpadded URL-safe base64; the salt is 16 to 32 bytes, 22 to 43 characters, and the
hash 32 bytes, 43 characters: scrypt's ``dklen`` 32). Checking costs tens of milliseconds
of CPU on purpose: drivers run it off the event loop. Parameters read from a hash are
bounded, so a hash that came with a request cannot make the check take a second or a
gigabyte.

PINs are also peppered (:func:`hash_pin`): scrypt runs over HMAC-SHA256(pepper, PIN) (in
hex), with the pepper (``CALLMFA_PIN_PEPPER``) kept outside Redis, so that a copy of
``callmfa:pin:*`` alone cannot be searched offline. Such a hash starts ``scrypt-p1$``; a
PIN hash without it (set before the pepper) still verifies, and :func:`check_pin` says to
upgrade it. Match hashes come from the sign-in service and stay unpeppered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

LOG2_N, R, P = 14, 8, 1  # 16 MiB and ~40 ms per check
MAX_LOG2_N, MAX_R, MAX_P = 16, 8, 2
SALT_BYTES = range(16, 33)
HASH_BYTES = 32
PEPPERED = "scrypt-p1"  # scrypt over HMAC-SHA256(pepper, code), version 1
_FORMAT = re.compile(
    r"scrypt\$(\d{1,2})\$(\d{1,2})\$(\d)\$([A-Za-z0-9_-]{22,43})\$([A-Za-z0-9_-]{43})\Z"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(code: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        code.encode(), salt=salt, n=1 << log2_n, r=r, p=p, dklen=HASH_BYTES,
        maxmem=128 * r * (1 << log2_n) * 2 + 1024 * 1024,
    )


def hash_code(code: str, *, log2_n: int = LOG2_N, r: int = R, p: int = P) -> str:
    """The stored form of ``code``, with a fresh random salt."""
    salt = os.urandom(16)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(_scrypt(code, salt, log2_n, r, p))}"


def is_valid_hash(stored: str) -> bool:
    """Whether ``stored`` is a hash this module can check, within the parameter bounds."""
    m = _FORMAT.match(stored)
    if m is None:
        return False
    log2_n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (10 <= log2_n <= MAX_LOG2_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        return False
    try:
        salt, digest = _unb64(m.group(4)), _unb64(m.group(5))
    except ValueError:  # a length no byte string encodes to (4k+1 characters)
        return False
    return len(salt) in SALT_BYTES and len(digest) == HASH_BYTES


def check_code(code: str, stored: str) -> bool:
    """Whether ``code`` is the code behind ``stored``; a malformed hash matches nothing."""
    if not is_valid_hash(stored):
        return False
    _, log2_n, r, p, salt, digest = stored.split("$")
    actual = _scrypt(code, _unb64(salt), int(log2_n), int(r), int(p))
    return hmac.compare_digest(actual, _unb64(digest))


def _peppered(pin: str, pepper: bytes) -> bytes:
    return hmac.new(pepper, pin.encode(), hashlib.sha256).digest()


def hash_pin(pin: str, pepper: bytes) -> str:
    """The stored form of a PIN: peppered (``scrypt-p1$...``), or without a pepper the
    plain :func:`hash_code` form."""
    if not pepper:
        return hash_code(pin)
    return PEPPERED + hash_code(_peppered(pin, pepper).hex()).removeprefix("scrypt")


@dataclass(frozen=True)
class PinCheck:
    """A PIN's verdict; ``upgrade``: it was right, and its hash should be peppered now."""

    ok: bool
    upgrade: bool = False


def check_pin(pin: str, stored: str, pepper: bytes) -> PinCheck:
    """Whether ``pin`` is the PIN behind ``stored``, peppered or not (a peppered hash never
    matches without the pepper, nor with another one)."""
    if stored.startswith(PEPPERED + "$"):
        inner = "scrypt" + stored.removeprefix(PEPPERED)
        return PinCheck(bool(pepper) and check_code(_peppered(pin, pepper).hex(), inner))
    ok = check_code(pin, stored)
    return PinCheck(ok, upgrade=ok and bool(pepper))
