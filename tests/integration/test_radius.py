"""The RADIUS front in `callmfa serve` with a real redis-server: start-up, Status-Server,
`callmfa check`'s radius line, a whole verification through the Redis contract, and the
upstream password check against a scripted RADIUS server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pyrad.packet import AccessAccept, AccessReject, AuthPacket
from redis.asyncio import Redis

from ivr.app import Service
from ivr.domain.outcome import Outcome, OutcomeRecord
from ivr.exceptions import SettingsError
from ivr.fronts.radius.packets import dictionary
from ivr.fronts.radius.upstream import UpstreamError, UpstreamPasswordChecker
from ivr.ops.doctor import Status, check_radius
from ivr.settings import Settings
from ivr.storage.directory import user_key
from ivr.storage.store import Store
from ivr.tasks import cancel_and_wait
from ivr.testing import access_request

from ..conftest import RedisServer, free_port
from .conftest import eventually

KEY = "k" * 32
SECRET = b"integration-secret"


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _settings(redis_server: RedisServer, clients: Path, **overrides: Any) -> Settings:
    return Settings(redis_url=redis_server.url, roles="radius", health_port=0, metrics_port=0,
                    signing_key=KEY, radius_port=overrides.pop("radius_port", _udp_port()),
                    radius_clients_file=str(clients), **overrides)


@pytest.fixture
def clients(tmp_path: Path) -> Path:
    path = tmp_path / "clients"
    path.write_text(f"127.0.0.1 {SECRET.decode()} test\n")
    return path


@pytest.fixture
async def serve(redis_server: RedisServer, clients: Path) -> AsyncIterator[Settings]:
    """A radius-only `callmfa serve`, and a fake originator that approves at once."""
    settings = _settings(redis_server, clients)
    stop = asyncio.Event()
    service = Service(settings)
    running = asyncio.create_task(service.run(stop))
    redis = Redis.from_url(redis_server.url)
    answering = asyncio.create_task(_approve_all(redis))
    try:
        await eventually(lambda: (service.radius is not None
                         and service.radius.server._transport is not None) or running.done(),
                         what="the RADIUS listener")
        yield settings
    finally:
        stop.set()
        await running
        await cancel_and_wait(answering)
        await redis.aclose()


async def _approve_all(redis: Redis) -> None:
    store = Store(redis, result_ttl_s=60, events_maxlen=100, signing_key=KEY.encode())
    last = "0"
    while True:
        reply: Any = await redis.xread({"callmfa:requests": last}, block=500)
        for _stream, items in reply or ():
            for entry_id, fields in items:
                last = entry_id.decode()
                request = json.loads(fields[b"request"])
                await store.store_outcome(OutcomeRecord(
                    id=request["id"], user=request["user"], outcome=Outcome.APPROVED,
                    requested_at=int(last.split("-")[0]) / 1000))


async def _ask(port: int, raw: bytes, timeout_s: float = 5) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, raw)
        return await asyncio.wait_for(loop.sock_recv(s, 4096), timeout_s)


class TestServe:
    async def test_a_verification_through_the_redis_contract(
        self, serve: Settings, redis: Redis
    ) -> None:
        await redis.hset(user_key("alice"), mapping={"phone": "+12015550100"})
        raw, packet = access_request(SECRET, "Alice")
        data = await _ask(serve.radius_port, raw)
        reply = packet.CreateReply(packet=data)
        assert packet.VerifyReply(reply, data, enforce_ma=True)
        assert reply.code == AccessAccept
        [(_, fields)] = await redis.xrange("callmfa:requests")
        request = json.loads(fields[b"request"])
        assert (request["user"], request["phone"], request["context"]) == (
            "alice", "+12015550100", {"front": "radius", "nas": "test"})

    async def test_eap_is_rejected_and_nobody_called(
        self, serve: Settings, redis: Redis
    ) -> None:
        await redis.hset(user_key("alice"), mapping={"phone": "+12015550100"})
        _, packet = access_request(SECRET, "alice", message_authenticator=False)
        packet.AddAttribute("EAP-Message", b"\x02\x01\x00\x0a\x01alice")
        packet.add_message_authenticator()
        raw = packet.RequestPacket()
        data = await _ask(serve.radius_port, raw)
        reply = packet.CreateReply(packet=data)
        assert packet.VerifyReply(reply, data, enforce_ma=True)
        assert reply.code == AccessReject
        assert "not EAP" in reply["Reply-Message"][0]
        assert await redis.xrange("callmfa:requests") == []

    async def test_status_server_and_check(self, serve: Settings) -> None:
        raw, packet = access_request(SECRET, "", status_server=True)
        data = await _ask(serve.radius_port, raw)
        assert packet.CreateReply(packet=data).code == AccessAccept
        result = await check_radius(serve)
        assert result is not None
        assert result.status is Status.OK, result

    async def test_check_fails_when_nothing_listens(self, redis_server: RedisServer,
                                                    clients: Path) -> None:
        result = await check_radius(_settings(redis_server, clients, connect_timeout_s=0.3))
        assert result is not None
        assert result.status is Status.FAIL
        assert "Status-Server" in result.message

    def test_malformed_clients_file_stops_start_up(self, redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
        bad = tmp_path / "clients"
        bad.write_text("# ok\n127.0.0.1 secret\n10.0.0.0/33 secret\n")
        with pytest.raises(SettingsError, match=rf"{bad}:3: '10.0.0.0/33'"):
            Service(_settings(redis_server, bad))

    def test_role_needs_a_clients_file(self, redis_server: RedisServer) -> None:
        settings = Settings(redis_url=redis_server.url, roles="radius", signing_key=KEY)
        with pytest.raises(SettingsError, match="CALLMFA_RADIUS_CLIENTS_FILE"):
            Service(settings)


class _Upstream(asyncio.DatagramProtocol):
    """An upstream RADIUS server: Accept for the right password, Reject otherwise, or no
    answer, or an answer signed with another secret."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        secret = b"forged" if self.mode == "forged" else b"upstream"
        request = AuthPacket(secret=secret, dict=dictionary(), packet=data)
        if self.mode == "silent":
            return
        reply = request.CreateReply()
        right = request.PwDecrypt(request["User-Password"][0]) == "right"
        reply.code = AccessAccept if right else AccessReject
        self.transport.sendto(reply.ReplyPacket(), addr)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[_Upstream, int]]:
    protocol = _Upstream("answer")
    port = free_port()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: protocol, local_addr=("127.0.0.1", port))
    try:
        yield protocol, port
    finally:
        transport.close()


class TestUpstream:
    def _checker(self, port: int) -> UpstreamPasswordChecker:
        return UpstreamPasswordChecker("127.0.0.1", port, b"upstream", 0.3, dictionary())

    async def test_right_and_wrong_password(self, upstream: tuple[_Upstream, int]) -> None:
        _, port = upstream
        assert await self._checker(port).check_password("alice", "right") is True
        assert await self._checker(port).check_password("alice", "wrong") is False

    async def test_no_answer_is_unavailable_after_one_retransmission(
        self, upstream: tuple[_Upstream, int]
    ) -> None:
        server, port = upstream
        server.mode = "silent"
        with pytest.raises(UpstreamError):
            await self._checker(port).check_password("alice", "right")
        assert server.seen == 2

    async def test_a_reply_with_another_secret_is_not_believed(
        self, upstream: tuple[_Upstream, int]
    ) -> None:
        server, port = upstream
        server.mode = "forged"
        refused: list[int] = []
        checker = UpstreamPasswordChecker("127.0.0.1", port, b"upstream", 0.3, dictionary(),
                                          lambda: refused.append(1))
        with pytest.raises(UpstreamError):
            await checker.check_password("alice", "right")
        assert len(refused) == 2  # both forged replies, counted
