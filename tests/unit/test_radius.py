"""The RADIUS front without sockets or Redis: the clients file, the screening of packets
(BlastRADIUS), the outcome-to-reply mapping, retransmissions, number match and timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pyrad.packet import AccessAccept, AccessChallenge, AccessReject

from ivr.domain.directory import DirectoryEntry
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.exceptions import SettingsError
from ivr.fronts.radius import packets, replies
from ivr.fronts.radius.clients import ClientTable, RadiusClient, parse_clients
from ivr.fronts.radius.front import RadiusFront, match_code
from ivr.fronts.radius.metrics import RadiusMetrics
from ivr.settings import Settings
from ivr.testing import StaticDirectory, StaticPasswords, access_request

SECRET = b"nas-shared-secret-0123456789"
NAS = ("127.0.0.1", 40000)


class TestClientsFile:
    def test_lines_comments_and_options(self, tmp_path: Path) -> None:
        (tmp_path / "vpn.secret").write_text("from-a-file\n")
        table = parse_clients(
            "# the NAS clients\n"
            "\n"
            "127.0.0.1  file:vpn.secret  vpn   # the VPN\n"
            "10.20.0.0/24 plain-secret wifi require_message_authenticator=no\n"
            "2001:db8::/32 v6secret\n",
            base=tmp_path,
        )
        assert len(table) == 3
        vpn = table.find("127.0.0.1")
        assert vpn is not None
        assert vpn.secret == b"from-a-file"
        assert vpn.name == "vpn"
        assert vpn.require_message_authenticator
        wifi = table.find("10.20.0.77")
        assert wifi is not None
        assert wifi.name == "wifi"
        assert not wifi.require_message_authenticator
        v6 = table.find("2001:db8::5")
        assert v6 is not None
        assert v6.name == "2001:db8::/32"
        assert table.find("10.20.1.1") is None
        assert table.find("::ffff:127.0.0.1") is vpn  # a dual-stack socket's IPv4 peer
        assert table.find("not an address") is None

    def test_longest_prefix_wins(self) -> None:
        table = parse_clients("10.0.0.0/8 wide all\n10.1.2.3 narrow one\n")
        assert table.find("10.1.2.3").name == "one"  # type: ignore[union-attr]
        assert table.find("10.1.2.4").name == "all"  # type: ignore[union-attr]

    def test_secret_is_not_in_repr(self) -> None:
        client = RadiusClient(ipaddress.ip_network("127.0.0.1"), b"hush", "x")
        assert "hush" not in repr(client)

    @pytest.mark.parametrize(("text", "error"), [
        ("127.0.0.1\n", ":1: expected ADDRESS"),
        ("# fine\n10.0.0.300 s\n", ":2: '10.0.0.300' is not an address"),
        ("10.0.0.1/8 s\n", ":1: '10.0.0.1/8' is not an address or network"),  # host bits
        ("127.0.0.1 s a b\n", ":1: unexpected 'b'"),
        ("127.0.0.1 s require_message_authenticator=maybe\n", ":1: require_message_auth"),
        ("127.0.0.1 s colour=red\n", ":1: unknown option 'colour'"),
        ("127.0.0.1 file:/nonexistent/secret\n", ":1: cannot read the secret file"),
        ("127.0.0.1 s\n127.0.0.1/32 t\n", ":2: 127.0.0.1/32 is already listed on line 1"),
        ("# nothing\n", "no client is listed"),
        ("127.0.0.1 " + "x" * 129 + "\n", ":1: the secret is over 128 bytes"),
    ])
    def test_malformed_line_names_its_number(self, text: str, error: str) -> None:
        with pytest.raises(SettingsError, match="clients") as raised:
            parse_clients(text, source="clients")
        assert error in str(raised.value)

    def test_empty_secret_file_refused(self, tmp_path: Path) -> None:
        (tmp_path / "empty").write_text("\n")
        with pytest.raises(SettingsError, match=":1: the secret is empty"):
            parse_clients("127.0.0.1 file:empty\n", base=tmp_path)


class TestSettings:
    def test_defaults(self) -> None:
        s = Settings()
        assert (s.radius_host, s.radius_port, s.radius_reply_by_s) == ("127.0.0.1", 1812, 55.0)
        assert s.radius_password == "none"

    def test_role_radius(self) -> None:
        assert Settings(roles="radius").role_set == {"radius"}
        with pytest.raises(SettingsError, match="CALLMFA_ROLES"):
            Settings(roles="radius,ldap")

    @pytest.mark.parametrize(("env", "error"), [
        ({"CALLMFA_RADIUS_PASSWORD": "chap"}, "none, ldap or radius"),
        ({"CALLMFA_RADIUS_PASSWORD": "radius"}, "needs CALLMFA_RADIUS_UPSTREAM"),
        ({"CALLMFA_RADIUS_PASSWORD": "radius", "CALLMFA_RADIUS_UPSTREAM": "nps:x",
          "CALLMFA_RADIUS_UPSTREAM_SECRET": "s"}, "bad address"),
        ({"CALLMFA_RADIUS_REPLY_BY_S": "0"}, "at most 600"),
        ({"CALLMFA_ORG_NAME": "a\nb"}, "one line"),
    ])
    def test_bad_settings(self, env: dict[str, str], error: str) -> None:
        with pytest.raises(SettingsError, match=error):
            Settings.from_env(env)

    def test_upstream_secret_from_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "up").write_text("upstream-secret\n")
        s = Settings.from_env({"CALLMFA_RADIUS_PASSWORD": "radius",
                               "CALLMFA_RADIUS_UPSTREAM": "10.0.0.5",
                               "CALLMFA_RADIUS_UPSTREAM_SECRET_FILE": str(tmp_path / "up")})
        assert s.radius_upstream_address() == ("10.0.0.5", 1812)
        assert s.radius_upstream_secret == "upstream-secret"
        assert "upstream-secret" not in repr(s)


class TestReplies:
    @pytest.mark.parametrize("outcome", list(Outcome))
    def test_every_outcome_has_words_a_person_understands(self, outcome: Outcome) -> None:
        verdict = replies.for_outcome(OutcomeRecord(id="x", user="u", outcome=outcome))
        expected = (replies.Kind.ACCEPT if outcome in (Outcome.APPROVED, Outcome.BYPASSED)
                    else replies.Kind.REJECT)
        assert verdict.kind is expected
        assert verdict.reason == outcome.value
        assert verdict.message
        assert "_" not in verdict.message
        assert "CALLMFA" not in verdict.message
        assert len(verdict.message.encode()) <= 253

    def test_the_issue_s_examples(self) -> None:
        def message(o: Outcome) -> str | None:
            return replies.for_outcome(OutcomeRecord(id="x", user="u", outcome=o)).message
        assert message(Outcome.NO_ANSWER) == "The call was not answered"
        assert message(Outcome.FRAUD_REPORTED) == ("Sign-in reported as fraud: contact your "
                                                   "help desk")

    def test_no_outcome_is_not_answered_in_time(self) -> None:
        verdict = replies.for_outcome(None)
        assert verdict.kind is replies.Kind.REJECT
        assert verdict.reason == "timeout"
        assert verdict.message is not None
        assert "not answered in time" in verdict.message

    def test_throttled_says_when(self) -> None:
        record = OutcomeRecord(id="x", user="u", outcome=Outcome.THROTTLED, retry_after=125)
        assert replies.for_outcome(record).message == ("Too many sign-in calls: sign in again "
                                                       "in 3 minutes")

    def test_challenge_message(self) -> None:
        verdict = replies.challenge("Example Corp", "37", b"s" * 16)
        assert verdict.message == "Answer the call from Example Corp and key 37, then #"

    def test_match_codes_have_two_digits(self) -> None:
        codes = {match_code() for _ in range(2000)}
        assert all(len(c) == 2 and c.isdigit() and c[0] != "0" for c in codes)
        assert len(codes) > 80


def _client(require: bool = True) -> RadiusClient:
    return RadiusClient(ipaddress.ip_network("127.0.0.1"), SECRET, "vpn", require)


class TestScreen:
    """BlastRADIUS (CVE-2024-3596): what is dropped unanswered."""

    def setup_method(self) -> None:
        self.dict = packets.dictionary()

    def test_signed_request_passes(self) -> None:
        raw, _ = access_request(SECRET, "alice", password="pw")
        screened = packets.screen(raw, _client(), self.dict)
        assert not isinstance(screened, packets.Drop)
        assert packets.text(screened, "User-Name") == "alice"
        assert packets.password(screened) == "pw"

    def test_missing_message_authenticator(self) -> None:
        raw, _ = access_request(SECRET, "alice", message_authenticator=False)
        missing = packets.Drop.MISSING_MESSAGE_AUTHENTICATOR
        assert packets.screen(raw, _client(), self.dict) is missing
        assert not isinstance(packets.screen(raw, _client(require=False), self.dict),
                              packets.Drop)

    def test_wrong_secret(self) -> None:
        raw, _ = access_request(b"another secret", "alice")
        for require in (True, False):
            assert packets.screen(raw, _client(require), self.dict) is \
                packets.Drop.BAD_MESSAGE_AUTHENTICATOR

    def test_tampered_attribute(self) -> None:
        raw, _ = access_request(SECRET, "alice")
        tampered = raw.replace(b"alice", b"mallo")
        assert packets.screen(tampered, _client(), self.dict) is \
            packets.Drop.BAD_MESSAGE_AUTHENTICATOR

    def test_status_server_needs_message_authenticator_always(self) -> None:
        raw, _ = access_request(SECRET, "", status_server=True)
        assert not isinstance(packets.screen(raw, _client(False), self.dict), packets.Drop)
        stripped = raw[:20] + b""  # no attributes: no Message-Authenticator
        stripped = stripped[:2] + (20).to_bytes(2, "big") + stripped[4:20]
        assert packets.screen(stripped, _client(False), self.dict) is \
            packets.Drop.MISSING_MESSAGE_AUTHENTICATOR

    @pytest.mark.parametrize("data", [b"", b"\x01\x02", b"\x01\x01\x00\x30" + b"\x00" * 16,
                                      b"\x01\x01\x00\x17" + b"\x00" * 16 + b"\x01\x01\x00"])
    def test_malformed(self, data: bytes) -> None:
        assert packets.screen(data, _client(), self.dict) is packets.Drop.MALFORMED

    @pytest.mark.parametrize("length", [0, 1, 40])
    def test_an_attribute_that_does_not_fit_is_malformed(self, length: int) -> None:
        """The last attribute's length byte says 0, 1, or more than is left: pyrad had cut
        the value short and served the packet (from a client without Message-Authenticator,
        nothing else would notice)."""
        raw, _ = access_request(SECRET, "alice", message_authenticator=False)
        last = raw.rindex(b"test-nas") - 2  # NAS-Identifier, the last attribute
        bad = raw[:last + 1] + bytes([length]) + raw[last + 2:]
        assert packets.screen(bad, _client(require=False), self.dict) is packets.Drop.MALFORMED

    def test_eap_always_needs_a_message_authenticator(self) -> None:
        """RFC 3579 3.2, even from a client allowed to send Access-Requests without one."""
        _, nas = access_request(SECRET, "alice", message_authenticator=False)
        nas.AddAttribute("EAP-Message", b"\x02\x01\x00\x0a\x01alice")
        raw = nas.RequestPacket()
        assert packets.screen(raw, _client(require=False), self.dict) is \
            packets.Drop.MISSING_MESSAGE_AUTHENTICATOR

    def test_a_proxy_state_no_reply_could_carry_is_malformed(self) -> None:
        """The request fits in 4096 octets, but its reply (the same Proxy-State, a
        Message-Authenticator, a Reply-Message and a State) would not."""
        _, nas = access_request(SECRET, "alice", message_authenticator=False)
        for hop in range(16):
            nas.AddAttribute("Proxy-State", bytes([hop]) * 240)
        nas.add_message_authenticator()
        raw = nas.RequestPacket()
        assert len(raw) <= packets.MAX_PACKET_BYTES
        assert packets.screen(raw, _client(), self.dict) is packets.Drop.MALFORMED

    def test_accounting_is_not_served(self) -> None:
        raw, _ = access_request(SECRET, "alice")
        assert packets.screen(b"\x04" + raw[1:], _client(), self.dict) is \
            packets.Drop.UNSUPPORTED_CODE

    def test_reply_has_message_authenticator_first_and_verifies(self) -> None:
        raw, nas = access_request(SECRET, "alice")
        request = packets.screen(raw, _client(), self.dict)
        assert not isinstance(request, packets.Drop)
        encoded = packets.reply(request, AccessReject, message="No", state=b"x" * 16)
        assert encoded[20] == 80
        assert encoded[21] == 18
        answer = nas.CreateReply(packet=encoded)
        assert nas.VerifyReply(answer, encoded, enforce_ma=True)
        assert answer.code == AccessReject
        assert answer["Reply-Message"] == ["No"]

    def test_proxy_state_is_copied(self) -> None:
        raw, nas = access_request(SECRET, "alice", message_authenticator=False)
        nas.AddAttribute("Proxy-State", b"hop-1")
        nas.add_message_authenticator()
        raw = nas.RequestPacket()
        request = packets.screen(raw, _client(), self.dict)
        assert not isinstance(request, packets.Drop)
        encoded = packets.reply(request, AccessAccept)
        answer = nas.CreateReply(packet=encoded)
        assert nas.VerifyReply(answer, encoded, enforce_ma=True)
        assert answer["Proxy-State"] == [b"hop-1"]


class FakeVerifier:
    """The Redis contract: submissions recorded; outcomes set by the test."""

    def __init__(self, outcome: Outcome | None = Outcome.APPROVED) -> None:
        self.outcome = outcome
        self.submitted: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def submit(self, *, user: str, phone: str, mode: str = "standard", lang: str = "en",
                     expires_in_s: float | None = 120, context: Mapping[str, Any] | None = None,
                     request_id: str | None = None, match_number: str | None = None) -> str:
        assert request_id is not None
        self.submitted.append({"user": user, "phone": phone, "mode": mode, "lang": lang,
                               "id": request_id, "match_number": match_number,
                               "expires_in_s": expires_in_s, "context": context})
        return request_id

    async def wait(self, request_id: str, timeout_s: float, *,
                   user: str | None = None) -> OutcomeRecord | None:
        try:
            async with asyncio.timeout(timeout_s):
                await self.release.wait()
        except TimeoutError:
            return None
        if self.outcome is None:
            return None
        return OutcomeRecord(id=request_id, user=user, outcome=self.outcome)


class Nas:
    """The replies the front sent, as a NAS receives them."""

    def __init__(self) -> None:
        self.replies: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.append((data, addr))

    async def wait_for(self, count: int, timeout_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.replies) < count:
            assert time.monotonic() < deadline, f"{len(self.replies)} replies, not {count}"
            await asyncio.sleep(0.001)


ALICE = DirectoryEntry(user="alice", phone="+12015550100")
MATT = DirectoryEntry(user="matt", phone="+12015550101", mode="match", lang="fr")


def _front(verifier: FakeVerifier, *, password: str = "none", reply_by_s: float = 5,  # noqa: S107
           passwords: StaticPasswords | None = None,
           require: bool = True) -> tuple[RadiusFront, CollectorRegistry]:
    settings = dataclasses.replace(Settings(), radius_reply_by_s=reply_by_s,
                                   radius_password=password, org_name="Example Corp")
    registry = CollectorRegistry()
    front = RadiusFront(settings, ClientTable([_client(require)]), verifier,
                        StaticDirectory(ALICE, MATT), RadiusMetrics(registry),
                        passwords=passwords)
    return front, registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def _reply_to(front: RadiusFront, raw: bytes) -> bytes:
    """The one reply the front sends to ``raw`` from the NAS."""
    nas = Nas()
    front.datagram(raw, NAS, nas.send)
    await nas.wait_for(1)
    return nas.replies[0][0]


def _answer(nas_packet: Any, encoded: bytes) -> Any:
    answer = nas_packet.CreateReply(packet=encoded)
    assert nas_packet.VerifyReply(answer, encoded, enforce_ma=True)
    return answer


class TestFront:
    async def test_approved_is_accept(self) -> None:
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "Alice")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert _answer(packet, nas.replies[0][0]).code == AccessAccept
        assert nas.replies[0][1] == NAS
        [sub] = verifier.submitted
        assert (sub["user"], sub["phone"], sub["mode"]) == ("alice", "+12015550100", "standard")
        assert sub["expires_in_s"] == 5
        assert sub["context"] == {"front": "radius", "nas": "vpn"}
        assert _value(registry, "callmfa_radius_accepts_total") == 1
        assert _value(registry, "callmfa_radius_requests_total") == 1

    @pytest.mark.parametrize(("outcome", "words"), [
        (Outcome.NO_ANSWER, "The call was not answered"),
        (Outcome.BUSY, "busy"),
        (Outcome.NO_INPUT, "No key was pressed"),
        (Outcome.FRAUD_REPORTED, "reported as fraud"),
    ])
    async def test_other_outcomes_are_reject(self, outcome: Outcome, words: str) -> None:
        front, registry = _front(FakeVerifier(outcome))
        nas = Nas()
        raw, packet = access_request(SECRET, "alice")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        answer = _answer(packet, nas.replies[0][0])
        assert answer.code == AccessReject
        assert words in answer["Reply-Message"][0]
        assert _value(registry, "callmfa_radius_rejects_total", reason=outcome.value) == 1

    async def test_unknown_user_is_rejected_uncalled(self) -> None:
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "nobody")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert _answer(packet, nas.replies[0][0]).code == AccessReject
        assert verifier.submitted == []
        assert _value(registry, "callmfa_radius_rejects_total", reason="unknown_user") == 1

    async def test_invalid_user_name(self) -> None:
        verifier = FakeVerifier()
        front, _ = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "alice\u2028")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert _answer(packet, nas.replies[0][0]).code == AccessReject
        assert verifier.submitted == []

    async def test_retransmissions_join_then_come_from_the_cache(self) -> None:
        verifier = FakeVerifier()
        verifier.release.clear()  # the call is under way
        front, registry = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "alice")
        for _ in range(3):
            front.datagram(raw, NAS, nas.send)
            await asyncio.sleep(0)
        assert front.held == 1
        assert nas.replies == []
        verifier.release.set()
        await nas.wait_for(1)
        front.datagram(raw, NAS, nas.send)  # a copy of a finished request
        assert len(nas.replies) == 2
        assert nas.replies[0] == nas.replies[1]
        assert _answer(packet, nas.replies[1][0]).code == AccessAccept
        assert len(verifier.submitted) == 1
        assert _value(registry, "callmfa_radius_retransmissions_total", answer="joined") == 2
        assert _value(registry, "callmfa_radius_retransmissions_total", answer="cached") == 1
        assert _value(registry, "callmfa_radius_requests_total") == 1

    async def test_same_identifier_new_authenticator_is_a_new_request(self) -> None:
        verifier = FakeVerifier()
        front, _ = _front(verifier)
        nas = Nas()
        first, _ = access_request(SECRET, "alice", identifier=7)
        second, _ = access_request(SECRET, "alice", identifier=7)
        front.datagram(first, NAS, nas.send)
        await nas.wait_for(1)
        front.datagram(second, NAS, nas.send)
        await nas.wait_for(2)
        assert len(verifier.submitted) == 2

    async def test_another_port_is_another_request(self) -> None:
        verifier = FakeVerifier()
        verifier.release.clear()
        front, _ = _front(verifier)
        nas = Nas()
        raw, _ = access_request(SECRET, "alice")
        front.datagram(raw, NAS, nas.send)
        front.datagram(raw, (NAS[0], NAS[1] + 1), nas.send)
        await asyncio.sleep(0)
        verifier.release.set()
        await nas.wait_for(2)
        assert len(verifier.submitted) == 2

    async def test_not_answered_in_time(self) -> None:
        verifier = FakeVerifier()
        verifier.release.clear()  # no outcome ever
        front, registry = _front(verifier, reply_by_s=0.2)
        nas = Nas()
        raw, packet = access_request(SECRET, "alice")
        started = time.monotonic()
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert time.monotonic() - started < 1
        answer = _answer(packet, nas.replies[0][0])
        assert answer.code == AccessReject
        assert "not answered in time" in answer["Reply-Message"][0]
        assert _value(registry, "callmfa_radius_rejects_total", reason="timeout") == 1

    @pytest.mark.parametrize(("cause", "make"), [
        ("unknown_client", lambda: (access_request(SECRET, "alice")[0], ("10.9.9.9", 1))),
        ("missing_message_authenticator",
         lambda: (access_request(SECRET, "alice", message_authenticator=False)[0], NAS)),
        ("bad_message_authenticator", lambda: (access_request(b"wrong", "alice")[0], NAS)),
    ])
    async def test_refused_packets_get_no_reply_and_are_counted(self, cause: str,
                                                                make: Any) -> None:
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        nas = Nas()
        raw, source = make()
        front.datagram(raw, source, nas.send)
        await asyncio.sleep(0.01)
        assert nas.replies == []
        assert verifier.submitted == []
        assert front.held == 0
        assert _value(registry, "callmfa_radius_drops_total", cause=cause) == 1

    async def test_eap_is_rejected_uncalled(self) -> None:
        """callmfa does not speak EAP: the user was called and the NAS got an Accept it
        could not use; RFC 3579 2.6.2 asks for a Reject."""
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        _, packet = access_request(SECRET, "alice", message_authenticator=False)
        packet.AddAttribute("EAP-Message", b"\x02\x01\x00\x0a\x01alice")
        packet.add_message_authenticator()
        reply = await _reply_to(front, packet.RequestPacket())
        assert _answer(packet, reply).code == AccessReject
        assert verifier.submitted == []
        assert _value(registry, "callmfa_radius_rejects_total",
                      reason="eap_not_supported") == 1

    async def test_an_unexpected_failure_is_answered_and_counted(self) -> None:
        """An outcome the client cannot read (ValueError) ended the request's task: no
        reply, nothing counted, an unretrieved exception; now a Reject, unavailable."""
        verifier = FakeVerifier()

        async def unreadable(request_id: str, timeout_s: float, *,
                             user: str | None = None) -> OutcomeRecord | None:
            raise ValueError("'approved_v2' is not a valid Outcome")

        verifier.wait = unreadable  # type: ignore[method-assign]
        front, registry = _front(verifier)
        raw, packet = access_request(SECRET, "alice")
        assert _answer(packet, await _reply_to(front, raw)).code == AccessReject
        assert _value(registry, "callmfa_radius_rejects_total", reason="unavailable") == 1
        assert front.held == 0

    async def test_legacy_nas_without_message_authenticator(self) -> None:
        front, _ = _front(FakeVerifier(), require=False)
        nas = Nas()
        raw, packet = access_request(SECRET, "alice", message_authenticator=False)
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert _answer(packet, nas.replies[0][0]).code == AccessAccept

    async def test_status_server(self) -> None:
        front, registry = _front(FakeVerifier())
        nas = Nas()
        raw, packet = access_request(SECRET, "", status_server=True)
        front.datagram(raw, NAS, nas.send)
        assert _answer(packet, nas.replies[0][0]).code == AccessAccept
        assert _value(registry, "callmfa_radius_status_server_total") == 1


class TestPasswords:
    """CALLMFA_RADIUS_PASSWORD=ldap with a fake checker (the real one binds to LDAP)."""

    async def test_right_password_then_call(self) -> None:
        verifier, checker = FakeVerifier(), StaticPasswords(alice="secret")
        front, _ = _front(verifier, password="ldap", passwords=checker)
        nas = Nas()
        raw, packet = access_request(SECRET, "Alice", password="secret")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        assert _answer(packet, nas.replies[0][0]).code == AccessAccept
        assert checker.checked == ["alice"]  # LDAP gets the normal form
        assert len(verifier.submitted) == 1

    @pytest.mark.parametrize("password", ["wrong", None])
    async def test_wrong_or_no_password_rejected_before_any_call(
        self, password: str | None
    ) -> None:
        verifier = FakeVerifier()
        front, registry = _front(verifier, password="ldap",
                                 passwords=StaticPasswords(alice="secret"))
        nas = Nas()
        raw, packet = access_request(SECRET, "Alice", password=password)
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        answer = _answer(packet, nas.replies[0][0])
        assert answer.code == AccessReject
        assert answer["Reply-Message"] == ["Wrong user name or password"]
        assert verifier.submitted == []
        reason = "wrong_password" if password else "password_required"
        assert _value(registry, "callmfa_radius_rejects_total", reason=reason) == 1

    def test_a_mode_without_checker_is_refused(self) -> None:
        settings = dataclasses.replace(Settings(), radius_password="ldap")
        with pytest.raises(ValueError, match="needs a password checker"):
            RadiusFront(settings, ClientTable([_client()]), FakeVerifier(), StaticDirectory(),
                        RadiusMetrics(CollectorRegistry()))


class TestNumberMatch:
    async def test_challenges_are_capped_and_expire_in_order(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each challenge lives request_ttl_s: the table had no bound, and every datagram
        scanned all of it. Past the cap a new match sign-in is rejected, uncalled."""
        monkeypatch.setattr("ivr.fronts.radius.front.MAX_CHALLENGES", 2)
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        nas = Nas()
        sent = []
        for n in range(3):
            raw, packet = access_request(SECRET, "matt", identifier=n)
            sent.append(packet)
            front.datagram(raw, NAS, nas.send)
            await nas.wait_for(n + 1)
        codes = [_answer(p, data).code for p, (data, _) in zip(sent, nas.replies, strict=True)]
        assert codes == [AccessChallenge, AccessChallenge, AccessReject]
        assert len(verifier.submitted) == 2
        assert _value(registry, "callmfa_radius_rejects_total", reason="overloaded") == 1
        front._expire(time.monotonic() + front.settings.request_ttl_s + 1)
        assert front._challenges == {}

    async def test_challenge_then_outcome(self) -> None:
        verifier = FakeVerifier()
        front, registry = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "matt", password="x")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        challenge = _answer(packet, nas.replies[0][0])
        assert challenge.code == AccessChallenge
        [sub] = verifier.submitted  # the call is placed at once
        assert sub["mode"] == "match"
        assert sub["lang"] == "fr"
        code = sub["match_number"]
        assert challenge["Reply-Message"] == [
            f"Answer the call from Example Corp and key {code}, then #"]
        [state] = challenge["State"]
        response, packet2 = access_request(SECRET, "matt", password="anything", state=state)
        front.datagram(response, NAS, nas.send)
        await nas.wait_for(2)
        assert _answer(packet2, nas.replies[1][0]).code == AccessAccept
        assert len(verifier.submitted) == 1
        assert _value(registry, "callmfa_radius_challenges_total") == 1
        # A State is good for one response.
        again, packet3 = access_request(SECRET, "matt", state=state)
        front.datagram(again, NAS, nas.send)
        await nas.wait_for(3)
        answer = _answer(packet3, nas.replies[2][0])
        assert answer.code == AccessReject
        assert "expired" in answer["Reply-Message"][0]

    async def test_wrong_number_keyed_is_reject(self) -> None:
        verifier = FakeVerifier(Outcome.DENIED)
        front, _ = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "matt")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        [state] = _answer(packet, nas.replies[0][0])["State"]
        response, packet2 = access_request(SECRET, "matt", state=state)
        front.datagram(response, NAS, nas.send)
        await nas.wait_for(2)
        assert _answer(packet2, nas.replies[1][0]).code == AccessReject

    @pytest.mark.parametrize("who", ["alice", "forged"])
    async def test_state_of_another_user_or_unknown(self, who: str) -> None:
        verifier = FakeVerifier()
        front, _ = _front(verifier)
        nas = Nas()
        raw, packet = access_request(SECRET, "matt")
        front.datagram(raw, NAS, nas.send)
        await nas.wait_for(1)
        [state] = _answer(packet, nas.replies[0][0])["State"]
        user, state = ("alice", state) if who == "alice" else ("matt", b"f" * 16)
        response, packet2 = access_request(SECRET, user, state=state)
        front.datagram(response, NAS, nas.send)
        await nas.wait_for(2)
        assert _answer(packet2, nas.replies[1][0]).code == AccessReject


class TestWiring:
    def test_ldap_needs_the_ldap_source(self) -> None:
        from ivr.fronts.radius import passwords_for

        settings = dataclasses.replace(Settings(), radius_password="ldap")
        with pytest.raises(SettingsError, match="CALLMFA_LDAP_URL"):
            passwords_for(settings)

    def test_ldap_is_the_ldap_source_s_bind(self) -> None:
        from ivr.fronts.radius import passwords_for

        checker = StaticPasswords()
        settings = dataclasses.replace(Settings(), radius_password="ldap")
        assert passwords_for(settings, checker) is checker

    def test_none_checks_nothing_and_radius_asks_upstream(self) -> None:
        from ivr.fronts.radius import passwords_for

        assert passwords_for(Settings()) is None
        settings = Settings.from_env({"CALLMFA_RADIUS_PASSWORD": "radius",
                                      "CALLMFA_RADIUS_UPSTREAM": "10.0.0.5:1645",
                                      "CALLMFA_RADIUS_UPSTREAM_SECRET": "s"})
        checker = passwords_for(settings)
        assert "10.0.0.5:1645" in repr(checker)
        assert "secret=***" in repr(checker)
