"""Tests for ivr.transport.ami's lazy event parser (no network: a fake transport)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.transport.ami import EventCounts, _header, _Protocol

OURS, OTHER = "1700000000.0001-ours", "1700000000.0002-other"


def event(name: str, **headers: str) -> bytes:
    """One AMI event as Asterisk 22 writes it (headers of a channel event abridged)."""
    lines = [f"Event: {name}", "Privilege: call,all"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def channel(name: str, uniqueid: str, **headers: str) -> bytes:
    """A Newstate or Hangup with the headers every channel snapshot has."""
    return event(name, Channel="PJSIP/callmfa-phone-00000001", CallerIDNum="+12015550100",
                 CallerIDName="<unknown>", Context="callmfa-verify", Exten="s", Priority="1",
                 Uniqueid=uniqueid, Linkedid=uniqueid, **headers)


class FakeTransport:
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class Factory:
    """What the protocol calls on its manager: the events panoramisk would dispatch."""

    def __init__(self) -> None:
        self.dispatched: list[Any] = []
        self.forgetable_actions = ("ping", "login")
        self.awaiting_actions: list[Any] = []

    def dispatch(self, message: Any) -> None:
        self.dispatched.append(message)

    def connection_lost(self, exc: object) -> None:
        pass


class Seen:
    """The channel events the client was handed, and which of them it watched."""

    def __init__(self, watched: set[str]) -> None:
        self.watched = watched
        self.calls: list[tuple[bytes, bytes | None]] = []

    def __call__(self, name: bytes, raw: bytes) -> bool:
        assert name in (b"Newstate", b"Hangup")
        uniqueid = _header(raw, b"Uniqueid")
        self.calls.append((name, uniqueid))
        return uniqueid is not None and uniqueid.decode() in self.watched


def protocol(watched: set[str]) -> tuple[_Protocol, EventCounts, Seen, Factory]:
    counts, seen, factory = EventCounts(), Seen(watched), Factory()
    p = _Protocol(counts, seen)
    p.connection_made(FakeTransport())
    p.factory, p.encoding = factory, "utf8"
    return p, counts, seen, factory


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


class TestHeader:
    def test_finds_a_header_after_the_first_line(self) -> None:
        raw = channel("Hangup", OURS, Cause="16").strip()
        assert _header(raw, b"Cause") == b"16"
        assert _header(raw, b"Uniqueid") == OURS.encode()

    def test_a_longer_name_is_not_the_header(self) -> None:
        """DestUniqueid (Dial events) is not Uniqueid; an absent header is None."""
        raw = event("DialBegin", DestUniqueid=OURS).strip()
        assert _header(raw, b"Uniqueid") is None

    def test_the_last_header(self) -> None:
        assert _header(b"Event: Hangup\r\nCause: 17", b"Cause") == b"17"


class TestLazyParser:
    async def test_only_what_someone_waits_for_is_read(self) -> None:
        """Our reply and our call's events are read; another session's OriginateResponse,
        another call's events and an event nobody uses are counted and dropped."""
        p, counts, seen, factory = protocol({OURS})
        future = p.send({"Action": "Originate", "Async": "true", "Channel": "Local/s@x"},
                        as_list=None)  # as Manager.send_action does
        action_id = next(iter(p.responses))
        stream = b"".join([
            b"Response: Success\r\nActionID: " + action_id.encode()
            + b"\r\nMessage: Originate successfully queued\r\n\r\n",
            event("Newchannel", Uniqueid=OURS),
            channel("Newstate", OTHER, ChannelState="5"),
            channel("Newstate", OURS, ChannelState="5"),
            event("OriginateResponse", ActionID="action/someone-else/1/7", Response="Success",
                  Reason="4", Uniqueid=OTHER),
            event("OriginateResponse", ActionID=action_id, Response="Success", Reason="4",
                  Uniqueid=OURS),
            channel("Hangup", OTHER, Cause="16"),
            channel("Hangup", OURS, Cause="16"),
        ])
        p.data_received(stream)
        replies = await asyncio.wait_for(future, 1)
        assert [r.get("Response") for r in replies] == ["Success", "Success"]
        assert replies[-1]["Reason"] == "4"
        assert (counts.received, counts.read, counts.unneeded) == (7, 3, 1)
        assert counts.unneeded_names == {"Newchannel"}
        assert [(n, u.decode() if u else None) for n, u in seen.calls] == [
            (b"Newstate", OTHER), (b"Newstate", OURS), (b"Hangup", OTHER), (b"Hangup", OURS)]
        assert factory.dispatched == []  # nothing left for panoramisk's pattern callbacks

    async def test_the_greeting_and_a_login_reply(self) -> None:
        p, counts, _, _ = protocol(set())
        future = p.send({"Action": "Login", "Username": "callmfa", "Secret": "s"})
        action_id = next(iter(p.responses))
        p.data_received(b"Asterisk Call Manager/11.0.0\r\nResponse: Success\r\nActionID: "
                        + action_id.encode() + b"\r\nMessage: Authentication accepted\r\n\r\n")
        assert future.result().success
        assert counts.received == 0

    def test_shutdown_is_still_read(self) -> None:
        """Asterisk's Shutdown event ends the connection, as panoramisk did."""
        p, counts, _, _ = protocol(set())
        lost: list[object] = []
        p.connection_lost = lost.append  # type: ignore[method-assign]
        p.data_received(event("Shutdown", Shutdown="Cleanly", Restart="False"))
        assert counts.read == 1
        assert len(lost) == 1

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
    def test_any_chunking_reads_the_same(self, cuts: list[int]) -> None:
        """TCP may cut the stream anywhere, within a message or its blank line."""
        p, counts, seen, _ = protocol({OURS})
        stream = (channel("Newstate", OTHER, ChannelState="6")
                  + b"\r\n"  # the single stray CRLF Asterisk sometimes adds
                  + channel("Newstate", OURS, ChannelState="5")
                  + channel("Hangup", OURS, Cause="17", Cause_txt="User busy"))
        for chunk in chunks(stream, cuts):
            p.data_received(chunk)
        assert (counts.received, counts.read) == (3, 2)
        assert [n for n, _ in seen.calls] == [b"Newstate", b"Newstate", b"Hangup"]

    @pytest.mark.parametrize("data", [b"", b"\r\n", b"Event: \r\n\r\n", b"garbage\r\n\r\n"])
    def test_odd_input_is_dropped(self, data: bytes) -> None:
        p, _, seen, factory = protocol({OURS})
        p.data_received(data)
        assert factory.dispatched == []
        assert all(name == b"" for name, _ in seen.calls)


class TestUnendedMessage:
    def test_a_long_message_in_small_pieces_is_read_once_ended(self) -> None:
        """Pieces of a message not yet ended are kept (not split again each time) until
        its end comes, even when the end is itself cut in two."""
        p, _, seen, _ = protocol({OURS})
        big = channel("Newstate", OURS, ChannelState="5", Padding="x" * 500_000)
        for i in range(0, len(big) - 2, 4096):
            p.data_received(big[i:min(i + 4096, len(big) - 2)])
        assert seen.calls == []
        p.data_received(big[-2:])
        assert [n for n, _ in seen.calls] == [b"Newstate"]
        assert not p.transport.aborted

    def test_a_message_past_a_mebibyte_ends_the_connection(self) -> None:
        """Asterisk never sends one: what does is no AMI, and its buffer is not kept."""
        p, _, seen, _ = protocol({OURS})
        for _ in range(300):
            p.data_received(b"Event: Newstate\r\n" + b"x" * 4096)
        assert p.transport.aborted
        assert seen.calls == []
        assert len(p._buffer) < 300 * 4096
