"""Tests for ivr.domain.signing: the canonical form, the signature and its verification."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.domain.outcome import Outcome, OutcomeRecord, parse_iso
from ivr.domain.signing import canonical, signed_json, verified
from ivr.exceptions import OutcomeSignatureError

KEY = b"test-signing-key"
# The test vector of docs/contract.md (checked there with openssl dgst -hmac as well).
VECTOR_CANONICAL = (
    '{"answered_at":"2026-11-28T09:00:03.870Z","call_started_at":"2026-11-28T09:00:00.121Z",'
    '"detail":null,"finished_at":"2026-11-28T09:00:06.413Z","hangup_cause":null,'
    '"id":"0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11","input_at":"2026-11-28T09:00:06.412Z",'
    '"outcome":"approved","requested_at":"2026-11-28T09:00:00.120Z","retry_after":null,'
    '"user":"alice@example.com"}'
)
VECTOR_SIG = "6db231e15d515a88ac02b8ccfbabe7225439ac57662468fedd4756874d9b68f9"


def _vector_record() -> OutcomeRecord:
    return OutcomeRecord(
        id="0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11", user="alice@example.com",
        outcome=Outcome.APPROVED, requested_at=parse_iso("2026-11-28T09:00:00.120Z"),
        call_started_at=parse_iso("2026-11-28T09:00:00.121Z"),
        answered_at=parse_iso("2026-11-28T09:00:03.870Z"),
        input_at=parse_iso("2026-11-28T09:00:06.412Z"),
        finished_at=parse_iso("2026-11-28T09:00:06.413Z"),
    )


class TestVector:
    def test_canonical_form(self) -> None:
        """Sorted keys, no whitespace, nulls kept: byte for byte the documented form."""
        assert canonical(_vector_record().to_wire()).decode() == VECTOR_CANONICAL

    def test_signature(self) -> None:
        """The documented signature, and it is plain HMAC-SHA256 over the canonical bytes."""
        wire = json.loads(signed_json(KEY, _vector_record()))
        assert wire["sig"] == VECTOR_SIG
        assert hmac.new(KEY, VECTOR_CANONICAL.encode(), hashlib.sha256).hexdigest() == VECTOR_SIG

    def test_sig_is_the_last_member(self) -> None:
        """Cutting ',"sig":"..."' out of the stored bytes gives the canonical form."""
        wire = signed_json(KEY, _vector_record())
        assert wire == VECTOR_CANONICAL[:-1] + f',"sig":"{VECTOR_SIG}"}}'


records = st.builds(
    OutcomeRecord,
    id=st.uuids().map(str),
    user=st.one_of(st.none(), st.text(max_size=40)),
    outcome=st.sampled_from(Outcome),
    detail=st.one_of(st.none(), st.text(max_size=20)),
    hangup_cause=st.one_of(st.none(), st.integers(0, 127)),
    retry_after=st.one_of(st.none(), st.integers(1, 3600)),
)


class TestVerify:
    @given(records)
    def test_round_trip(self, record: OutcomeRecord) -> None:
        """Any signed record, including non-ASCII and control characters, verifies."""
        assert verified(KEY, signed_json(KEY, record)) == record

    @given(records)
    def test_reordered_or_reformatted_json_still_verifies(self, record: OutcomeRecord) -> None:
        """Verification rebuilds the canonical form: key order and spacing do not matter."""
        data = json.loads(signed_json(KEY, record))
        assert verified(KEY, json.dumps(dict(reversed(data.items())), indent=2)) == record

    @pytest.mark.parametrize(("field", "value"), [
        ("outcome", "approved"), ("user", "mallory"), ("detail", "x"), ("retry_after", 1),
    ])
    def test_tampered_outcome_is_refused(self, field: str, value: object) -> None:
        """Changing any field breaks the signature."""
        record = OutcomeRecord(id="r", user="alice", outcome=Outcome.FRAUD_REPORTED)
        data = json.loads(signed_json(KEY, record))
        data[field] = value
        with pytest.raises(OutcomeSignatureError, match="mismatch"):
            verified(KEY, json.dumps(data))

    def test_unsigned_outcome_is_refused(self) -> None:
        """An outcome without sig is refused when a key is expected."""
        record = OutcomeRecord(id="r", user="alice", outcome=Outcome.APPROVED)
        with pytest.raises(OutcomeSignatureError, match="unsigned"):
            verified(KEY, record.to_json())

    def test_wrong_key_is_refused(self) -> None:
        """A signature made with another key does not verify."""
        record = OutcomeRecord(id="r", user="alice", outcome=Outcome.APPROVED)
        with pytest.raises(OutcomeSignatureError):
            verified(b"other", signed_json(KEY, record))

    @pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"sig":"00","outcome":"nope"}'])
    def test_garbage_is_refused_not_crashed(self, raw: bytes) -> None:
        """Whatever is stored, verification raises OutcomeSignatureError, nothing else."""
        with pytest.raises(OutcomeSignatureError):
            verified(KEY, raw)
