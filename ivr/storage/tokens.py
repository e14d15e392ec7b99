"""The HTTP API's tokens, rate limits and submissions, in Redis.

A token is shown once, when it is made; Redis keeps only its SHA-256 (a token is 256 random
bits: a fast hash is enough, and lets every request be checked in one lookup). Creating and
revoking a token is audited like a block (``callmfa:audit``, ``callmfa:security``).

A submission is one Lua script, so that a crash cannot split it: it honours the token's
Idempotency-Key, refuses an id that another token used, records which token owns the id
(and when it was queued: where its progress events start), and adds the request to
``callmfa:requests``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from ..domain.outcome import iso
from .guard import Guard
from .keys import REQUESTS

TOKENS = "callmfa:tokens"  # hash: token name -> SHA-256 of the token
TOKEN_PREFIX = "cmfa_"  # noqa: S105 - what every token starts with, not a secret
SCOPES = ("verify", "admin")


def token_key(digest: str) -> str:
    """The token whose SHA-256 is ``digest``: a hash of name, scope, created and expires."""
    return f"callmfa:token:{digest}"


def owner_key(rid: str) -> str:
    """Which token queued ``rid``, and when (``at_ms``, Redis' clock)."""
    return f"callmfa:api:req:{rid}"


def digest(token: str) -> str:
    """The stored form of a token (one with undecodable bytes, as aiohttp passes them on,
    matches none)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Token:
    """A token as stored: never the token itself."""

    name: str
    scope: str
    created_at: float
    expires_at: float | None

    def to_wire(self) -> dict[str, Any]:
        """As ``callmfa token list`` and the API show it."""
        return {"name": self.name, "scope": self.scope, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at)}


def _token(name: str, raw: dict[bytes, bytes]) -> Token | None:
    if not raw:
        return None
    expires = float(raw.get(b"expires_at", b"0") or 0)
    return Token(name, raw[b"scope"].decode(), float(raw[b"created_at"]), expires or None)


class Tokens:
    """Making, listing, revoking and checking tokens (audited with ``guard``)."""

    def __init__(self, redis: Redis, guard: Guard) -> None:
        self.redis = redis
        self._guard = guard

    async def create(self, name: str, scope: str, *, expires_s: int | None,
                     actor: str) -> str | None:
        """A new token for ``name`` (returned once); None if ``name`` has one already."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        found = digest(token)
        if not await self.redis.hsetnx(TOKENS, name, found):
            return None
        now = time.time()
        fields: dict[Any, Any] = {"name": name, "scope": scope, "created_at": repr(now),
                  "expires_at": repr(now + expires_s) if expires_s else "0"}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(token_key(found), mapping=fields)
            if expires_s:
                pipe.expire(token_key(found), expires_s)
            await pipe.execute()
        await self._guard.record("token_created", "", actor=actor, token=name, scope=scope,
                                 expires_at=iso(now + expires_s) or "" if expires_s else "")
        return token

    async def check(self, token: str) -> Token | None:
        """The live token ``token`` is, or None (unknown, revoked or expired)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        raw: Any = await self.redis.hgetall(token_key(digest(token)))
        if not raw:
            return None
        found = _token(raw[b"name"].decode(), raw)
        if found is None or (found.expires_at is not None and found.expires_at <= time.time()):
            return None
        return found

    async def list(self) -> list[Token]:
        """Every token, by name (expired ones are shown until revoked)."""
        names: Any = await self.redis.hgetall(TOKENS)
        out = []
        for name, found in sorted(names.items()):
            raw: Any = await self.redis.hgetall(token_key(found.decode()))
            token = _token(name.decode(), raw)
            out.append(token or Token(name.decode(), "?", 0.0, 0.0))  # expired and gone
        return out

    async def revoke(self, name: str, *, actor: str) -> bool:
        """Revoke ``name``'s token at once; False if there is none."""
        found: Any = await self.redis.hget(TOKENS, name)
        if found is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(token_key(found.decode()))
            pipe.hdel(TOKENS, name)
            await pipe.execute()
        await self._guard.record("token_revoked", "", actor=actor, token=name)
        return True

    async def spend(self, name: str, per_min: int) -> int | None:
        """Count one request of token ``name``; None if within ``per_min`` this minute, else
        the seconds until the next minute (a fixed window on this host's clock)."""
        now = time.time()
        minute = int(now // 60)
        key = f"callmfa:api:rate:{name}:{minute}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 61)
            count, _ = await pipe.execute()
        if int(count) <= per_min:
            return None
        return max(1, int((minute + 1) * 60 - now + 0.999))


class Submitted(StrEnum):
    """What a submission found."""

    QUEUED = "queued"  # added to callmfa:requests
    REPLAY = "replay"  # this token's Idempotency-Key was used before: its id, not queued again
    EXISTS = "exists"  # this token queued this id before: not queued again
    ID_IN_USE = "id_in_use"  # another token's id: refused


_SUBMIT = """
if ARGV[7] == '1' then
  local prior = redis.call('GET', KEYS[1])
  if prior then return {'replay', prior} end
end
local owner = redis.call('HGET', KEYS[2], 'token')
if owner and owner ~= ARGV[2] then return {'id_in_use', ''} end
if ARGV[7] == '1' then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[3], 'EX', ARGV[4])
end
if owner then return {'exists', ''} end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'at_ms', ms)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'request', ARGV[6])
return {'queued', ''}
"""


@dataclass(frozen=True)
class Submission:
    """A submission's verdict: the id to answer with and, for a replay, the body's
    fingerprint the key was first used with."""

    verdict: Submitted
    id: str
    fingerprint: str = ""


class Submissions:
    """Queues API requests on the Redis contract (one script per submission)."""

    def __init__(self, redis: Redis, *, idempotency_ttl_s: int) -> None:
        self.redis = redis
        self._ttl = idempotency_ttl_s
        self._submit = redis.register_script(_SUBMIT)

    async def submit(self, token: str, rid: str, payload: str, *, owner_ttl_s: int,
                     idempotency_key: str | None, fingerprint: str) -> Submission:
        """Queue ``payload`` (a request of id ``rid``) for ``token``."""
        idem = (f"callmfa:api:idem:{token}:"
                f"{hashlib.sha256((idempotency_key or '').encode()).hexdigest()}")
        reply: Any = await self._submit(
            keys=[idem, owner_key(rid), REQUESTS],
            args=[rid, token, fingerprint, self._ttl, owner_ttl_s, payload,
                  "1" if idempotency_key is not None else "0"],
        )
        verdict, prior = (v.decode() if isinstance(v, bytes) else v for v in reply)
        if verdict == Submitted.REPLAY:
            first_id, _, first_fingerprint = prior.partition(" ")
            return Submission(Submitted.REPLAY, first_id, first_fingerprint)
        return Submission(Submitted(verdict), rid)

    async def owner(self, rid: str) -> tuple[str, int] | None:
        """(token name, queued at in epoch ms) of an id queued through the API, or None."""
        raw: Any = await self.redis.hmget(owner_key(rid), ["token", "at_ms"])
        if raw[0] is None:
            return None
        return raw[0].decode(), int(raw[1])


def fingerprint(body: dict[str, Any]) -> str:
    """The SHA-256 of a request body, canonical (an Idempotency-Key's body must not change)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()
