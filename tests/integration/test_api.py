"""The HTTP API against a real redis-server: auth, idempotency, error shapes, long poll, SSE
and the admin endpoints; every answer checked against docs/openapi.yaml."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ivr.domain.directory import DirectoryEntry
from ivr.domain.outcome import Outcome, OutcomeRecord, iso
from ivr.fronts.api import ApiParts, build_app
from ivr.fronts.api.demo import DEMO_PER_MIN, masked
from ivr.fronts.web import BODY_TIMEOUT_S
from ivr.security import limits
from ivr.settings import Settings
from ivr.storage.guard import Guard
from ivr.storage.keys import AUDIT, REQUESTS
from ivr.storage.store import Store
from ivr.storage.tokens import owner_key

from ..http_bodies import exchange, post_head
from ..openapi import check

KEY = "k" * 40
PHONE = "+12015550100"


class Counted:
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.submitted = 0

    def api_request_refused(self, reason: str) -> None:
        self.refused.append(reason)

    def api_verification_submitted(self) -> None:
        self.submitted += 1


@dataclass
class Api:
    http: TestClient[web.Request, web.Application]
    parts: ApiParts
    redis: Redis
    observer: Counted
    verify: str  # a verify token
    admin: str  # an admin token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.verify}"}

    async def call(self, method: str, path: str, documented: str, *, token: str | None = None,
                   expect: int, **kw: Any) -> Any:
        """One request; its status must be ``expect`` and its body as documented."""
        headers = {**self.auth(token), **kw.pop("headers", {})}
        async with self.http.request(method, path, headers=headers, **kw) as r:
            body = await r.json()
            assert r.status == expect, body
            check(method, documented, r.status, body)
            return body

    async def post(self, body: Any, *, expect: int = 202, **kw: Any) -> Any:
        return await self.call("POST", "/v1/verifications", "/v1/verifications",
                               json=body, expect=expect, **kw)

    async def get(self, rid: str, query: str = "", *, expect: int, **kw: Any) -> Any:
        return await self.call("GET", f"/v1/verifications/{rid}{query}",
                               "/v1/verifications/{id}", expect=expect, **kw)


async def _start(redis: Redis, *, demo: bool = False,
                 **overrides: Any) -> tuple[ApiParts, Counted, web.Application]:
    settings = Settings(**{"signing_key": KEY, **overrides})
    observer = Counted()
    parts = ApiParts.for_redis(settings, redis, Guard(redis, limits(settings)),
                               observer=observer)
    return parts, observer, build_app(parts, with_demo=demo)


@pytest.fixture
async def api(redis: Redis) -> AsyncIterator[Api]:
    parts, observer, app = await _start(redis)
    verify = await parts.tokens.create("signin", "verify", expires_s=None, actor="test")
    admin = await parts.tokens.create("ops", "admin", expires_s=None, actor="test")
    assert verify
    assert admin
    async with TestClient(TestServer(app)) as http:
        yield Api(http, parts, redis, observer, verify, admin)


async def _queued(redis: Redis) -> list[dict[str, Any]]:
    entries: Any = await redis.xrange(REQUESTS)
    return [json.loads(f[b"request"]) for _, f in entries]


def _outcome(rid: str, user: str = "alice", outcome: Outcome = Outcome.APPROVED) -> OutcomeRecord:
    now = time.time()
    return OutcomeRecord(id=rid, user=user, outcome=outcome, requested_at=now,
                         call_started_at=now, answered_at=now, input_at=now, finished_at=now)


def _store(redis: Redis) -> Store:
    return Store(redis, result_ttl_s=60, events_maxlen=1000, signing_key=KEY.encode())


class TestAuth:
    @pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc",
                                        "Bearer cmfa_" + "x" * 43])
    async def test_no_or_a_bad_token_is_401_and_says_nothing(
        self, api: Api, header: str | None
    ) -> None:
        """Missing, malformed and unknown tokens get one and the same 401, counted."""
        headers = {"Authorization": header} if header else {}
        async with api.http.post("/v1/verifications", json={"user": "a"},
                                 headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="callmfa"'
            body = await r.json()
        assert body == {"error": "unauthorized", "message": "a valid bearer token is required"}
        check("POST", "/v1/verifications", 401, body)
        assert api.observer.refused == ["unauthorized"]
        assert await _queued(api.redis) == []

    async def test_a_token_of_undecodable_bytes_is_401_and_counted(self, api: Api) -> None:
        """Authorization bytes that are not UTF-8 (sent raw, as a broken client may):
        the same 401, counted (it was a 500, not counted)."""
        url = api.http.make_url("/v1/verifications")
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(b"POST /v1/verifications HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer cmfa_\xff\xfe\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
                         b"\r\n{}")
            status = (await asyncio.wait_for(reader.readline(), 5)).split()[1]
        finally:
            writer.close()
        assert status == b"401"
        assert api.observer.refused == ["unauthorized"]

    async def test_a_revoked_or_expired_token_is_401(self, api: Api) -> None:
        """Revocation takes effect at once; an expired token is refused like an unknown one;
        both are audited."""
        await api.post({"user": "alice", "phone": PHONE})
        assert await api.parts.tokens.revoke("signin", actor="test")
        await api.post({"user": "alice", "phone": PHONE}, expect=401)
        short = await api.parts.tokens.create("short", "verify", expires_s=1, actor="test")
        assert short
        await api.post({"user": "alice", "phone": PHONE}, token=short)
        await asyncio.sleep(1.1)  # the token's own lifetime: nothing to poll
        await api.post({"user": "alice", "phone": PHONE}, token=short, expect=401)
        events = [f[b"event"].decode() for _, f in await api.redis.xrange(AUDIT)]
        assert events.count("token_created") == 3
        assert events.count("token_revoked") == 1

    async def test_only_the_hash_is_stored(self, api: Api) -> None:
        """Redis never holds the token itself."""
        keys = [k async for k in api.redis.scan_iter("callmfa:*")]
        for key in keys:
            kind = (await api.redis.type(key)).decode()
            dump = (repr(await api.redis.hgetall(key)) if kind == "hash"
                    else repr(await api.redis.xrange(key)) if kind == "stream" else "")
            assert api.verify not in dump
            assert api.verify[5:] not in dump

    async def test_a_verify_token_may_not_use_admin_endpoints(self, api: Api) -> None:
        """403, the same for any admin path; nothing is blocked."""
        body = await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks",
                              json={"user": "bob"}, expect=403)
        assert body["error"] == "forbidden"
        assert not await api.parts.guard.is_blocked("bob")
        assert api.observer.refused == ["forbidden"]

    async def test_each_token_has_a_rate_limit(self, redis: Redis) -> None:
        """Over CALLMFA_API_RATE_PER_MIN: 429 with Retry-After; another token is unaffected."""
        parts, observer, app = await _start(redis, api_rate_per_min=3)
        a = await parts.tokens.create("a", "verify", expires_s=None, actor="t")
        b = await parts.tokens.create("b", "verify", expires_s=None, actor="t")
        async with TestClient(TestServer(app)) as http:
            statuses = []
            for _ in range(5):
                async with http.get(f"/v1/verifications/{uuid.uuid4()}",
                                    headers={"Authorization": f"Bearer {a}"}) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert 1 <= int(r.headers["Retry-After"]) <= 60
                        check("POST", "/v1/verifications", 429, await r.json())
            async with http.get(f"/v1/verifications/{uuid.uuid4()}",
                                headers={"Authorization": f"Bearer {b}"}) as r:
                assert r.status == 404
        if statuses != [404, 404, 404, 429, 429]:
            # The window turned a minute over mid-test: the count started again.
            assert statuses.count(429) >= 1, statuses
        assert "rate_limited" in observer.refused


class TestSubmit:
    async def test_a_request_is_queued_on_the_contract_with_an_id_made_for_it(
        self, api: Api
    ) -> None:
        """202 {"id"}, a UUID, and the request on callmfa:requests as a sign-in service
        would add it."""
        body = await api.post({"user": "Alice", "phone": PHONE, "context": {"app": "vpn"}})
        rid = body["id"]
        assert uuid.UUID(rid)
        [queued] = await _queued(api.redis)
        assert queued == {"id": rid, "user": "Alice", "phone": PHONE, "context": {"app": "vpn"}}
        assert api.observer.submitted == 1

    async def test_a_given_id_is_kept(self, api: Api) -> None:
        rid = str(uuid.uuid4())
        assert (await api.post({"id": rid.upper(), "user": "a", "phone": PHONE}))["id"] == rid

    async def test_a_user_alone_passes_through_for_the_directory(self, api: Api) -> None:
        """No phone: queued without one (the originator asks the user directory)."""
        rid = (await api.post({"user": "alice"}))["id"]
        [queued] = await _queued(api.redis)
        assert queued == {"id": rid, "user": "alice"}

    @pytest.mark.parametrize(("body", "detail"), [
        ({"user": "a", "phone": "12345"}, "invalid_phone"),
        ({"user": "a", "phone": PHONE, "colour": "red"}, "unknown_field"),
        ({"user": "", "phone": PHONE}, "invalid_user"),
        ({"id": "nope", "user": "a", "phone": PHONE}, "invalid_id"),
        ({"user": "a", "phone": PHONE, "mode": "dance"}, "unsupported_mode"),
        ({"user": "a", "phone": PHONE, "mode": "match"}, "invalid_match_hash"),
        ({"user": "a", "phone": PHONE, "expires_at": "soon"}, "invalid_expires_at"),
        ({"user": "a", "phone": PHONE, "expires_at": "2099-01-01T00:00:00Z"},
         "invalid_expires_at"),
        ([1, 2], "invalid_json"),
        ({"user": "a", "phone": PHONE, "context": {"note": "\ud800"}}, "invalid_json"),
    ])
    async def test_bad_input_is_400_with_the_rejected_detail(
        self, api: Api, body: Any, detail: str
    ) -> None:
        """The same details as the rejected outcome; nothing is queued."""
        found = await api.post(body, expect=400)
        assert found["error"] == detail
        assert found["message"]
        assert await _queued(api.redis) == []

    async def test_the_creator_may_read_it_as_long_as_its_outcome_lives(
        self, api: Api
    ) -> None:
        """A request that may wait 50 min to be placed keeps its owner past that wait and
        the outcome's life (RESULT_TTL_S), not only past CALLMFA_REQUEST_TTL_S."""
        rid = (await api.post({"user": "a", "phone": PHONE,
                               "expires_at": iso(time.time() + 3000)}))["id"]
        assert await api.redis.ttl(owner_key(rid)) > 3000 + api.parts.settings.result_ttl_s

    @pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-32"])
    async def test_a_lone_surrogate_in_a_utf16_or_utf32_body_is_400(
        self, api: Api, codec: str
    ) -> None:
        """json.loads reads UTF-16 and UTF-32 bodies too, where the surrogate check (which
        looked for a \\u escape in the raw bytes) found none: the request was then a 500
        (UnicodeEncodeError on its way to Redis). A body that is not UTF-8 is 400."""
        text = '{"user": "a", "phone": "+12015550100", "context": {"x": "\\ud800"}}'
        found = await api.post(None, data=text.encode(codec), expect=400,
                               headers={"Content-Type": "application/json"})
        assert found["error"] == "invalid_json"
        assert await _queued(api.redis) == []

    async def test_an_allowed_callback_url_is_queued_and_another_is_400(
        self, redis: Redis
    ) -> None:
        """The contract's callback_url under CALLMFA_WEBHOOK_ALLOWED_URLS: the API checked
        it against no rule at all, so even an allowed one was 400 invalid_callback_url."""
        parts, observer, app = await _start(
            redis, webhook_allowed_urls="https://hooks.example.com/mfa/",
            webhook_secret="whsec_" + base64.b64encode(b"s" * 32).decode())
        token = await parts.tokens.create("signin", "verify", expires_s=None, actor="t")
        assert token
        async with TestClient(TestServer(app)) as http:
            api = Api(http, parts, redis, observer, token, token)
            hook = "https://hooks.example.com/mfa/signin"
            rid = (await api.post({"user": "alice", "phone": PHONE, "callback_url": hook}))["id"]
            found = await api.post({"user": "alice", "phone": PHONE,
                                    "callback_url": "https://evil.example.net/"}, expect=400)
            assert found["error"] == "invalid_callback_url"
        [queued] = await _queued(redis)
        assert queued == {"id": rid, "user": "alice", "phone": PHONE, "callback_url": hook}

    async def test_an_escaped_surrogate_pair_is_text(self, api: Api) -> None:
        """\ud83d\ude00 (one emoji, as json.dumps escapes it) is accepted and queued whole."""
        await api.post({"user": "alice", "phone": PHONE, "context": {"note": "\U0001f600"}})
        [queued] = await _queued(api.redis)
        assert queued["context"] == {"note": "\U0001f600"}

    async def test_bad_json_wrong_type_and_too_large(self, api: Api) -> None:
        """Bad JSON 400, another content type 415, a body over 8 KiB 413: the error shape."""
        found = await api.post(None, data=b'{"user": ', expect=400,
                               headers={"Content-Type": "application/json"})
        assert found["error"] == "invalid_json"
        found = await api.post(None, data=b"user=a", expect=415,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert found["error"] == "unsupported_media_type"
        found = await api.post({"user": "a", "phone": PHONE, "context": {"x": "y" * 9000}},
                               expect=413)
        assert found["error"] == "too_large"
        assert await _queued(api.redis) == []

    async def test_a_body_in_pieces_is_read_whole_and_one_that_never_comes_is_408(
        self, api: Api
    ) -> None:
        """A request whose body arrives in pieces is queued; one whose body never comes
        held its connection for ever, and now gets 408 body_timeout after BODY_TIMEOUT_S."""
        port = api.http.port or 0
        body = json.dumps({"user": "alice", "phone": PHONE}).encode()
        head = post_head("/v1/verifications", {**api.auth(),
                                               "Content-Type": "application/json"}, len(body))
        answer = await exchange(port, head, body[:10], body[10:])
        assert answer.startswith(b"HTTP/1.1 202"), answer
        answer = await exchange(port, head, body[:10], wait_s=BODY_TIMEOUT_S + 10)
        status, _, text = answer.partition(b"\n")
        assert status.startswith(b"HTTP/1.1 408"), answer
        check("POST", "/v1/verifications", 408, json.loads(text))
        assert json.loads(text)["error"] == "body_timeout"
        assert len(await _queued(api.redis)) == 1

    async def test_unknown_paths_and_methods_have_the_error_shape(self, api: Api) -> None:
        async with api.http.get("/v1/nothing", headers=api.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (404, "not_found")
        async with api.http.delete("/v1/verifications", headers=api.auth()) as r:
            assert (r.status, (await r.json())["error"]) == (405, "method_not_allowed")


class TestIdempotency:
    async def test_the_same_key_twice_is_one_request(self, api: Api) -> None:
        """Same token, same Idempotency-Key, same body: the first id, queued once."""
        body = {"user": "alice", "phone": PHONE}
        key = {"Idempotency-Key": "order-42"}
        first = await api.post(body, headers=key)
        second = await api.post(body, headers=key)
        assert first == second
        assert len(await _queued(api.redis)) == 1
        assert api.observer.submitted == 1

    async def test_another_body_with_the_key_is_409(self, api: Api) -> None:
        key = {"Idempotency-Key": "order-43"}
        await api.post({"user": "alice", "phone": PHONE}, headers=key)
        found = await api.post({"user": "mallory", "phone": PHONE}, headers=key, expect=409)
        assert found["error"] == "idempotency_key_reused"
        assert len(await _queued(api.redis)) == 1

    async def test_keys_are_per_token(self, api: Api) -> None:
        """Another token's same key is another request."""
        body = {"user": "alice", "phone": PHONE}
        a = await api.post(body, headers={"Idempotency-Key": "k1"})
        b = await api.post(body, headers={"Idempotency-Key": "k1"}, token=api.admin)
        assert a != b
        assert len(await _queued(api.redis)) == 2

    async def test_another_tokens_id_is_refused(self, api: Api) -> None:
        """An attack: reuse a victim's id to read their outcome. 409, nothing queued."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        other = await api.parts.tokens.create("other", "verify", expires_s=None, actor="t")
        found = await api.post({"id": rid, "user": "alice", "phone": PHONE}, token=other,
                               expect=409)
        assert found["error"] == "id_in_use"
        assert len(await _queued(api.redis)) == 1


class TestRead:
    async def test_pending_then_the_outcome_exactly_as_stored(self, api: Api) -> None:
        """202 with the events so far; then 200 with the stored (signed) outcome object."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        store = _store(api.redis)
        await store.event(rid, "queued")
        await store.event(rid, "dialing")
        pending = await api.get(rid, expect=202)
        assert pending["status"] == "pending"
        assert [e["event"] for e in pending["events"]] == ["queued", "dialing"]
        await store.store_outcome(_outcome(rid))
        body = await api.get(rid, expect=200)
        stored = await api.redis.get(f"callmfa:result:{rid}")
        assert body == json.loads(stored)
        assert body["outcome"] == "approved"
        assert len(body["sig"]) == 64

    async def test_wait_is_a_long_poll_answered_when_the_outcome_lands(self, api: Api) -> None:
        """?wait=10 returns as soon as the outcome is stored, not at the end of the wait."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(api.get(rid, "?wait=10", expect=200))
        await asyncio.sleep(0.3)  # the outcome arrives while the request is held
        assert not waiting.done()
        await _store(api.redis).store_outcome(_outcome(rid))
        body = await asyncio.wait_for(waiting, 5)
        assert body["id"] == rid
        assert loop.time() - started < 3

    async def test_wait_ends_pending_when_no_outcome_comes(self, api: Api) -> None:
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        assert (await api.get(rid, "?wait=0.3", expect=202))["status"] == "pending"

    @pytest.mark.parametrize("wait", ["-1", "121", "soon"])
    async def test_a_bad_wait_is_400(self, api: Api, wait: str) -> None:
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        assert (await api.get(rid, f"?wait={wait}", expect=400))["error"] == "invalid_wait"

    async def test_another_tokens_verification_is_not_found(self, api: Api) -> None:
        """An attack: read someone else's outcome by id. 404, as for an unknown id; an
        admin token may read it."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        await _store(api.redis).store_outcome(_outcome(rid))
        other = await api.parts.tokens.create("other", "verify", expires_s=None, actor="t")
        found = await api.get(rid, expect=404, token=other)
        assert found == await api.get(str(uuid.uuid4()), expect=404, token=other)
        await api.get(rid, expect=200, token=api.admin)

    async def test_a_forged_outcome_is_not_served(self, api: Api) -> None:
        """An attack: an unsigned approval written into Redis. 502, never a 200."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        await api.redis.set(f"callmfa:result:{rid}", _outcome(rid).to_json())
        found = await api.get(rid, expect=502)
        assert found["error"] == "outcome_unverified"


    async def test_while_rotating_an_outcome_of_the_previous_key_is_served(
        self, redis: Redis
    ) -> None:
        """CALLMFA_SIGNING_KEY_PREVIOUS: an outcome signed before the switch is a 200."""
        parts, _, app = await _start(redis, signing_key="n" * 32, signing_key_previous=KEY)
        token = await parts.tokens.create("signin", "verify", expires_s=None, actor="test")
        assert token
        async with TestClient(TestServer(app)) as http:
            api = Api(http, parts, redis, Counted(), token, token)
            rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
            await _store(redis).store_outcome(_outcome(rid))  # signed with KEY
            found = await api.get(rid, expect=200)
            assert found["outcome"] == "approved"

class TestEvents:
    async def test_events_stream_in_order_and_end_with_finished(self, api: Api) -> None:
        """SSE: the history first, then live events, each before finished; then the end."""
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        store = _store(api.redis)
        await store.event(rid, "queued")
        received: list[tuple[str, dict[str, Any]]] = []

        async def read() -> None:
            async with api.http.get(f"/v1/verifications/{rid}/events",
                                    headers=api.auth()) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/event-stream"
                name = ""
                async for raw in r.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        received.append((name, json.loads(line[6:])))

        reader = asyncio.create_task(read())
        for name in ("dialing", "ringing", "answered"):
            await store.event(rid, name)
        await store.store_outcome(_outcome(rid), input_at=time.time())
        await asyncio.wait_for(reader, 10)
        assert [n for n, _ in received] == [
            "queued", "dialing", "ringing", "answered", "input", "finished"]
        assert received[-1][1]["outcome"] == "approved"
        assert all(data["id"] == rid for _, data in received)

    async def test_another_tokens_events_are_not_found(self, api: Api) -> None:
        rid = (await api.post({"user": "alice", "phone": PHONE}))["id"]
        other = await api.parts.tokens.create("other", "verify", expires_s=None, actor="t")
        async with api.http.get(f"/v1/verifications/{rid}/events",
                                headers=api.auth(other)) as r:
            assert r.status == 404


class TestAdmin:
    async def _audit(self, api: Api) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in f.items()}
                for _, f in await api.redis.xrange(AUDIT)]

    async def test_block_list_unblock_audited_with_the_token(self, api: Api) -> None:
        body = await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks", token=api.admin,
                              json={"user": "Bob", "for": "12h", "reason": "lost phone"},
                              expect=201)
        assert body["user"] == "bob"
        listed = await api.call("GET", "/v1/admin/blocks", "/v1/admin/blocks",
                                token=api.admin, expect=200)
        assert [b["user"] for b in listed["blocked"]] == ["bob"]
        found = await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks", token=api.admin,
                               json={"user": "bob", "for": "1h"}, expect=409)
        assert found["error"] == "longer_block_kept"
        await api.call("DELETE", "/v1/admin/blocks/bob", "/v1/admin/blocks/{user}",
                       token=api.admin, expect=200)
        await api.call("DELETE", "/v1/admin/blocks/bob", "/v1/admin/blocks/{user}",
                       token=api.admin, expect=404)
        audit = [e for e in await self._audit(api) if e["event"] in ("blocked", "unblocked")]
        assert [(e["event"], e["actor"]) for e in audit] == [
            ("blocked", "api:ops"), ("unblocked", "api:ops")]
        assert audit[0]["reason"] == "lost phone"

    @pytest.mark.parametrize("reason", ["x%0A2026-01-01  unblocked  alice  api:ops",
                                        "a" * 201, "%00"])
    async def test_an_unblock_reason_is_checked_like_a_block_reason(
        self, api: Api, reason: str
    ) -> None:
        """?reason= went into callmfa:audit unchecked: a newline forged rows in
        `callmfa report`'s audit table. 400 invalid_reason, as for a block; still blocked."""
        await api.parts.guard.block("bob", 600, actor="t", reason="t")
        found = await api.call("DELETE", f"/v1/admin/blocks/bob?reason={reason}",
                               "/v1/admin/blocks/{user}", token=api.admin, expect=400)
        assert found["error"] == "invalid_reason"
        assert await api.parts.guard.is_blocked("bob")
        assert "unblocked" not in [e["event"] for e in await self._audit(api)]
        await api.call("DELETE", "/v1/admin/blocks/bob?reason=found%20it",
                       "/v1/admin/blocks/{user}", token=api.admin, expect=200)
        assert [e["reason"] for e in await self._audit(api)
                if e["event"] == "unblocked"] == ["found it"]

    async def test_a_block_needs_a_length_when_fraud_blocking_is_off(self, redis: Redis
                                                                      ) -> None:
        """CALLMFA_FRAUD_BLOCK_S=0 (0# only audits) is no default length: a block without
        "for" is 400 and blocks nothing (it had been 201 with until == now)."""
        parts, observer, app = await _start(redis, fraud_block_s=0)
        admin = await parts.tokens.create("ops", "admin", expires_s=None, actor="test")
        assert admin
        async with TestClient(TestServer(app)) as http:
            api = Api(http, parts, redis, observer, admin, admin)
            body = await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks",
                                  token=admin, json={"user": "bob"}, expect=400)
            assert body["error"] == "duration_required"
            assert await parts.guard.blocked() == []
            await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks", token=admin,
                           json={"user": "bob", "for": "1h"}, expect=201)
        assert [b.user for b in await parts.guard.blocked()] == ["bob"]

    async def test_bypass_is_refused_for_a_blocked_user(self, api: Api) -> None:
        await api.call("POST", "/v1/admin/bypasses", "/v1/admin/bypasses", token=api.admin,
                       json={"user": "carol", "for": "10m"}, expect=201)
        await api.parts.guard.block("dave", 60, actor="t", reason="t")
        found = await api.call("POST", "/v1/admin/bypasses", "/v1/admin/bypasses",
                               token=api.admin, json={"user": "dave"}, expect=409)
        assert found["error"] == "user_blocked"
        granted = [e for e in await self._audit(api) if e["event"] == "bypass_granted"]
        assert [(e["user"], e["actor"]) for e in granted] == [("carol", "api:ops")]

    async def test_bad_admin_input_is_400(self, api: Api) -> None:
        for body, detail in (({"user": "x", "for": "forever"}, "invalid_duration"),
                             ({"user": "x", "for": "9" * 5000}, "invalid_duration"),
                             ({"user": "x", "for": "999999999999d"}, "invalid_duration"),
                             ({"user": "x", "for": "3651d"}, "invalid_duration"),
                             ({"user": ""}, "invalid_user"),
                             ({"user": "x", "replace": "yes"}, "invalid_replace")):
            found = await api.call("POST", "/v1/admin/blocks", "/v1/admin/blocks",
                                   token=api.admin, json=body, expect=400)
            assert found["error"] == detail

    async def test_users_without_a_directory_is_501(self, api: Api) -> None:
        found = await api.call("GET", "/v1/admin/users/alice", "/v1/admin/users/{user}",
                               token=api.admin, expect=501)
        assert found["error"] == "no_directory"


class TestDemo:
    async def test_off_by_default(self, api: Api) -> None:
        async with api.http.get("/demo") as r:
            assert r.status == 404
        async with api.http.post("/demo/verifications", json={"user": "demo-a"}) as r:
            assert r.status == 404

    async def test_demo_users_only_and_demo_ids_only(self, redis: Redis) -> None:
        """No token in the browser: demo-* users only, a match number made server-side, and
        the events route refuses the ids of real tokens."""
        parts, _, app = await _start(redis, demo=True)
        token = await parts.tokens.create("signin", "verify", expires_s=None, actor="t")
        async with TestClient(TestServer(app)) as http:
            async with http.get("/demo") as r:
                assert r.status == 200
                assert "EventSource" in await r.text()
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            async with http.post("/demo/verifications",
                                 json={"user": "alice", "phone": PHONE}) as r:
                assert (r.status, (await r.json())["error"]) == (400, "invalid_user")
            async with http.post("/demo/verifications",
                                 json={"user": "demo-a", "phone": PHONE, "mode": "match"}) as r:
                assert r.status == 202
                started = await r.json()
            assert started["calling"] == "+1 201 ••• 0100"
            assert re.fullmatch(r"[0-9]{2}", started["match"])
            [queued] = await _queued(redis)
            assert queued["id"] == started["id"]
            assert queued["match_hash"].startswith("scrypt$")
            async with http.post("/v1/verifications", json={"user": "a", "phone": PHONE},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                real = (await r.json())["id"]
            async with http.get(f"/demo/verifications/{real}/events") as r:
                assert r.status == 404
            async with http.get(f"/v1/verifications/{started['id']}",
                                headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 404

    async def test_the_demo_s_429_says_when_to_retry(self, redis: Redis) -> None:
        """Past DEMO_PER_MIN a minute: 429 with Retry-After, as the API's own 429."""
        _, _, app = await _start(redis, demo=True)
        async with TestClient(TestServer(app)) as http:
            for _ in range(DEMO_PER_MIN):
                async with http.post("/demo/verifications", json={"user": "demo-a"}) as r:
                    assert r.status == 202
            async with http.post("/demo/verifications", json={"user": "demo-a"}) as r:
                assert (r.status, (await r.json())["error"]) == (429, "rate_limited")
                assert 0 < int(r.headers["Retry-After"]) <= 60

    def test_the_phone_is_masked(self) -> None:
        assert masked("+12015550100") == "+1 201 ••• 0100"
        assert masked("+12015550100x12") == "+1 201 ••• 0100"
        assert masked("nonsense") == "•••"


class FakeDirectory:
    """The shape of LocalDirectory (ivr.storage.directory), in memory."""

    def __init__(self) -> None:
        self.entries: dict[str, DirectoryEntry] = {}
        self.actors: list[str] = []

    async def lookup(self, user: str) -> DirectoryEntry | None:
        return self.entries.get(user)

    async def set(self, entry: DirectoryEntry, *, actor: str) -> bool:
        self.actors.append(actor)
        replaced = entry.user in self.entries
        self.entries[entry.user] = entry
        return replaced

    async def delete(self, user: str, *, actor: str) -> bool:
        self.actors.append(actor)
        return self.entries.pop(user, None) is not None


@contextlib.asynccontextmanager
async def _users_api(redis: Redis, directory: FakeDirectory) -> AsyncIterator[Api]:
    """The API over ``directory``, with an admin token."""
    settings = Settings(signing_key=KEY)
    parts = ApiParts.for_redis(settings, redis, Guard(redis, limits(settings)),
                               users=directory)
    token = await parts.tokens.create("ops", "admin", expires_s=None, actor="t")
    assert token
    async with TestClient(TestServer(build_app(parts))) as http:
        yield Api(http, parts, redis, Counted(), token, token)


class TestUsers:
    async def test_put_get_delete_through_the_directory_seam(self, redis: Redis) -> None:
        directory = FakeDirectory()
        async with _users_api(redis, directory) as api:
            path = "/v1/admin/users/{user}"
            found = await api.call("PUT", "/v1/admin/users/Alice", path, expect=200,
                                   json={"phone": "+12015550100", "mode": "pin"})
            assert found == {"user": "alice", "phone": "+12015550100", "mode": "pin",
                             "lang": "en", "source": "local"}
            assert (await api.call("GET", "/v1/admin/users/alice", path,
                                   expect=200))["phone"] == "+12015550100"
            bad = await api.call("PUT", "/v1/admin/users/bob", path, expect=400,
                                 json={"phone": "0100"})
            assert bad["error"] == "invalid_phone"
            for field, value, error in (("lang", None, "invalid_lang"), ("lang", 0, "invalid_lang"),
                                        ("mode", None, "unsupported_mode")):
                bad = await api.call("PUT", "/v1/admin/users/bob", path, expect=400,
                                     json={"phone": "+12015550100", field: value})
                assert bad["error"] == error  # it was stored as "None": every request refused
            await api.call("DELETE", "/v1/admin/users/alice", path, expect=200)
            await api.call("DELETE", "/v1/admin/users/alice", path, expect=404)
            await api.call("GET", "/v1/admin/users/alice", path, expect=404)
        assert directory.actors == ["api:ops", "api:ops", "api:ops"]

    async def test_an_entry_may_have_every_documented_mode(self, redis: Redis) -> None:
        """standard, pin and match (docs/openapi.yaml, `callmfa user set --mode`); match
        was 400 invalid_match_hash: the entry was checked as a request, which needs its
        own match_hash. otp (a code per request) is no entry's mode."""
        directory = FakeDirectory()
        async with _users_api(redis, directory) as api:
            path = "/v1/admin/users/{user}"
            for mode in ("standard", "pin", "match"):
                found = await api.call("PUT", f"/v1/admin/users/u-{mode}", path, expect=200,
                                       json={"phone": PHONE, "mode": mode})
                assert found["mode"] == mode
            bad = await api.call("PUT", "/v1/admin/users/bob", path, expect=400,
                                 json={"phone": PHONE, "mode": "otp"})
            assert bad["error"] == "unsupported_mode"
        assert sorted(directory.entries) == ["u-match", "u-pin", "u-standard"]
