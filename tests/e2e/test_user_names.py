"""User names normalised through the real chain (issue 12): one user, whatever its case.

The attack: alice is blocked, so the attacker signs in as Alice. Blocks (and every other
per-user key) are keyed by the normalised name, so the request ends blocked, uncalled.
"""

from __future__ import annotations

import uuid

from ivr.client import VerificationClient
from ivr.domain.outcome import Outcome, OutcomeRecord

from ..conftest import Sandbox
from .conftest import PhoneFactory
from .test_modes import _callmfa

PHONE = "+12015550100"


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


async def _verify(client: VerificationClient, user: str) -> OutcomeRecord:
    record = await client.verify(user=user, phone=PHONE, timeout_s=40)
    assert record is not None, "no outcome within 40 s"
    return record


class TestOneUserWhateverTheCase:
    async def test_a_block_holds_for_every_spelling(
        self, sandbox: Sandbox, client: VerificationClient, phone: PhoneFactory
    ) -> None:
        """`callmfa block NORM-X`, then requests for norm-x, NORM-X and a fullwidth spelling
        all end blocked, as norm-x, with no INVITE; unblocking Norm-X lets the next call
        through, and its outcome names the normalised user."""
        user = f"norm-{uuid.uuid4().hex[:8]}"
        blocked = _callmfa(sandbox, "block", user.upper(), "--for", "1h", "--reason", "test")
        assert blocked.returncode == 0, blocked.stderr
        assert blocked.stdout.startswith(f"blocked {user} ")
        p = phone(keys="#")

        for spelling in (user, user.upper(), _fullwidth(user)):
            record = await _verify(client, spelling)
            assert (record.outcome, record.user) == (Outcome.BLOCKED, user), spelling
        assert p.received("INVITE") == 0

        unblocked = _callmfa(sandbox, "unblock", user.title())
        assert unblocked.returncode == 0, unblocked.stderr
        record = await _verify(client, _fullwidth(user.upper()))
        assert (record.outcome, record.user) == (Outcome.APPROVED, user)
        assert p.wait(20) == 0, p.errors()

    async def test_line_separator_is_refused(
        self, sandbox: Sandbox, client: VerificationClient
    ) -> None:
        """U+2028 in a user: the request is rejected/invalid_user and the command refuses it
        with the reason, exit 2."""
        record = await _verify(client, "alice\u2028")
        assert (record.outcome, record.detail) == (Outcome.REJECTED, "invalid_user")
        out = _callmfa(sandbox, "block", "alice\u2028")
        assert out.returncode == 2
        assert "U+2028" in out.stderr
