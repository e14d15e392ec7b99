"""What the HTTP API's handlers share: the parts of the service they use, and the
authenticated token of a request."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from redis.asyncio import Redis

from ...client import VerificationClient
from ...domain.directory import DirectoryEntry, UserDirectory
from ...domain.outcome import OutcomeRecord
from ...domain.signing import verified
from ...settings import Settings
from ...storage.guard import Guard
from ...storage.results import ResultListener
from ...storage.tokens import Submissions, Token, Tokens


class UserAdmin(UserDirectory, Protocol):
    """The user directory's writable side, for /v1/admin/users: the shape of
    ``ivr.storage.directory.LocalDirectory`` (``callmfa user``'s store), which audits its
    own writes (``user_set``, ``user_deleted``)."""

    async def set(self, entry: DirectoryEntry, *, actor: str) -> bool:
        """Create or replace ``entry``'s user; True if replaced."""
        ...

    async def delete(self, user: str, *, actor: str) -> bool:
        """Delete ``user``; False if unknown."""
        ...


class Observer(Protocol):
    """Told of refusals and submissions (the metrics)."""

    def api_request_refused(self, reason: str) -> None:
        """A request was refused for ``reason`` (unauthorized, forbidden, rate_limited)."""

    def api_verification_submitted(self) -> None:
        """A verification was queued."""


@dataclass(frozen=True)
class ApiParts:
    """What the API's handlers use: one of each per ``callmfa serve``."""

    settings: Settings
    redis: Redis
    tokens: Tokens
    submissions: Submissions
    guard: Guard
    results: ResultListener  # with the verifying parser: ``parts.parse``
    watcher: VerificationClient  # for its ``watch`` (the progress events); never started
    observer: Observer | None
    users: UserAdmin | None = None  # the directory's admin seam, once wired

    def parse(self, raw: str | bytes) -> OutcomeRecord:
        """An outcome as stored, its signature checked when the service has a key."""
        keys = self.settings.verifying_keys
        return verified(keys, raw) if keys else OutcomeRecord.from_json(raw)

    @classmethod
    def for_redis(cls, settings: Settings, redis: Redis, guard: Guard,
                  observer: Observer | None = None, users: UserAdmin | None = None) -> ApiParts:
        """The parts over one Redis client."""
        keys = settings.verifying_keys
        parse = functools.partial(verified, keys) if keys else OutcomeRecord.from_json
        return cls(
            settings=settings, redis=redis, tokens=Tokens(redis, guard),
            submissions=Submissions(redis, idempotency_ttl_s=settings.api_idempotency_ttl_s),
            guard=guard, results=ResultListener(redis, parse),
            watcher=VerificationClient(redis, signing_key=settings.signing_key,
                                       previous_signing_key=settings.signing_key_previous,
                                       insecure_unsigned=bool(settings.insecure_unsigned)),
            observer=observer, users=users,
        )


PARTS = web.AppKey("parts", ApiParts)
TOKEN = web.RequestKey("token", Token)  # the request's authenticated token


def token_of(request: web.Request) -> Token:
    """The authenticated token of an API request."""
    return request[TOKEN]
