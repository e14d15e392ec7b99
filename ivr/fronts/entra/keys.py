"""callmfa's Entra signing keys: RSA key pairs with a self-signed certificate each (the JWKS's
``x5c``), kept in one PEM file. The first pair signs; the others are only published (the
old key of a rotation, which Entra may still hold in its 24 h cache)."""

from __future__ import annotations

import base64
import datetime
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
CERT_DAYS = 3650
_KEY_MARK = "-----BEGIN PRIVATE KEY-----"
_CERT_MARK = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class SigningKey:
    """One key pair: the JOSE key (``kid``: its RFC 7638 thumbprint) and its certificate."""

    key: RSAKey = field(repr=False)
    certificate: x509.Certificate

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
        """The key that signs id_tokens."""
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: every key, public part only."""
        return {"keys": [k.public_jwk() for k in self.keys]}

    @classmethod
    def from_pem(cls, text: str) -> SigningKeys:
        """The keys of a PEM text: private keys and certificates, paired in order."""
        keys, certs = [], []
        for block in _blocks(text):
            if block.startswith(_KEY_MARK):
                private = serialization.load_pem_private_key(block.encode(), password=None)
                if not isinstance(private, rsa.RSAPrivateKey) or private.key_size < KEY_BITS:
                    raise SettingsError(f"the Entra signing key must be RSA of {KEY_BITS} bits "
                                        "or more")
                keys.append(private)
            elif block.startswith(_CERT_MARK):
                certs.append(x509.load_pem_x509_certificate(block.encode()))
        if not keys or len(keys) != len(certs):
            raise SettingsError("the Entra key file must hold pairs of a private key and its "
                                f"certificate ({len(keys)} keys, {len(certs)} certificates)")
        pairs = []
        for private, cert in zip(keys, certs, strict=True):
            if cert.public_key() != private.public_key():
                raise SettingsError("an Entra certificate does not match its private key")
            key = RSAKey.import_key(private)
            key.ensure_kid()
            pairs.append(SigningKey(key, cert))
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


def _blocks(text: str) -> list[str]:
    out, current = [], []
    for line in text.splitlines():
        if line.startswith("-----BEGIN "):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("-----END "):
                out.append("\n".join(current) + "\n")
                current = []
    return out
