"""Tests for ivr.domain.outcome: outcome values, the wire record, the AMI mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.domain.outcome import (
    REASON_BUSY,
    REASON_CONGESTION,
    REASON_HANGUP,
    REASON_RING_TIMEOUT,
    Outcome,
    OutcomeRecord,
    failed_call_outcome,
    iso,
    parse_iso,
)

RID = "0b6d1e2a-1234-4abc-8def-0123456789ab"
CONTRACT_KEYS = {
    "id",
    "user",
    "outcome",
    "detail",
    "hangup_cause",
    "requested_at",
    "call_started_at",
    "answered_at",
    "input_at",
    "finished_at",
    "retry_after",
}
TIME_KEYS = ("requested_at", "call_started_at", "answered_at", "input_at", "finished_at")


class TestOutcome:
    def test_wire_values(self) -> None:
        """The outcome values are the contract's lower-case words."""
        assert {o.value for o in Outcome} == {
            "approved",
            "delivered",
            "fraud_reported",
            "denied",
            "locked_out",
            "machine_answered",
            "no_input",
            "hung_up",
            "no_answer",
            "busy",
            "unreachable",
            "rejected",
            "expired",
            "error",
            "throttled",
            "blocked",
            "bypassed",
        }

    def test_is_a_string(self) -> None:
        """Outcome members compare equal to their wire strings."""
        assert Outcome.APPROVED == "approved"
        assert Outcome("busy") is Outcome.BUSY


class TestFailedCallOutcome:
    @pytest.mark.parametrize(
        ("reason", "cause", "outcome"),
        [
            (0, 17, Outcome.BUSY),
            (0, 21, Outcome.BUSY),
            (REASON_BUSY, None, Outcome.BUSY),
            (REASON_RING_TIMEOUT, 19, Outcome.NO_ANSWER),
            (REASON_RING_TIMEOUT, None, Outcome.NO_ANSWER),
            (0, 18, Outcome.NO_ANSWER),
            (0, 19, Outcome.NO_ANSWER),
            (0, 34, Outcome.UNREACHABLE),
            (0, 1, Outcome.UNREACHABLE),
            (0, 27, Outcome.UNREACHABLE),
            (0, None, Outcome.UNREACHABLE),
            (REASON_CONGESTION, None, Outcome.UNREACHABLE),
            (REASON_HANGUP, None, Outcome.UNREACHABLE),
            (None, None, Outcome.UNREACHABLE),
        ],
    )
    def test_outcome(self, reason: int | None, cause: int | None, outcome: Outcome) -> None:
        """Reason and hang-up cause map to busy, no_answer or unreachable."""
        assert failed_call_outcome(reason, cause)[0] is outcome

    @pytest.mark.parametrize(
        ("reason", "cause", "detail"),
        [
            (0, 17, "user_busy"),
            (REASON_BUSY, None, "user_busy"),
            (REASON_RING_TIMEOUT, 19, "no_answer"),
            (REASON_RING_TIMEOUT, None, "no_answer"),
            (0, 18, "no_user_response"),
            (0, None, "no_cause"),
            (0, 0, "no_cause"),
            (REASON_CONGESTION, None, "congestion"),
        ],
    )
    def test_detail(self, reason: int | None, cause: int | None, detail: str) -> None:
        """Busy and no-answer details name the cause; no information is no_cause."""
        assert failed_call_outcome(reason, cause)[1] == detail

    def test_cause_beats_reason(self) -> None:
        """A busy cause wins over a ring-timeout Reason (Asterisk 22 reports 486 as Reason 0)."""
        assert failed_call_outcome(REASON_RING_TIMEOUT, 17)[0] is Outcome.BUSY
        assert failed_call_outcome(REASON_BUSY, 19)[0] is Outcome.NO_ANSWER

    @given(
        reason=st.one_of(st.none(), st.integers(min_value=0, max_value=10)),
        cause=st.one_of(st.none(), st.integers(min_value=0, max_value=127)),
    )
    def test_always_a_failure_with_a_detail(self, reason: int | None, cause: int | None) -> None:
        """Every combination maps to busy, no_answer or unreachable with a one-word detail."""
        outcome, detail = failed_call_outcome(reason, cause)

        assert outcome in {Outcome.BUSY, Outcome.NO_ANSWER, Outcome.UNREACHABLE}
        assert detail
        assert detail.replace("_", "").isalnum()


class TestIso:
    def test_milliseconds_and_z(self) -> None:
        """Epoch seconds become UTC ISO 8601 with milliseconds and a Z."""
        ts = datetime(2026, 11, 28, 1, 5, 40, 997_000, tzinfo=UTC).timestamp()

        assert iso(ts) == "2026-11-28T01:05:40.997Z"

    def test_whole_seconds_keep_milliseconds(self) -> None:
        """Whole seconds are written with .000."""
        assert iso(0.0) == "1970-01-01T00:00:00.000Z"

    def test_none(self) -> None:
        """No time is None."""
        assert iso(None) is None

    @given(st.floats(min_value=-2e9, max_value=4.1e9, allow_nan=False))
    def test_as_datetime_writes_it(self, ts: float) -> None:
        """The same text as datetime's isoformat, to the millisecond, for any time."""
        expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")

        assert iso(ts) == expected.replace("+00:00", "Z")

    @pytest.mark.parametrize("ts", [0.9999995, 1.0000005, 1764709200.9999996, -0.0005, -1.5])
    def test_rounding_at_the_edges(self, ts: float) -> None:
        """Microseconds round half to even, carrying into the second, before the cut."""
        expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")

        assert iso(ts) == expected.replace("+00:00", "Z")

    @pytest.mark.parametrize(
        "text",
        ["2026-11-28T01:05:40.997Z", "2026-11-28T01:05:40.997z", "2026-11-28T02:05:40.997+01:00"],
    )
    def test_parse(self, text: str) -> None:
        """Z, z and offsets are understood."""
        expected = datetime(2026, 11, 28, 1, 5, 40, 997_000, tzinfo=UTC).timestamp()

        assert parse_iso(text) == expected

    def test_parse_refuses_naive(self) -> None:
        """A time without a zone is refused."""
        with pytest.raises(ValueError, match="no time zone"):
            parse_iso("2026-11-28T01:05:40")


# Times with millisecond precision, between 1970 and 2100.
millis = st.integers(min_value=0, max_value=4_102_444_800_000).map(lambda ms: ms / 1000)
optional_millis = st.one_of(st.none(), millis)

records = st.builds(
    OutcomeRecord,
    id=st.just(RID),
    user=st.one_of(st.none(), st.text()),
    outcome=st.sampled_from(Outcome),
    detail=st.one_of(st.none(), st.text()),
    hangup_cause=st.one_of(st.none(), st.integers(min_value=0, max_value=127)),
    requested_at=optional_millis,
    call_started_at=optional_millis,
    answered_at=optional_millis,
    input_at=optional_millis,
    finished_at=optional_millis,
)


class TestOutcomeRecord:
    def test_minimal_to_json(self) -> None:
        """Unset fields are null; every contract key is present."""
        record = OutcomeRecord(id=RID, user=None, outcome=Outcome.REJECTED)

        data = json.loads(record.to_json())

        assert data == {
            "id": RID,
            "user": None,
            "outcome": "rejected",
            "detail": None,
            "hangup_cause": None,
            "requested_at": None,
            "call_started_at": None,
            "answered_at": None,
            "input_at": None,
            "finished_at": None,
            "retry_after": None,
        }

    def test_full_to_json(self) -> None:
        """Times are ISO strings with milliseconds and Z; other fields as given."""
        record = OutcomeRecord(
            id=RID,
            user="alice",
            outcome=Outcome.APPROVED,
            detail=None,
            hangup_cause=16,
            requested_at=1.5,
            call_started_at=2.25,
            answered_at=3.0,
            input_at=4.125,
            finished_at=5.999,
        )

        data = json.loads(record.to_json())

        assert set(data) == CONTRACT_KEYS
        assert data["outcome"] == "approved"
        assert data["user"] == "alice"
        assert data["hangup_cause"] == 16
        assert [data[k] for k in TIME_KEYS] == [
            "1970-01-01T00:00:01.500Z",
            "1970-01-01T00:00:02.250Z",
            "1970-01-01T00:00:03.000Z",
            "1970-01-01T00:00:04.125Z",
            "1970-01-01T00:00:05.999Z",
        ]

    def test_compact_and_unicode(self) -> None:
        """The JSON is compact and keeps non-ASCII text as is."""
        text = OutcomeRecord(id=RID, user="zoë", outcome=Outcome.BUSY).to_json()

        assert ", " not in text
        assert ": " not in text
        assert '"user":"zoë"' in text

    def test_from_json_bytes(self) -> None:
        """from_json reads bytes as the client gets them from Redis."""
        record = OutcomeRecord(id=RID, user="alice", outcome=Outcome.HUNG_UP, finished_at=10.0)

        assert OutcomeRecord.from_json(record.to_json().encode()) == record

    def test_from_json_ignores_unknown_keys(self) -> None:
        """Keys added to the contract later do not break older clients."""
        text = json.dumps({"id": RID, "user": None, "outcome": "expired", "new_key": 1})

        record = OutcomeRecord.from_json(text)

        assert record == OutcomeRecord(id=RID, user=None, outcome=Outcome.EXPIRED)

    def test_from_json_outcome_is_enum(self) -> None:
        """The outcome is parsed back into the Outcome enum."""
        text = OutcomeRecord(id=RID, user=None, outcome=Outcome.NO_INPUT).to_json()

        assert OutcomeRecord.from_json(text).outcome is Outcome.NO_INPUT

    @given(record=records)
    def test_round_trip(self, record: OutcomeRecord) -> None:
        """to_json then from_json gives the same record, for millisecond-precision times."""
        text = record.to_json()
        data = json.loads(text)

        assert set(data) == CONTRACT_KEYS
        for key in TIME_KEYS:
            value = data[key]
            assert (value is None) == (getattr(record, key) is None)
            assert value is None or value.endswith("Z")
        assert OutcomeRecord.from_json(text) == record
