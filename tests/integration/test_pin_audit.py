"""PIN changes and lockouts are audited and published (real redis-server).

``callmfa pin set`` and ``callmfa pin unlock`` (run as the CLI runs them), and a lockout
from serve's IVR (a real FastAGI session) and from the classic driver's store: each is one
``callmfa:audit`` entry with actor, user and at, published as the same entry on
``callmfa:security``, and none holds the PIN, its hash or its length.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from ivr.ops import pincli
from ivr.settings import Settings
from ivr.storage.keys import AUDIT
from ivr.storage.pins import PinStore, pin_key
from ivr.storage.sync import SyncStore

from ..conftest import RedisServer
from .conftest import Alerts, StartIvr
from .fake_asterisk import run_call

PIN = "5938271046"
WRONG = "1111"
PIN_CALL = {"mode": "pin"}
BASE = {"event", "user", "actor", "at"}


async def audit(redis: Redis) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(AUDIT)
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


def no_pin_material(entries: list[dict[str, str]], pin_hash: str) -> None:
    text = json.dumps(entries)
    assert PIN not in text
    assert pin_hash == "" or pin_hash not in text
    assert "scrypt" not in text
    assert not any("len" in key for entry in entries for key in entry)


async def _pin_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, action: str,
                   user: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return await pincli.run(settings, argparse.Namespace(pin_action=action, user=user))


class TestPinCli:
    async def test_set_replace_and_unlock_are_audited_and_published(
        self, redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """pin set (new, then replaced) and pin unlock: pin_set, pin_set, pin_unlocked, each
        with the administrator as actor; the subscriber sees exactly the audit entries."""
        settings = Settings(redis_url=redis_server.url)
        async with Alerts(redis) as alerts:
            assert await _pin_cli(settings, monkeypatch, "set", "alice", PIN + "\n") == 0
            assert await _pin_cli(settings, monkeypatch, "set", "alice", PIN + "\n") == 0
            await redis.hset(pin_key("alice"), mapping={"denials": 2,
                                                        "locked_until": "forever"})
            assert await _pin_cli(settings, monkeypatch, "unlock", "alice") == 0
            published = await alerts.take(3)
        entries = await audit(redis)
        assert published == entries
        assert [e["event"] for e in entries] == ["pin_set", "pin_set", "pin_unlocked"]
        assert all(set(e) >= BASE and e["user"] == "alice" and e["actor"].startswith("cli:")
                   and e["at"].endswith("Z") for e in entries)
        assert [entries[0]["replaced"], entries[1]["replaced"]] == ["0", "1"]
        assert (entries[2]["was_locked_until"], entries[2]["denials"]) == ("forever", "2")
        stored: Any = await redis.hget(pin_key("alice"), "hash")
        no_pin_material(entries, stored.decode())

    async def test_unlock_of_a_user_without_pin_fails_and_audits_nothing(
        self, redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Nothing to unlock: exit 1, no audit entry."""
        settings = Settings(redis_url=redis_server.url)
        assert await _pin_cli(settings, monkeypatch, "unlock", "nobody") == 1
        assert await redis.xlen(AUDIT) == 0

    async def test_a_refused_pin_is_not_audited(
        self, redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A PIN that is not 4 to 12 digits: exit 2, nothing stored, nothing audited."""
        settings = Settings(redis_url=redis_server.url)
        assert await _pin_cli(settings, monkeypatch, "set", "alice", "12ab\n") == 2
        assert await redis.exists(pin_key("alice"), AUDIT) == 0


class TestLockout:
    async def test_serve_ivr_lockout_is_audited_and_published(
        self, start_ivr: StartIvr
    ) -> None:
        """Two denied calls (pin_lockout_after=2) over FastAGI: the second locks the user
        out, audited as pin_locked_out (actor ivr, its request id, until when)."""
        ivr = await start_ivr(pin_lockout_after=2, pin_lockout_s=900)
        await PinStore.for_settings(ivr.redis, ivr.settings).set_hash(
            "alice", "scrypt$14$8$1$c2FsdA$aGFzaA", actor="test")
        second = "31212121-2121-4121-8121-212121212122"
        async with Alerts(ivr.redis) as alerts:
            for rid in ("31212121-2121-4121-8121-212121212121", second):
                _, stored = await run_call(ivr, rid, WRONG + "#", WRONG + "#",
                                           marker=PIN_CALL)
                assert stored["outcome"] == "denied"
            [published] = await alerts.take(1)
        locked = (await audit(ivr.redis))[-1]
        assert published == locked
        assert {k: locked[k] for k in ("event", "user", "actor", "id", "after")} == {
            "event": "pin_locked_out", "user": "alice", "actor": "ivr", "id": second,
            "after": "2"}
        assert locked["until"].endswith("Z")
        assert locked["at"].endswith("Z")
        no_pin_material([locked], "aGFzaA")

    async def test_classic_driver_lockout_is_the_same_audit(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """The classic driver's store runs the same script with the same arguments: its
        lockout is the same entry (a lockout until unlocked: until forever)."""
        settings = Settings(redis_url=redis_server.url, pin_lockout_after=2, pin_lockout_s=0)
        await PinStore.for_settings(redis, settings).set_hash("bob", "h", actor="test")
        sync = SyncStore(SyncRedis.from_url(redis_server.url), settings)
        try:
            async with Alerts(redis) as alerts:
                assert sync.record_denial("bob", rid="r1") is False
                assert sync.record_denial("bob", rid="r2") is True
                [published] = await alerts.take(1)
        finally:
            sync.close()
        locked = (await audit(redis))[-1]
        assert published == locked
        assert {k: locked[k] for k in ("event", "user", "actor", "id", "until", "after")} == {
            "event": "pin_locked_out", "user": "bob", "actor": "ivr", "id": "r2",
            "until": "forever", "after": "2"}
        assert [e["event"] for e in await audit(redis)] == ["pin_set", "pin_locked_out"]
