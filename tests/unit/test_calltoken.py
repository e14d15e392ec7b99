"""The per-call AGI token and how an IVR driver reads it from the channel probe."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ivr.call import CallContext
from ivr.domain.calltoken import new_token, token_hash, token_matches
from ivr.settings import Settings


class TestToken:
    def test_tokens_are_192_random_bits_in_hex(self) -> None:
        tokens = {new_token() for _ in range(1000)}
        assert len(tokens) == 1000
        assert all(re.fullmatch(r"[0-9a-f]{48}", t) for t in tokens)

    def test_only_the_token_matches_its_hash(self) -> None:
        token = new_token()
        stored = token_hash(token)
        assert token not in stored
        assert token_matches(token, stored)
        assert not token_matches(new_token(), stored)
        assert not token_matches(token.upper(), stored)
        assert not token_matches("", stored)
        assert not token_matches(token, "")

    @given(st.text(), st.text())
    def test_any_input_is_a_plain_no(self, token: str, stored: str) -> None:
        """Whatever a forger sends (or a damaged marker holds), the answer is a bool."""
        assert token_matches(token, stored) is (bool(token) and token_hash(token) == stored)


class TestProbe:
    def marker(self, **fields: str) -> dict[str, str]:
        return {"user": "alice", "mode": "standard", "lang": "en", **fields}

    def test_the_probe_asks_for_the_token_first(self) -> None:
        call = CallContext.from_marker("id", self.marker(), 0.0)
        assert call.channel_probe(Settings()) == (
            "${CALLMFA_TOKEN}|${AMDSTATUS}|${AMDCAUSE}|${CALLMFA_EARLY_KEYS}|"
            "|${CALLMFA_COLLECT}"
        )

    def test_the_collect_subroutine_is_used_where_the_dialplan_has_it(self) -> None:
        call = CallContext.from_marker("id", self.marker(), 0.0)
        call.apply_channel_probe("tok|HUMAN||5#|01|1")
        assert (call.early_keys, call.collect_sub, call.collect_seen) == ("5#", True, 2)
        call.apply_channel_probe("tok|HUMAN||5#|01")  # a dialplan from before the subroutine
        assert call.collect_seen is None

    def test_secret_modes_never_collect_in_the_subroutine(self) -> None:
        for mode in ("pin", "match"):
            call = CallContext.from_marker("id", self.marker(mode=mode), 0.0)
            call.apply_channel_probe("tok|HUMAN|||1")
            assert call.collect_seen is None

    def test_token_amd_and_keys_are_read_from_one_answer(self) -> None:
        token = new_token()
        call = CallContext.from_marker("id", self.marker(token_hash=token_hash(token)), 0.0)
        call.apply_channel_probe(f"{token}|HUMAN||#|")
        assert call.token_proven
        assert (call.amd_status, call.early_keys) == ("HUMAN", "#")

    def test_a_marker_without_a_token_proves_nothing(self) -> None:
        call = CallContext.from_marker("id", self.marker(), 0.0)
        call.apply_channel_probe("|HUMAN|||")
        assert not call.token_proven

    def test_the_token_is_not_in_the_repr(self) -> None:
        token = new_token()
        call = CallContext.from_marker("id", self.marker(token_hash=token_hash(token)), 0.0)
        call.apply_channel_probe(f"{token}|HUMAN|||")
        assert token not in repr(call)
        assert token_hash(token) not in repr(call)
