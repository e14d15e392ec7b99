"""``callmfa user`` against a real redis-server: set, show, list, delete and an atomic
import, each change audited (and published on callmfa:security); serve's directory reads
what the CLI wrote."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from ivr.domain.directory import DirectoryEntry
from ivr.ops import usercli
from ivr.settings import Settings
from ivr.storage.directory import LocalDirectory, user_key
from ivr.storage.keys import AUDIT

from ..conftest import RedisServer
from .conftest import Alerts


async def audit(redis: Redis) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(AUDIT)
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


async def cli(redis_server: RedisServer, action: str, **fields: Any) -> int:
    settings = Settings(redis_url=redis_server.url)
    return await usercli._run(settings, argparse.Namespace(user_action=action, **fields))


def setting(user: str, phone: str, mode: str = "standard", lang: str = "en") -> dict[str, str]:
    return {"user": user, "phone": phone, "mode": mode, "lang": lang}


class TestUserCli:
    async def test_set_show_list_delete(
        self, redis: Redis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await cli(redis_server, "set", **setting("alice", "(201) 555-0100")) == 0
        assert await cli(redis_server, "set", **setting("bob", "+1 201 555 0101 x7", "pin",
                                                        "fr")) == 0
        raw: Any = await redis.hgetall(user_key("alice"))
        stored = {k.decode(): v.decode() for k, v in raw.items()}
        assert stored["phone"] == "+12015550100"
        assert (stored["mode"], stored["lang"]) == ("standard", "en")
        assert stored["updated_by"].startswith("cli:")
        assert stored["updated_at"].endswith("Z")
        capsys.readouterr()
        assert await cli(redis_server, "show", user="bob") == 0
        out = capsys.readouterr().out
        assert "phone: +12015550101x7\nmode: pin\nlang: fr\n" in out
        assert await cli(redis_server, "list") == 0
        rows = [line.split("\t")[:4] for line in capsys.readouterr().out.splitlines()]
        assert rows == [["alice", "+12015550100", "standard", "en"],
                        ["bob", "+12015550101x7", "pin", "fr"]]
        assert await cli(redis_server, "delete", user="alice") == 0
        assert not await redis.exists(user_key("alice"))
        assert await cli(redis_server, "delete", user="alice") == 1
        assert await cli(redis_server, "show", user="alice") == 1
        assert "alice is not in the directory" in capsys.readouterr().err

    async def test_changes_are_audited_and_published(
        self, redis: Redis, redis_server: RedisServer
    ) -> None:
        """user_set (new, then replacing a phone) and user_deleted, each with the actor and
        the phone it replaced; the subscriber sees the same entries."""
        async with Alerts(redis) as alerts:
            await cli(redis_server, "set", **setting("alice", "+12015550100"))
            await cli(redis_server, "set", **setting("alice", "+12015550109", "match"))
            await cli(redis_server, "delete", user="alice")
            published = await alerts.take(3)
        entries = await audit(redis)
        assert [e["event"] for e in entries] == ["user_set", "user_set", "user_deleted"]
        assert all(e["user"] == "alice" and e["actor"].startswith("cli:") and e["at"]
                   for e in entries)
        assert (entries[0]["phone"], entries[0]["was_phone"]) == ("+12015550100", "")
        assert (entries[1]["phone"], entries[1]["was_phone"]) == ("+12015550109",
                                                                  "+12015550100")
        assert entries[1]["mode"] == "match"
        assert entries[2]["was_phone"] == "+12015550109"
        assert published == entries

    async def test_a_refused_value_writes_nothing(
        self, redis: Redis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await cli(redis_server, "set", **setting("alice", "+1 (555) 010-0100")) == 2
        assert "not a valid number" in capsys.readouterr().err
        assert await cli(redis_server, "set", **setting("alice", "+12015550100",
                                                        lang="x!")) == 2
        assert await redis.dbsize() == 0

    async def test_import_is_atomic_and_audited_once(
        self, redis: Redis, redis_server: RedisServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        await cli(redis_server, "set", **setting("alice", "+12015550100"))
        good = tmp_path / "users.csv"
        good.write_text("\ufeffuser,phone,mode,lang\n"  # a BOM, as spreadsheets write it
                        "Alice,+1 201 555 0110,pin,\n"
                        + "".join(f"user{n},+1201555{n:04d},,\n" for n in range(200, 400)))
        assert await cli(redis_server, "import", file=good) == 0
        assert "imported 201 users" in capsys.readouterr().out
        directory = LocalDirectory(redis)
        assert await directory.lookup("alice") == DirectoryEntry(
            user="alice", phone="+12015550110", mode="pin", lang="en")
        assert await directory.count() == 201
        entries = await audit(redis)
        assert [e["event"] for e in entries] == ["user_set", "users_imported"]
        assert entries[1]["count"] == "201"
        assert entries[1]["replaced"] == "1"
        assert entries[1]["source"] == str(good)
        assert entries[1]["actor"].startswith("cli:")

    async def test_an_import_with_a_refused_row_imports_nothing(
        self, redis: Redis, redis_server: RedisServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        bad = tmp_path / "bad.csv"
        bad.write_text("user,phone,mode,lang\n"
                       "alice,+12015550100,,\n"
                       "bob,+1 (555) 010-0100,,\n"
                       "carol,+12015550102,sms,\n"
                       "dave,+12015550103,,\n")
        assert await cli(redis_server, "import", file=bad) == 1
        err = capsys.readouterr().err
        assert f"{bad}:3: phone: " in err
        assert "not a valid number" in err
        assert f"{bad}:4: mode must be one of" in err
        assert "2 row(s) refused: nothing imported" in err
        assert await redis.dbsize() == 0  # no user, no audit entry

    async def test_an_unreadable_file_is_a_usage_error(
        self, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert await cli(redis_server, "import", file=tmp_path / "missing.csv") == 2
        latin = tmp_path / "latin.csv"
        latin.write_bytes(b"user,phone\nren\xe9,+12015550100\n")
        assert await cli(redis_server, "import", file=latin) == 2
        err = capsys.readouterr().err
        assert "cannot read" in err
        assert "is not UTF-8 text" in err


class TestLocalDirectory:
    async def test_lookup_of_an_unknown_user_is_none(self, redis: Redis) -> None:
        assert await LocalDirectory(redis).lookup("nobody") is None
