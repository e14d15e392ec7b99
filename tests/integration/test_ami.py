"""AmiClient against a scripted AMI server on loopback: login, Originate, channel events."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator

import pytest

from ivr.exceptions import AmiConnectError, AmiError
from ivr.transport.ami import AmiClient
from ivr.transport.ami_pool import AmiPool

from ..unit.test_ami import OTHER, OURS, channel, event


class FakeAsterisk:
    """Greets, accepts the login, answers an Originate with a call's events among others'.

    Everything is written one byte at a time: the client must join the pieces.
    """

    def __init__(self) -> None:
        self.actions: list[dict[str, str]] = []
        self.server: asyncio.Server | None = None
        # What an Originate gets instead of the call: a reply, nothing (b""), or a close (None).
        self.originate_reply: bytes | None = b"call"
        self.login = "accept"  # or "close" (the connection), or "hang" (no answer)
        self.pongs = True  # False: Pings go unanswered (a hung Asterisk)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
        await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while block := await reader.readuntil(b"\r\n\r\n"):
                action = dict(line.split(": ", 1) for line in block.decode().strip().split("\r\n"))
                self.actions.append(action)
                aid = action["ActionID"].encode()
                if action["Action"] == "Login" and self.login != "accept":
                    if self.login == "close":
                        break
                elif action["Action"] == "Login":
                    await self._send(writer, b"Response: Success\r\nActionID: " + aid
                                     + b"\r\nMessage: Authentication accepted\r\n\r\n")
                elif action["Action"] == "Ping":
                    if self.pongs:
                        await self._send(writer, b"Response: Success\r\nActionID: " + aid
                                         + b"\r\nPing: Pong\r\n\r\n")
                elif action["Action"] == "Originate" and self.originate_reply != b"call":
                    if self.originate_reply is None:
                        break
                    await self._send(writer, self.originate_reply.replace(b"<aid>", aid))
                elif action["Action"] == "Originate":
                    uid = action["ChannelId"]
                    await self._send(writer, b"".join([
                        b"Response: Success\r\nActionID: " + aid
                        + b"\r\nMessage: Originate successfully queued\r\n\r\n",
                        event("Newchannel", Uniqueid=uid),
                        channel("Newstate", OTHER, ChannelState="5"),
                        channel("Newstate", uid, ChannelState="5"),
                        event("OriginateResponse", ActionID="action/other/1/1",
                              Response="Failure", Reason="0", Uniqueid=OTHER),
                        channel("Newstate", uid, ChannelState="6"),
                        event("OriginateResponse", ActionID=aid.decode(), Response="Success",
                              Reason="4", Uniqueid=uid),
                        channel("Hangup", OTHER, Cause="17"),
                        channel("Hangup", uid, Cause="16", Cause_txt="Normal Clearing"),
                    ]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[FakeAsterisk, AmiClient]]:
    fake = FakeAsterisk()
    port = await fake.start()
    client = AmiClient(host="127.0.0.1", port=port, user="callmfa", secret="s", timeout_s=5)
    await client.connect()
    try:
        yield fake, client
    finally:
        await client.close()
        await fake.close()


class TestAmiClient:
    async def test_login_asks_for_call_events_only(
        self, asterisk: tuple[FakeAsterisk, AmiClient]
    ) -> None:
        """Newstate, Hangup and OriginateResponse are "call" events: an account with more
        read rights is still sent only those."""
        fake, _ = asterisk
        assert fake.actions[0]["Action"] == "Login"
        assert fake.actions[0]["Events"] == "call"

    async def test_a_call_among_others(self, asterisk: tuple[FakeAsterisk, AmiClient]) -> None:
        """Our OriginateResponse, our ringing and our Hangup cause are read; the other
        call's events and another session's OriginateResponse are not."""
        _, client = asterisk
        watch = client.watch(OURS)
        result = await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {},
                                        timeout_s=5)
        assert (result.answered, result.reason) == (True, 4)
        assert result.payload["Uniqueid"] == OURS
        assert await asyncio.wait_for(watch.hangup, 5) == 16
        assert watch.ringing.is_set()
        events = client.events
        assert (events.received, events.read, events.unneeded) == (8, 4, 1)

    async def test_an_originate_refused_at_once(
        self, asterisk: tuple[FakeAsterisk, AmiClient]
    ) -> None:
        """A Response that is not Success (permission, bad channel) is the refusal: an
        AmiError with Asterisk's message and fields."""
        fake, client = asterisk
        fake.originate_reply = (b"Response: Error\r\nActionID: <aid>\r\n"
                                b"Message: Permission denied\r\n\r\n")

        with pytest.raises(AmiError, match="Originate refused: Permission denied") as e:
            await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {}, timeout_s=5)

        assert e.value.payload["Response"] == "Error"

    async def test_no_originate_response_in_time(
        self, asterisk: tuple[FakeAsterisk, AmiClient]
    ) -> None:
        """Queued, then nothing: an AmiError once the wait is over, and the action is
        forgotten (a late OriginateResponse is dropped)."""
        fake, client = asterisk
        fake.originate_reply = (b"Response: Success\r\nActionID: <aid>\r\n"
                                b"Message: Originate successfully queued\r\n\r\n")

        with pytest.raises(AmiError, match=r"no OriginateResponse within 0\.2s"):
            await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {},
                                   timeout_s=0.2)

        assert client._manager is not None
        assert client._manager.protocol.originates == {}

    async def test_the_connection_lost_while_an_originate_waits(
        self, asterisk: tuple[FakeAsterisk, AmiClient]
    ) -> None:
        fake, client = asterisk
        fake.originate_reply = None

        with pytest.raises(AmiConnectError, match="AMI connection lost"):
            await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {}, timeout_s=5)

    async def test_the_originate_as_sent(self, asterisk: tuple[FakeAsterisk, AmiClient]) -> None:
        """Async, the fields, one Variable line per variable, and an ActionID of this session
        that no other process on the account shares."""
        fake, client = asterisk
        await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {"A": "1", "B": "2"},
                               timeout_s=5)

        sent = fake.actions[-1]
        assert (sent["Action"], sent["Async"], sent["Channel"]) == ("Originate", "true",
                                                                    "PJSIP/x@y")
        assert sent["Variable"] == "B=2"  # the fake's dict keeps the last of the two lines
        assert sent["ActionID"].startswith("callmfa/")

    @pytest.mark.parametrize("bad", ["a\r\nAction: Command", "a\nb", "a\0b"])
    @pytest.mark.parametrize("where", ["field", "name", "variable"])
    async def test_a_header_break_is_refused_before_anything_is_sent(
        self, asterisk: tuple[FakeAsterisk, AmiClient], bad: str, where: str
    ) -> None:
        """CR, LF or NUL in a field's name or value or in a variable would end the header
        or the action: refused, and nothing reaches Asterisk."""
        fake, client = asterisk
        fields = {"Channel": "PJSIP/x@y", "ChannelId": OURS}
        variables = {"A": "1"}
        if where == "field":
            fields["Channel"] = bad
        elif where == "name":
            fields[bad] = "1"
        else:
            variables["A"] = bad
        sent = len(fake.actions)

        with pytest.raises(AmiError, match="CR, LF or NUL"):
            await client.originate(fields, variables, timeout_s=5)
        await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {}, timeout_s=5)

        assert len(fake.actions) == sent + 1  # the good Originate only


async def test_a_connect_cancelled_during_login_closes_its_connection() -> None:
    """An Asterisk that takes the connection but never answers the Login: a stop that
    cancels connect() meanwhile closes the connection (nothing left open or pinging)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        await accepted.put((reader, writer))

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = int(server.sockets[0].getsockname()[1])
        client = AmiClient(host="127.0.0.1", port=port, user="callmfa", secret="s",
                           timeout_s=30)
        connecting = asyncio.create_task(client.connect())
        reader, writer = await asyncio.wait_for(accepted.get(), 5)
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the Login
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the client
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


class TestLiveness:
    """An Asterisk that stops answering, or drops the connection during the login, is
    unreachable: never a refused login, never a connection trusted for new calls."""

    async def _client(self, fake: FakeAsterisk, **kw: float) -> AmiClient:
        port = await fake.start()
        return AmiClient(host="127.0.0.1", port=port, user="callmfa", secret="s",
                         timeout_s=kw.pop("timeout_s", 5), **kw)  # type: ignore[arg-type]

    async def test_a_hung_asterisk_is_dropped_at_its_unanswered_ping(self) -> None:
        """Pings answered keep the connection; the first left unanswered for an interval
        ends it (it was kept for ever, so calls went on to a hung Asterisk)."""
        fake = FakeAsterisk()
        client = await self._client(fake, ping_interval_s=1)
        try:
            await client.connect()
            watch = client.watch(OURS)
            await asyncio.sleep(2.5)  # two Pings, answered
            assert client.connected.is_set()
            fake.pongs = False
            await asyncio.wait_for(client.lost.wait(), 3)
            assert not client.connected.is_set()
            with pytest.raises(AmiConnectError):
                await watch.hangup
            assert sum(a["Action"] == "Ping" for a in fake.actions) >= 3
        finally:
            await client.close()
            await fake.close()

    @pytest.mark.parametrize(("login", "why"), [("close", "closed the connection"),
                                                ("hang", "did not answer")])
    async def test_no_login_answer_is_unreachable_not_refused(
            self, login: str, why: str) -> None:
        """A connection closed, or never answered, at the login: AmiConnectError (at once
        when closed), so the pool starts with the other Asterisks; it was AmiLoginError,
        which stopped `callmfa serve` and blamed the secret."""
        dead, good = FakeAsterisk(), FakeAsterisk()
        dead.login = login
        bad = await self._client(dead, timeout_s=1.5)
        try:
            started = time.monotonic()
            with pytest.raises(AmiConnectError, match=why):
                await bad.connect()
            assert time.monotonic() - started < (1 if login == "close" else 3)
            pool = AmiPool([bad, await self._client(good)], capacity=1)
            await pool.start()
            try:
                assert [c.connected.is_set() for c in pool.clients] == [False, True]
            finally:
                await pool.close()
        finally:
            await dead.close()
            await good.close()

    async def test_a_watch_failed_by_a_lost_connection_leaves_no_unread_error(self) -> None:
        """The Originate failed with the connection: its watch's error is read at unwatch
        (asyncio printed "Future exception was never retrieved" for each such call)."""
        fake = FakeAsterisk()
        fake.originate_reply = None
        client = await self._client(fake)
        unread: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unread.append(c))
        try:
            await client.connect()
            client.watch(OURS)
            with pytest.raises(AmiConnectError):
                await client.originate({"Channel": "PJSIP/x@y", "ChannelId": OURS}, {},
                                       timeout_s=5)
            client.unwatch(OURS)
            gc.collect()
            await asyncio.sleep(0)
            assert unread == []
        finally:
            asyncio.get_running_loop().set_exception_handler(None)
            await client.close()
            await fake.close()
