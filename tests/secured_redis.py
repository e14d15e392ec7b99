"""A redis-server as production should run it: the shipped ACL file, TLS, a throwaway CA."""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .conftest import REPO, free_port, wait_until

ACL_FILE = REPO / "docker" / "redis" / "callmfa.acl"


@dataclass(frozen=True)
class SecuredRedis:
    port: int
    ca: Path
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        """A rediss:// URL for one of the ACL users, trusting the throwaway CA."""
        return (f"rediss://{user}:{quote(self.passwords[user])}@127.0.0.1:{self.port}/0"
                f"?ssl_ca_certs={self.ca}")


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (directory / n for n in
                                  ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=callmfa test CA", "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(csr))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


@contextmanager
def secured_redis(directory: Path) -> Iterator[SecuredRedis]:
    """redis-server with the shipped ACL file (passwords replaced) on a TLS-only port."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_certs(directory)
    passwords = {u: secrets.token_urlsafe(24)
                 for u in ("callmfa-signin", "callmfa-service", "callmfa-security")}
    acl = ACL_FILE.read_text()
    for user, password in passwords.items():
        acl = acl.replace(f">CHANGE-ME-{user.split('-')[1]}", f">{password}")
    assert ">CHANGE-ME" not in acl
    (directory / "users.acl").write_text(acl)
    port = free_port()
    log = open(directory / "redis.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(ca), "--tls-auth-clients", "no", "--aclfile", str(directory / "users.acl"),
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    context = ssl.create_default_context(cafile=str(ca))

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(directory / 'redis.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    try:
        wait_until(up, 10, "TLS redis-server")
        yield SecuredRedis(port, ca, passwords)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
