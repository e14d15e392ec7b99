"""`callmfa serve` with the api role, and `callmfa token`, against a real redis-server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

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
        assert "has a token already" in capsys.readouterr().out
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
