"""Tests for ivr.domain.signing: the canonical form, the signature and its verification."""

from __future__ import annotations

import contextlib
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

    def test_while_rotating_the_previous_key_verifies_too(self) -> None:
        """verified((new, old), ...) takes an outcome signed with either, and no other."""
        record = OutcomeRecord(id="r", user="alice", outcome=Outcome.APPROVED)
        new, old = b"new-" + KEY, KEY
        for signer in (new, old):
            assert verified((new, old), signed_json(signer, record)) == record
        with pytest.raises(OutcomeSignatureError, match="mismatch"):
            verified((new, old), signed_json(b"third-" + KEY, record))
        with pytest.raises(OutcomeSignatureError, match="mismatch"):
            verified(new, signed_json(old, record))

    @pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"sig":"00","outcome":"nope"}'])
    def test_garbage_is_refused_not_crashed(self, raw: bytes) -> None:
        """Whatever is stored, verification raises OutcomeSignatureError, nothing else."""
        with pytest.raises(OutcomeSignatureError):
            verified(KEY, raw)


class TestHostileInput:
    """What a forger can put on callmfa:results or in a result key: always a refusal."""

    def signed_data(self) -> dict[str, object]:
        return json.loads(signed_json(KEY, _vector_record()))  # type: ignore[no-any-return]

    @pytest.mark.parametrize("sig", ["é" * 64, VECTOR_SIG.upper(), VECTOR_SIG[:-1], 7, None])
    def test_a_sig_that_is_not_64_lower_case_hex_is_refused(self, sig: object) -> None:
        data = self.signed_data()
        data["sig"] = sig
        with pytest.raises(OutcomeSignatureError):
            verified(KEY, json.dumps(data))

    def test_a_signed_unknown_outcome_value_is_refused(self) -> None:
        data = self.signed_data()
        data["outcome"] = "approved_twice"
        data["sig"] = hmac.new(KEY, canonical(data), hashlib.sha256).hexdigest()
        with pytest.raises(OutcomeSignatureError, match="malformed"):
            verified(KEY, json.dumps(data))

    @given(st.dictionaries(st.text(max_size=12), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3),
        max_leaves=6), max_size=8))
    def test_any_json_object_is_refused_or_verified(self, data: dict[str, object]) -> None:
        with contextlib.suppress(OutcomeSignatureError):
            verified(KEY, json.dumps(data))


class TestBinding:
    record = _vector_record()
    rid = "0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a11"

    def test_the_request_it_answers(self) -> None:
        assert self.record.mismatch(self.rid) is None
        assert self.record.mismatch(self.rid.upper(), user="alice@example.com",
                                    submitted_at=self.record.requested_at) is None

    def test_another_id_user_or_an_older_outcome_is_refused(self) -> None:
        assert "id" in (self.record.mismatch("0b6d2c44-3e4f-4a8e-9d7c-2f7f1c0e5a12") or "")
        assert "user" in (self.record.mismatch(self.rid, user="bob") or "")
        assert self.record.requested_at is not None
        later = self.record.requested_at + 1
        assert "older" in (self.record.mismatch(self.rid, submitted_at=later) or "")

    def test_a_rejected_outcome_may_have_no_user(self) -> None:
        """A request that could not be read has no user in its outcome."""
        rejected = OutcomeRecord(id=self.rid, user=None, outcome=Outcome.REJECTED,
                                 requested_at=self.record.requested_at)
        assert rejected.mismatch(self.rid, user="alice@example.com") is None
        approved = OutcomeRecord(id=self.rid, user=None, outcome=Outcome.APPROVED)
        assert approved.mismatch(self.rid, user="alice@example.com") is not None
