"""The user directory through the real chain (issue 13): `callmfa user` entries and the
sandbox's slapd, a Redis-contract request that names only the user, and the attacks that
must fail (an unknown user, an LDAP filter injection, a wrong or empty password).

The sandbox's slapd (docker/sandbox/ldap/tree.ldif) holds ldap-alice (mobile and
telephoneNumber: mobile wins), ldap-bob (a national-form telephoneNumber) and ldap-nophone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ivr.client import VerificationClient
from ivr.domain.directory import DirectoryEntry
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.settings import Settings
from ivr.storage.keys import REQUESTS
from ivr.storage.ldap import LdapDirectory

from ..conftest import REPO, Sandbox
from .conftest import PhoneFactory, audit_entries
from .test_modes import _callmfa


def ldap(sandbox: Sandbox) -> LdapDirectory:
    """The LDAP source as `callmfa serve` builds it from the sandbox's env."""
    return LdapDirectory(Settings.from_env(sandbox.env))


def user_password(sandbox: Sandbox) -> str:
    """The sandbox's LDAP users' password (sandbox.sh draws it)."""
    return (sandbox.directory / "ldap-user-password").read_text().strip()


async def contract_request(client: VerificationClient, sandbox: Sandbox,
                           user: str) -> OutcomeRecord:
    """XADD a request with only an id and a user, as any sign-in service may, and wait."""
    rid = str(uuid.uuid4())
    redis = Redis.from_url(sandbox.redis_url)
    try:
        await redis.xadd(REQUESTS, {"request": json.dumps({"id": rid, "user": user})})
    finally:
        await redis.aclose()
    record = await client.wait(rid, 40, user=user)
    assert record is not None, "no outcome within 40 s"
    return record


class TestLdapSource:
    async def test_lookup_in_the_real_slapd(self, sandbox: Sandbox) -> None:
        """The first phone attribute present wins; a national form is read in the first
        allowed region; an entry without a phone, or no entry, is no user."""
        d = ldap(sandbox)
        assert await d.lookup("ldap-alice") == DirectoryEntry(
            user="ldap-alice", phone="+12015550181", source="ldap")
        bob = await d.lookup("ldap-bob")
        assert bob is not None
        assert bob.phone == "+12015550182"
        assert await d.lookup("ldap-nophone") is None
        assert await d.lookup("nobody") is None

    @pytest.mark.parametrize("user", ["ldap-ali*", "*", "ldap-alice)(uid=*", "x)(|(uid=*"])
    async def test_a_filter_injection_finds_nobody(self, sandbox: Sandbox, user: str) -> None:
        """Unescaped, ldap-ali* would be ldap-alice (and * everyone)."""
        assert await ldap(sandbox).lookup(user) is None

    async def test_password_check_binds_as_the_user(self, sandbox: Sandbox) -> None:
        """The right password binds; a wrong one, an empty one (an unauthenticated bind
        would succeed) and an unknown user do not."""
        d, password = ldap(sandbox), user_password(sandbox)
        assert await d.check_password("ldap-alice", password) is True
        assert await d.check_password("ldap-alice", password + "x") is False
        assert await d.check_password("ldap-alice", "") is False
        assert await d.check_password("nobody", password) is False
        assert await d.check_password("ldap-ali*", password) is False

    def test_check_says_the_directory_works(self, sandbox: Sandbox) -> None:
        out = _callmfa_env(sandbox, "check")
        line = next(x for x in out.splitlines() if x.split()[1:2] == ["directory"])
        assert line.split()[0] == "ok", out
        assert "LDAP bind as cn=callmfa" in line


def _callmfa_env(sandbox: Sandbox, *args: str) -> str:
    """Run callmfa with the sandbox's whole env (its LDAP settings too); what it printed."""
    env = {**os.environ, **sandbox.env}
    done = subprocess.run([str(REPO / ".venv" / "bin" / "callmfa"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


class TestRequestsWithoutPhone:
    async def test_a_local_user_is_called_at_the_directory_number(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """`callmfa user set` with a directory's form of the number, then a request with
        only the user: the phone rings at the E.164 number, presses #: approved."""
        user = f"dir-{uuid.uuid4().hex[:8]}"
        out = await asyncio.to_thread(_callmfa, sandbox, "user", "set", user,
                                      "--phone", "+1 (201) 555-0183")
        assert out.returncode == 0, out.stderr
        p = phone(keys="#")
        record = await contract_request(client, sandbox, user)
        assert (record.outcome, record.user) == (Outcome.APPROVED, user)
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550183": 1}
        events = [e["event"] for e in await audit_entries(sandbox) if e.get("user") == user]
        assert events == ["user_set"]

    async def test_callmfa_verify_without_phone_calls_the_directory_number(
        self, sandbox: Sandbox, phone: PhoneFactory
    ) -> None:
        """`callmfa verify --user U` with no --phone: the number of `callmfa user set`."""
        user = f"dir-{uuid.uuid4().hex[:8]}"
        out = await asyncio.to_thread(_callmfa, sandbox, "user", "set", user,
                                      "--phone", "+12015550184")
        assert out.returncode == 0, out.stderr
        p = phone(keys="#")
        said = await asyncio.to_thread(_callmfa_env, sandbox, "verify", "--user", user,
                                       "--timeout", "30")
        assert f"calling the directory's number of {user}" in said, said
        assert "outcome: approved" in said, said
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550184": 1}

    async def test_an_ldap_user_is_called_at_the_mobile(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        p = phone(keys="#")
        record = await contract_request(client, sandbox, "LDAP-Alice")  # normalised first
        assert (record.outcome, record.user) == (Outcome.APPROVED, "ldap-alice")
        assert p.wait(20) == 0, p.errors()
        assert p.invites() == {"+12015550181": 1}

    @pytest.mark.parametrize("user", ["nobody-at-all", "ldap-nophone", "ldap-ali*"])
    async def test_an_unknown_user_is_rejected_uncalled(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory,
        tmp_path: Path, user: str,
    ) -> None:
        """No entry (or an LDAP filter injection that would have found ldap-alice):
        rejected/unknown_user, and no INVITE reaches the phone."""
        p = phone(keys="#")
        record = await contract_request(client, sandbox, user)
        assert (record.outcome, record.detail) == (Outcome.REJECTED, "unknown_user")
        assert p.received("INVITE") == 0

    async def test_a_present_but_malformed_phone_is_not_completed(
        self, sandbox: Sandbox, client: VerificationClient
    ) -> None:
        """ldap-alice is in the directory, but a request with a bad phone stays
        invalid_phone: the directory completes only a missing phone."""
        rid = await client.submit(user="ldap-alice", phone="12")
        record = await client.wait(rid, 20)
        assert record is not None
        assert (record.outcome, record.detail) == (Outcome.REJECTED, "invalid_phone")
