"""The LDAP source against servers that stop answering: each lookup ends in a clear
DirectoryError after CALLMFA_LDAP_TIMEOUT_S, and leaves no socket open and nothing
watched by the event loop.

The servers run in a process of their own (their sockets are not counted here): one accepts
and never answers, one answers the bind and then never answers the search.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ivr.exceptions import DirectoryError
from ivr.settings import Settings
from ivr.storage.ldap import LdapDirectory

from ..conftest import free_port, reply_of, wait_until

# An LDAPv3 server that answers nothing ("silent"), or only the first request, a bind, with
# success ("binds"): BindResponse { messageID, resultCode 0, matchedDN "", message "" }.
SERVER = r"""
import socket, sys, threading
mode, port = sys.argv[1], int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", port))
held = []
def serve(c):
    held.append(c)
    if mode == "binds":
        request = c.recv(4096)
        msgid = request[4]  # 30 len 02 01 <id>: callmfa's ids are small
        c.sendall(bytes([0x30, 0x0C, 0x02, 0x01, msgid, 0x61, 0x07,
                         0x0A, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]))
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
LOOKUPS = 5


def _server(mode: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, mode, str(port)])
    try:
        wait_until(lambda: reply_of(port) is not None, 10, f"the {mode} LDAP server")
        yield port
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def silent() -> Iterator[int]:
    yield from _server("silent")


@pytest.fixture(scope="module")
def binds() -> Iterator[int]:
    yield from _server("binds")


def _directory(port: int) -> LdapDirectory:
    return LdapDirectory(Settings(ldap_url=f"ldap://127.0.0.1:{port}", ldap_base_dn="dc=x",
                                  ldap_timeout_s=0.3, ldap_cache_ttl_s=0))


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def _settle() -> None:
    """A few turns of the loop: the callbacks of a cancelled wait still hold the connection."""
    for _ in range(3):
        await asyncio.sleep(0)


async def _fails_cleanly(directory: LdapDirectory, what: str) -> None:
    before = _open_fds()
    for n in range(LOOKUPS):
        with pytest.raises(DirectoryError, match=f"{what} .* failed: TimeoutError"):
            await directory.lookup(f"user{n}")
    await _settle()
    left = _open_fds() - before
    assert not left, f"sockets left open: {sorted(left)}"
    watched = set(asyncio.get_running_loop()._selector.get_map())  # type: ignore[attr-defined]
    assert watched <= _open_fds(), "the loop still watches closed descriptors"


class TestServersThatStopAnswering:
    async def test_a_connect_that_never_ends(self, silent: int) -> None:
        """bonsai kept an unfinished connect's socket (and the loop watched it) for ever:
        two descriptors per lookup, until the service ran out of them."""
        await _fails_cleanly(_directory(silent), "LDAP server")

    async def test_a_search_that_never_ends(self, binds: int) -> None:
        await _fails_cleanly(_directory(binds), "LDAP search on")

    async def test_a_cancelled_lookup_leaves_nothing_behind(self, silent: int) -> None:
        """A sign-in given up (its RADIUS or HTTP request gone) cancels the lookup."""
        directory = _directory(silent)
        before = _open_fds()
        task = asyncio.create_task(directory.lookup("alice"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _settle()
        assert not _open_fds() - before
