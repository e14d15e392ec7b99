"""Tests for the bench's keys run: how a call is classified, and what it reads to do so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.keys import ServiceTrace, classify, key_report, keys_table, service_traces
from bench.load import CallResult
from bench.phone import BenchPhone, PhoneTimes

KEYED = PhoneTimes(invite_at=10.0, answered_at=10.01, key_at=11.0)


def call(outcome: str = "approved", *, rid: str = "r1", at: float | None = 11.005) -> CallResult:
    return CallResult("+12015550100", 9.99, outcome_at=at, ended_at=15.0, outcome=outcome,
                      rid=rid)


class TestClassify:
    @pytest.mark.parametrize(("trace", "expected"), [
        (ServiceTrace(early_keys=1), "before_ivr"),
        (ServiceTrace(early_keys=0, collections=[False]), "by_prompt"),
        (ServiceTrace(early_keys=0, collections=[True]), "drained"),
        (ServiceTrace(early_keys=0, collections=[True, False]), "lost"),  # a re-prompt
    ])
    def test_approved(self, trace: ServiceTrace, expected: str) -> None:
        """Approved with no collection (kept before the IVR), one that caught the '#', or
        one that timed out while the '#' was kept between two commands; a second
        collection means the first prompt missed the key."""
        assert classify(call(), KEYED, trace) == expected

    def test_other_outcome_with_a_key_sent_is_lost(self) -> None:
        """The phone sent its '#' and the call ended no_input: a lost key."""
        trace = ServiceTrace(early_keys=0, collections=[True, True, True])
        assert classify(call("no_input/timeout"), KEYED, trace) == "lost"
        assert classify(call("timeout"), KEYED, None) == "lost"  # no outcome at all

    def test_no_key_sent_is_not_a_lost_key(self) -> None:
        """A call that failed before the phone pressed anything is counted apart."""
        assert classify(call("no_answer"), PhoneTimes(invite_at=10.0), None) == "no_key_sent"
        assert classify(call("timeout"), None, None) == "no_key_sent"

    def test_machine(self) -> None:
        """AMD's MACHINE wins over keys by design: its own class, not a lost key."""
        assert classify(call("machine_answered"), KEYED, ServiceTrace()) == "machine"
        # Initial silence with a key kept: the key is dropped, a fresh '#' is asked for.
        silent = ServiceTrace(early_keys=1, amd="MACHINE", collections=[True, True, True])
        assert classify(call("no_input/timeout"), KEYED, silent) == "machine"
        assert classify(call(), KEYED, ServiceTrace(early_keys=0, amd="MACHINE",
                                                    collections=[False])) == "by_prompt"


class TestReport:
    def test_figures(self) -> None:
        """Counts by class, lost keys, key -> outcome and the drawn delays."""
        results = [call(rid="a"), call(rid="b", at=12.0), call("no_input/timeout", rid="c")]
        results[1].number, results[2].number = "+12015550101", "+12015550102"
        phone = {r.number: KEYED for r in results}
        traces = {"a": ServiceTrace(early_keys=1), "b": ServiceTrace(collections=[True]),
                  "c": ServiceTrace(collections=[True, True, True])}

        report = key_report(results, phone, traces)

        assert (report["lost_keys"], report["approved_first_prompt"]) == (1, 2)
        assert report["classes"] == {"before_ivr": 1, "drained": 1, "lost": 1}
        assert report["lost"][0]["rid"] == "c"
        assert report["key_to_outcome_ms_by_class"]["drained"]["p50"] == 1000.0
        assert report["key_delay_after_answer_ms"]["min"] == 990.0
        row = {"variant": "keys-amd-off", "keys": report}
        assert "keys-amd-off" in keys_table([row])


class TestInputs:
    def test_service_traces(self, tmp_path: Path) -> None:
        """From the service's JSON lines: early keys, AMD, each collection, the outcome."""
        log = tmp_path / "callmfa.log"
        lines = [
            {"event": "service_ready"},
            {"event": "ivr_started", "verification_id": "a", "early_keys": 0, "amd": "HUMAN"},
            {"event": "dtmf_collected", "verification_id": "a", "keys": 0, "timed_out": True},
            {"event": "outcome_published", "verification_id": "a", "outcome": "approved"},
            # callmfa-collect returned at once with the kept '#': drained too.
            {"event": "dtmf_collected", "verification_id": "b", "keys": 0, "timed_out": False,
             "kept": True},
            {"event": "dtmf_collected", "verification_id": "c", "keys": 0, "timed_out": False,
             "kept": False},
        ]
        log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json dtmf_collected\n")

        traces = service_traces(log, 0)

        assert traces == {
            "a": ServiceTrace(early_keys=0, amd="HUMAN", collections=[True], outcome="approved"),
            "b": ServiceTrace(collections=[True]),
            "c": ServiceTrace(collections=[False]),
        }

    def test_phone_times_from_the_trace(self, tmp_path: Path) -> None:
        """The INVITE, the phone's own 200 to it (the answer) and its INFO, by number."""
        sep = "----------------------------------------------- 2026-12-01 23:51:04.{}\n"
        msg = "UDP message {}:\n\n{}\nCall-ID: c1\nCSeq: {}\n\n"
        trace = "".join([
            sep.format("100000"), msg.format("received", "INVITE sip:+12015550100@x SIP/2.0",
                                             "1 INVITE"),
            sep.format("100500"), msg.format("sent", "SIP/2.0 180 Ringing", "1 INVITE"),
            sep.format("102000"), msg.format("sent", "SIP/2.0 200 OK", "1 INVITE"),
            sep.format("900000"), msg.format("sent", "INFO sip:x SIP/2.0", "1 INFO"),
            sep.format("901000"), msg.format("received", "SIP/2.0 200 OK", "1 INFO"),
        ])
        phone = BenchPhone(tmp_path, address="127.0.0.1:5070", calls=1, key_delay_ms=0,
                           trace=True)
        phone.trace_file.write_text(trace)

        times = phone.times()["+12015550100"]

        assert times.answered_at is not None
        assert times.key_at is not None
        assert round((times.key_at - times.answered_at) * 1000) == 798
