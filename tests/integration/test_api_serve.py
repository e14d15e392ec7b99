"""`callmfa serve` with the api role, and `callmfa token`, against a real redis-server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from ivr.app import serve
from ivr.ops import tokencli
from ivr.settings import Settings
from ivr.storage.keys import AUDIT, REQUESTS
from ivr.storage.tokens import TOKENS

from ..conftest import RedisServer, free_port
from .conftest import eventually

KEY = "k" * 40


@pytest.fixture
async def api_service(redis_server: RedisServer, redis: Redis) -> AsyncIterator[int]:
    """serve with CALLMFA_ROLES=api only (and an extra route table), on a free port."""
    port = free_port()
    settings = Settings(redis_url=redis_server.url, roles="api", api_port=port,
                        health_port=0, signing_key=KEY)
    extra = web.RouteTableDef()

    @extra.get("/v1/otp/ping")
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, api_routes=[extra]))

    async def up() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{port}/healthz") as r:
                return r.status == 200
        return False

    await eventually(up, timeout_s=10, what="the API listening")
    yield port
    stop.set()
    await asyncio.wait_for(task, 30)


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)




class TestServe:
    async def test_the_api_role_serves_v1_extra_routes_and_healthz(
        self, api_service: int, redis_server: RedisServer, redis: Redis,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A token made with `callmfa token create` works at once; extra route tables get
        the same authentication; /healthz answers without a token."""
        settings = Settings(redis_url=redis_server.url)
        assert await tokencli._run(settings, _args(action="create", name="web", scope="verify",
                                                   expires=None)) == 0
        token = capsys.readouterr().out.strip()
        assert token.startswith("cmfa_")
        url = f"http://127.0.0.1:{api_service}"
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{url}/v1/verifications", headers=auth,
                              json={"user": "alice", "phone": "+12015550100"}) as r:
                assert r.status == 202
            async with s.get(f"{url}/v1/otp/ping") as r:
                assert r.status == 401
            async with s.get(f"{url}/v1/otp/ping", headers=auth) as r:
                assert await r.json() == {"pong": True}
            async with s.get(f"{url}/demo") as r:
                assert r.status == 404  # CALLMFA_API_DEMO is off by default
        assert await redis.xlen(REQUESTS) == 1


class TestTokenCommand:
    async def test_create_list_revoke_audited(
        self, redis_server: RedisServer, redis: Redis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        settings = Settings(redis_url=redis_server.url)
        assert await tokencli._run(settings, _args(action="create", name="ops", scope="admin",
                                                   expires=86400)) == 0
        token = capsys.readouterr().out.strip()
        assert await tokencli._run(settings, _args(action="create", name="ops", scope="admin",
                                                   expires=None)) == 1
        assert "has a token already" in capsys.readouterr().err
        assert await tokencli._run(settings, _args(action="list")) == 0
        listed = capsys.readouterr().out
        assert listed.startswith("ops\tadmin\tcreated ")
        assert token not in listed
        assert await tokencli._run(settings, _args(action="revoke", name="ops")) == 0
        assert await tokencli._run(settings, _args(action="revoke", name="ops")) == 1
        assert await redis.hlen(TOKENS) == 0
        audit = [{k.decode(): v.decode() for k, v in f.items()}
                 for _, f in await redis.xrange(AUDIT)]
        assert [(e["event"], e["token"]) for e in audit] == [
            ("token_created", "ops"), ("token_revoked", "ops")]
        assert all(e["actor"].startswith("cli:") for e in audit)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TestTls:
    async def test_the_api_serves_https_with_the_configured_certificate(
        self, redis_server: RedisServer, redis: Redis, tls_files: tuple[Path, Path]
    ) -> None:
        """CALLMFA_API_TLS_CERT/KEY: HTTPS with that certificate; plain HTTP gets nowhere."""
        cert, key = tls_files
        port = free_port()
        settings = Settings(redis_url=redis_server.url, roles="api", api_port=port,
                            health_port=0, signing_key=KEY, api_tls_cert=str(cert),
                            api_tls_key=str(key))
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop))
        trust = ssl.create_default_context(cafile=str(cert))
        try:
            async def up() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with aiohttp.ClientSession() as s, \
                            s.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as r:
                        return r.status == 200
                return False

            await eventually(up, timeout_s=10, what="HTTPS answering")
            async with aiohttp.ClientSession() as s:
                async with s.get(f"https://127.0.0.1:{port}/v1/verifications/x",
                                 ssl=trust) as r:
                    assert r.status == 401
                with pytest.raises(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                        await r.read()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
