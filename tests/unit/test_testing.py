"""Tests for ivr.testing: the sipp scenarios of the simulated phone."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ivr.testing import PCAP_DIR, PhoneBehaviour, scenario_xml

BEHAVIOURS = {
    "default": PhoneBehaviour(),
    "zero_pound_info": PhoneBehaviour(keys="0#", dtmf="info"),
    "rfc4733": PhoneBehaviour(keys="0#*", dtmf="rfc4733"),
    "reject_486": PhoneBehaviour(reject_with=486),
    "ring_forever": PhoneBehaviour(ring_forever=True),
    "hangup_after_500": PhoneBehaviour(hangup_after_ms=500),
    "silent": PhoneBehaviour(keys=""),
    "answer_delay": PhoneBehaviour(answer_delay_ms=2000, keys="#"),
}


def parse(behaviour: PhoneBehaviour) -> ET.Element:
    """The scenario as an element tree (the DOCTYPE names sipp.dtd, which is not here)."""
    text = scenario_xml(behaviour)
    lines = text.splitlines(keepends=True)
    assert lines[1].startswith("<!DOCTYPE scenario")
    return ET.fromstring("".join(lines[:1] + lines[2:]))  # noqa: S314 - our own output


def messages(root: ET.Element) -> list[str]:
    """The start lines of the messages the phone sends, in order."""
    return [(send.text or "").strip().splitlines()[0] for send in root.iter("send")]


def steps(root: ET.Element) -> list[str]:
    """Top-level steps as 'tag:detail' strings."""
    out = []
    for el in root:
        if el.tag == "recv":
            out.append(f"recv:{el.get('request') or el.get('response')}")
        elif el.tag == "send":
            out.append(f"send:{(el.text or '').strip().splitlines()[0]}")
        else:
            out.append(el.tag)
    return out


class TestWellFormed:
    @pytest.mark.parametrize("behaviour", BEHAVIOURS.values(), ids=BEHAVIOURS.keys())
    def test_parses(self, behaviour: PhoneBehaviour) -> None:
        """Every scenario is well-formed XML with a <scenario> root."""
        root = parse(behaviour)

        assert root.tag == "scenario"
        assert root[0].tag == "recv"
        assert root[0].get("request") == "INVITE"

    @pytest.mark.parametrize("behaviour", BEHAVIOURS.values(), ids=BEHAVIOURS.keys())
    def test_every_variable_used(self, behaviour: PhoneBehaviour) -> None:
        """Every variable assigned is used elsewhere (sipp refuses unused variables)."""
        text = scenario_xml(behaviour)
        assigned = set(re.findall(r'assign_to="([^"]+)"', text))

        assert assigned == {"remote_from", "local_to", "inv_cseq"}
        for name in assigned:
            assert f"[${name}]" in text

    @pytest.mark.parametrize("behaviour", BEHAVIOURS.values(), ids=BEHAVIOURS.keys())
    def test_header(self, behaviour: PhoneBehaviour) -> None:
        """The scenario starts with the XML declaration and sipp's DOCTYPE."""
        lines = scenario_xml(behaviour).splitlines()

        assert lines[0].startswith("<?xml")
        assert lines[1] == '<!DOCTYPE scenario SYSTEM "sipp.dtd">'


class TestBehaviours:
    def test_default_answers_and_presses_pound(self) -> None:
        """By default the phone rings, answers with SDP, sends '#' by SIP INFO, awaits BYE
        (with no pause after the last key: a BYE during a pause fails a sipp call)."""
        root = parse(PhoneBehaviour())

        assert steps(root) == [
            "recv:INVITE",
            "send:SIP/2.0 180 Ringing",
            "send:SIP/2.0 200 OK",
            "recv:ACK",
            "pause",
            "send:INFO [next_url] SIP/2.0",
            "recv:200",
            "recv:BYE",
            "send:SIP/2.0 200 OK",
            "nop",
        ]
        info = [s.text or "" for s in root.iter("send") if "INFO" in (s.text or "")]
        assert "Signal=#" in info[0]
        assert "application/dtmf-relay" in info[0]

    def test_answer_has_sdp(self) -> None:
        """The 200 OK to the INVITE carries an SDP offering PCMU and telephone-event."""
        root = parse(PhoneBehaviour())
        ok = next(s.text or "" for s in root.iter("send") if "200 OK" in (s.text or ""))

        assert "Content-Type: application/sdp" in ok
        assert "a=rtpmap:101 telephone-event/8000" in ok

    def test_info_keys_in_order(self) -> None:
        """'0#' over SIP INFO sends two INFOs, '0' then '#', with rising CSeq."""
        root = parse(PhoneBehaviour(keys="0#", dtmf="info"))
        infos = [s.text or "" for s in root.iter("send") if "INFO [next_url]" in (s.text or "")]

        assert len(infos) == 2
        assert "Signal=0" in infos[0]
        assert "CSeq: 1 INFO" in infos[0]
        assert "Signal=#" in infos[1]
        assert "CSeq: 2 INFO" in infos[1]

    def test_keys_given_later_are_read_from_files_when_sent(self) -> None:
        """'??#': the first two INFOs carry the files sipp reads as it sends them
        (SippPhone.give_keys writes them); the '#' is fixed."""
        text = scenario_xml(PhoneBehaviour(keys="??#"))
        infos = [m.group(1) for m in re.finditer(r"Signal=(.*)\n", text)]
        assert infos == ['[file name="key1"]', '[file name="key2"]', "#"]
        with pytest.raises(ValueError, match="SIP INFO only"):
            PhoneBehaviour(keys="?#", dtmf="rfc4733")

    def test_rfc4733_plays_pcaps(self) -> None:
        """RFC 4733 keys play sipp's DTMF pcaps, '#' and '*' by name; no INFO is sent."""
        root = parse(PhoneBehaviour(keys="0#*", dtmf="rfc4733"))
        pcaps = [e.get("play_pcap_audio") for e in root.iter("exec")]

        assert pcaps == [
            str(PCAP_DIR / "dtmf_2833_0.pcap"),
            str(PCAP_DIR / "dtmf_2833_pound.pcap"),
            str(PCAP_DIR / "dtmf_2833_star.pcap"),
        ]
        assert not any(m.startswith("INFO") for m in messages(root))

    def test_reject(self) -> None:
        """reject_with answers the INVITE with that status and waits for the ACK only."""
        root = parse(PhoneBehaviour(reject_with=486))

        assert steps(root) == ["recv:INVITE", "send:SIP/2.0 486 Rejected", "recv:ACK", "nop"]

    def test_ring_forever(self) -> None:
        """ring_forever rings until CANCEL, then 200 to the CANCEL and 487 to the INVITE."""
        root = parse(PhoneBehaviour(ring_forever=True))

        assert steps(root) == [
            "recv:INVITE",
            "send:SIP/2.0 180 Ringing",
            "recv:CANCEL",
            "send:SIP/2.0 200 OK",
            "send:SIP/2.0 487 Request Terminated",
            "recv:ACK",
            "nop",
        ]

    def test_hangup_after(self) -> None:
        """hangup_after_ms pauses that long after the keys and sends BYE itself."""
        root = parse(PhoneBehaviour(hangup_after_ms=500))

        assert steps(root)[-4:] == ["pause", "send:BYE [next_url] SIP/2.0", "recv:200", "nop"]
        pauses = [p.get("milliseconds") for p in root.iter("pause")]
        assert pauses[-1] == "500"
        assert not any(el.get("request") == "BYE" for el in root.iter("recv"))

    def test_silent(self) -> None:
        """keys='' answers and presses nothing."""
        root = parse(PhoneBehaviour(keys=""))

        assert steps(root) == [
            "recv:INVITE",
            "send:SIP/2.0 180 Ringing",
            "send:SIP/2.0 200 OK",
            "recv:ACK",
            "recv:BYE",
            "send:SIP/2.0 200 OK",
            "nop",
        ]

    def test_answer_delay(self) -> None:
        """answer_delay_ms pauses between 180 Ringing and 200 OK."""
        root = parse(PhoneBehaviour(answer_delay_ms=2000))

        assert steps(root)[1:4] == ["send:SIP/2.0 180 Ringing", "pause", "send:SIP/2.0 200 OK"]
        assert next(root.iter("pause")).get("milliseconds") == "2000"


    def test_random_key_delay(self) -> None:
        """key_delay_max_ms: sipp draws the wait before the keys for each call, uniform."""
        root = parse(PhoneBehaviour(key_delay_ms=0, key_delay_max_ms=3000))

        pause = next(root.iter("pause"))
        assert (pause.get("distribution"), pause.get("min"), pause.get("max")) == \
            ("uniform", "0", "3000")
        assert pause.get("milliseconds") is None

    def test_keys_over_speech(self) -> None:
        """keys_over_speech: the speech streams while the phone waits for its keys (the
        wait starts at the answer, not at the speech's end)."""
        b = PhoneBehaviour(speech="Hello.", keys_over_speech=True, key_delay_ms=700)
        text = scenario_xml(b, speech_file=Path("/tmp/speech.wav"), speech_ms=600)  # noqa: S108
        root = ET.fromstring("".join(text.splitlines(keepends=True)[2:]))  # noqa: S314

        assert steps(root)[4:7] == ["nop", "pause", "send:INFO [next_url] SIP/2.0"]
        assert [p.get("milliseconds") for p in root.iter("pause")] == ["700"]
        with_end = scenario_xml(PhoneBehaviour(speech="Hello.", key_delay_ms=700),
                                speech_file=Path("/tmp/speech.wav"), speech_ms=600)  # noqa: S108
        assert '<pause milliseconds="600"/>\n  <pause milliseconds="700"/>' in with_end


class TestPhoneBehaviour:
    def test_key_delay_bounds(self) -> None:
        """A random wait's upper bound below its lower bound is refused."""
        with pytest.raises(ValueError, match="key_delay_max_ms"):
            PhoneBehaviour(key_delay_ms=1000, key_delay_max_ms=999)

    @pytest.mark.parametrize("keys", ["a", "1a", " ", "#\n", "0#;"])
    def test_bad_keys(self, keys: str) -> None:
        """Keys other than 0-9, * and # are refused."""
        with pytest.raises(ValueError, match="keys may hold"):
            PhoneBehaviour(keys=keys)

    @pytest.mark.parametrize("keys", ["", "#", "0#", "0123456789*#"])
    def test_good_keys(self, keys: str) -> None:
        """DTMF digits, '*' and '#' are accepted."""
        assert PhoneBehaviour(keys=keys).keys == keys
