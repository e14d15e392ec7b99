"""A stop-gap user directory until the real one (``callmfa user``, issue 13 part 1) is merged:
one Redis hash per user, ``callmfa:user:<normalised user>`` with ``phone``, ``mode`` and
``lang``, read only. The wiring (:func:`ivr.fronts.radius.build_front`) is the one place that
names it.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ...domain.directory import DirectoryEntry


def user_key(user: str) -> str:
    """The hash of the normalised ``user``."""
    return f"callmfa:user:{user}"


class RedisHashDirectory:
    """A :class:`~ivr.domain.directory.UserDirectory` over ``callmfa:user:*`` hashes."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def lookup(self, user: str) -> DirectoryEntry | None:
        """The entry of ``user``, or None when there is no hash or it holds no phone."""
        raw: Any = await self._redis.hgetall(user_key(user))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if not fields.get("phone"):
            return None
        return DirectoryEntry(user=user, phone=fields["phone"],
                              mode=fields.get("mode") or "standard",
                              lang=fields.get("lang") or "en")
