"""callmfa's Entra signing keys: RSA key pairs with a self-signed certificate each (the JWKS's
``x5c``), kept in one PEM file, each pair after a ``# callmfa-entra-key signs-from=<epoch>``
line. Every pair is published; the one that signs is the latest whose ``signs-from`` has
come. ``callmfa keys rotate`` (:func:`rotated`) adds a pair that signs only 2 days later:
Entra caches callmfa's JWKS for 24 h, so it holds the new key before it is used."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import RSAKey

from ...exceptions import SettingsError

KEY_BITS = 2048
ROTATION_OVERLAP_S = 2 * 86400
_SIGNS_FROM = re.compile(r"# callmfa-entra-key signs-from=(\d+)\s*\Z")
CERT_DAYS = 3650
_KEY_MARK = "-----BEGIN PRIVATE KEY-----"
_CERT_MARK = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class SigningKey:
    """One key pair: the JOSE key (``kid``: its RFC 7638 thumbprint) and its certificate."""

    key: RSAKey = field(repr=False)
    certificate: x509.Certificate
    signs_from: int = 0  # epoch seconds
    pem: str = field(default="", repr=False)  # the pair as stored

    @property
    def kid(self) -> str:
        """The key id in the JWKS and in the tokens' header."""
        kid: str = self.key.kid or ""
        return kid

    def public_jwk(self) -> dict[str, Any]:
        """The JWKS entry: RS256, ``use`` sig, ``kid`` and ``x5c`` (DER, base64)."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        jwk: dict[str, Any] = dict(self.key.as_dict(private=False))
        jwk.update(alg="RS256", use="sig", kid=self.kid,
                   x5c=[base64.b64encode(der).decode()])
        return jwk


@dataclass(frozen=True)
class SigningKeys:
    """The keys of one issuer, the signing one first."""

    keys: tuple[SigningKey, ...]

    @property
    def signing(self) -> SigningKey:
        """The key that signs id_tokens now."""
        return self.signing_at(time.time())

    def signing_at(self, now: float) -> SigningKey:
        """The key that signs at ``now``: the latest whose ``signs_from`` has come (the
        first key if none has)."""
        due = [k for k in self.keys if k.signs_from <= now]
        return max(due, key=lambda k: k.signs_from) if due else self.keys[0]

    def to_pem(self) -> str:
        """The file's text."""
        return "".join(f"# callmfa-entra-key signs-from={k.signs_from}\n{k.pem}"
                       for k in self.keys)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: every key, public part only."""
        return {"keys": [k.public_jwk() for k in self.keys]}

    @classmethod
    def from_pem(cls, text: str) -> SigningKeys:
        """The keys of a PEM text: private keys and certificates, paired in order."""
        keys, certs, starts, pems = [], [], [], []
        for signs_from, block in _blocks(text):
            if block.startswith(_KEY_MARK):
                starts.append(signs_from)
                pems.append(block)
                private = serialization.load_pem_private_key(block.encode(), password=None)
                if not isinstance(private, rsa.RSAPrivateKey) or private.key_size < KEY_BITS:
                    raise SettingsError(f"the Entra signing key must be RSA of {KEY_BITS} bits "
                                        "or more")
                keys.append(private)
            elif block.startswith(_CERT_MARK):
                certs.append(x509.load_pem_x509_certificate(block.encode()))
                if pems:
                    pems[-1] += block
        if not keys or len(keys) != len(certs):
            raise SettingsError("the Entra key file must hold pairs of a private key and its "
                                f"certificate ({len(keys)} keys, {len(certs)} certificates)")
        pairs = []
        for private, cert, signs_from, pem in zip(keys, certs, starts, pems, strict=True):
            if cert.public_key() != private.public_key():
                raise SettingsError("an Entra certificate does not match its private key")
            key = RSAKey.import_key(private)
            key.ensure_kid()
            pairs.append(SigningKey(key, cert, signs_from, pem))
        return cls(tuple(pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> SigningKeys:
        """The keys of CALLMFA_ENTRA_SIGNING_KEY_FILE (SettingsError if unreadable or bad)."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise SettingsError(f"cannot read the Entra key file {path}: {e.strerror}") from None
        try:
            return cls.from_pem(text)
        except ValueError as e:
            raise SettingsError(f"the Entra key file {path} is not valid PEM: {e}") from None


def generate_pem(subject: str = "callmfa") -> str:
    """A new RSA key and its self-signed certificate, as PEM (key first)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .sign(private, hashes.SHA256()))
    key_pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    return key_pem + cert.public_bytes(serialization.Encoding.PEM).decode()


def rotated(keys: SigningKeys | None, now: float, subject: str = "callmfa") -> SigningKeys:
    """``keys`` after a rotation at ``now``: a new pair that signs from ``now`` + 2 days
    (at once if there are no keys yet), the pair signing now, and none older."""
    fresh = SigningKeys.from_pem(generate_pem(subject)).keys[0]
    if keys is None:
        return SigningKeys((dataclasses.replace(fresh, signs_from=int(now)),))
    current = keys.signing_at(now)
    kept = tuple(k for k in keys.keys if k.signs_from >= current.signs_from)
    return SigningKeys((*kept, dataclasses.replace(fresh,
                                                   signs_from=int(now) + ROTATION_OVERLAP_S)))


def write_keys(path: str | Path, keys: SigningKeys) -> None:
    """Replace the key file atomically, readable by its owner only."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(keys.to_pem())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _blocks(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    current: list[str] = []
    signs_from = 0
    for line in text.splitlines():
        if m := _SIGNS_FROM.match(line):
            signs_from = int(m.group(1))
        elif line.startswith("-----BEGIN "):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("-----END "):
                out.append((signs_from, "\n".join(current) + "\n"))
                current = []
    return out
