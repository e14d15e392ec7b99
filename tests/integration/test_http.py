"""The /healthz and /metrics HTTP listener (aiohttp) under a connection flood (real sockets)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from ivr.fronts.web import HttpListener, ops_app

from .conftest import eventually, read_until_closed

CAP = 4


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await read_until_closed(reader, 5)
    writer.close()
    assert data is not None
    return data


class TestConnectionCap:
    async def test_connections_over_the_cap_are_refused_at_once_and_counted(self) -> None:
        """CAP idle connections fill the server; CAP + 6 more each get a 503 at once and are
        closed, and counted; once the idle ones go, /healthz answers 200 again."""
        refused: list[int] = []
        server = HttpListener(ops_app({"/healthz": healthz}), host="127.0.0.1", port=0,
                              max_connections=CAP, on_refused=lambda: refused.append(1))
        await server.start()
        idle = []
        try:
            for _ in range(CAP):
                idle.append(await asyncio.open_connection("127.0.0.1", server.port))
            await eventually(lambda: server.connections == CAP, what="the cap reached")

            loop = asyncio.get_running_loop()
            for _ in range(CAP + 6):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                started = loop.time()
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await read_until_closed(reader, 1.0)
                writer.close()
                assert answer is not None, "an extra connection was left open"
                assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
                assert loop.time() - started < 0.5
            assert len(refused) == CAP + 6
            assert server.connections == CAP  # the extra ones took no slot

            for _, writer in idle:
                writer.close()
            await eventually(lambda: server.connections == 0, what="the idle ones gone")
            assert (await get(server.port, "/healthz")).startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in idle:
                writer.close()
            await server.close()

    async def test_a_burst_accepted_in_one_loop_step_still_meets_the_cap(self) -> None:
        """CAP + 4 connections made while the server's loop is busy are accepted in one
        batch, before any of them is made: CAP are served, 4 are refused."""
        refused: list[int] = []
        server = HttpListener(ops_app({"/healthz": healthz}), host="127.0.0.1", port=0,
                              max_connections=CAP, on_refused=lambda: refused.append(1))
        await server.start()
        burst = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CAP + 4)]
        try:
            await eventually(lambda: len(refused) == 4, what="4 refused")
            await eventually(lambda: server.connections == CAP, what="CAP served")
        finally:
            for sock in burst:
                sock.close()
            await server.close()

    async def test_an_idle_connection_is_cut_at_the_read_deadline(self) -> None:
        """A connection that never sends its request is closed by the server."""
        server = HttpListener(ops_app({"/healthz": healthz}), host="127.0.0.1", port=0,
                              idle_timeout_s=0.3)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the blank line
            assert await read_until_closed(reader, 3) == b""
            writer.close()
            await eventually(lambda: server.connections == 0, what="the slot freed")
        finally:
            await server.close()
