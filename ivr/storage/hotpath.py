"""The few Redis commands every verification runs (the Store's scripts, the read of requests)
and the outcome's message it receives, with less than redis-py's client spends on each.

redis-py's client costs 100-190 us of CPU per command around the round trip itself: the
blocking pool's checkout (an ``asyncio.Condition`` and a timeout, then a check that the
connection has no unread data), ``Retry.call_with_retry``, the observability hooks, the
encoder's work on each argument, and, on Python 3.11, a new Task for each write
(``asyncio.wait_for``). A verification runs five or six such commands. :class:`HotPath` keeps
what matters of it and drops the rest:

- the connections are redis-py's own, taken from the client's pool once and kept in a free
  list, so connecting, TLS, AUTH, the Sentinels' lookup of the primary
  (:class:`~ivr.storage.store.FollowingConnection`), the ``READONLY`` of a demoted primary
  and the reply parser (hiredis's ``Reader`` when installed) are redis-py's, unchanged; a
  connection beyond the free list's size is borrowed from the pool and given back;
- the command is packed by hiredis's ``pack_command`` (by :func:`pack_python` without
  hiredis): callmfa's arguments are only ``str``, ``bytes`` and ``int``;
- a ``ConnectionError`` or ``TimeoutError`` closes the connection and runs the command again
  under the connection's own ``Retry`` (the backoff and the number of retries the client
  would use), after which the callers' own retries (``retrying``) see the same redis-py
  exceptions as before;
- ``NOSCRIPT`` (a restarted or newly promoted primary) runs the script by ``EVAL``, which
  caches it again;
- a subscriber reads its messages from its connection (:func:`next_published`), and leaves
  everything else (reconnecting, subscribing again, the health check) to redis-py's
  ``get_message``.

Only the wire part is written here, because redis-py has no public call between
``execute_command`` (every layer) and ``send_packed_command`` / ``read_response`` (none).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_packer: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _packer
except ImportError:  # the optional fast packages are not installed
    _packer = None

Arg = str | bytes | int
# Connections a HotPath keeps for itself at most (and at most a quarter of its pool's).
HELD = 16


@dataclass
class RedisTraffic:
    """What one process asked of Redis: the commands it sent and the round trips it made
    (a pipeline is one round trip, a script one command), on every connection of a client."""

    commands: int = 0
    round_trips: int = 0


def pack_python(args: Sequence[Arg]) -> bytes:
    """One command in RESP (an array of bulk strings), without hiredis."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP, by hiredis when installed."""
    return _packer(args) if _packer is not None else pack_python(args)


class LeanConnection(AbstractConnection):
    """A connection whose write skips ``asyncio.wait_for`` (on Python 3.11, a new Task for
    every command) when it is connected and no health check is due: the bytes go to the
    transport at once, and only a write the transport could not take whole is drained under
    the socket timeout. Anything else is redis-py's ``send_packed_command``."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Write ``command`` (bytes or a list of them), as redis-py does."""
        writer = self._writer
        if (writer is None or not self.is_connected or isinstance(command, str)
                or (check_health and self.health_check_interval
                    and asyncio.get_running_loop().time() > self.next_health_check)):
            await super().send_packed_command(command, check_health)
            return
        try:
            if isinstance(command, bytes):
                writer.write(command)
            else:
                writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {e}") from e
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class HotScript:
    """A Lua script run by a :class:`HotPath`: ``await script(keys=..., args=...)``, as
    redis-py's ``AsyncScript``."""

    def __init__(self, hot: HotPath, script: str) -> None:
        self.hot = hot
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis' script id

    def __repr__(self) -> str:
        return f"HotScript({self.sha})"

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        """The script's reply."""
        return await self.hot.evalsha(self, keys, args)


class HotPath:
    """Commands on connections of ``redis``'s pool, without its client's layers."""

    def __init__(self, redis: Redis, *, held: int = HELD) -> None:
        self._pool = redis.connection_pool
        self._idle: list[AbstractConnection] = []
        self._held = 0
        self._cap = min(held, int(getattr(self._pool, "max_connections", 0) or 0) // 4)
        # Set on the connection class when the client's traffic is counted (store.counting).
        self._traffic: RedisTraffic | None = getattr(self._pool.connection_class, "traffic",
                                                     None)

    def register_script(self, script: str) -> HotScript:
        """A script run by this hot path."""
        return HotScript(self, script)

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply (a ``ResponseError`` reply is raised)."""
        return (await self._round_trip(pack(args), 1))[0]

    async def evalsha(self, script: HotScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` by its SHA1, by its text if Redis does not have it."""
        try:
            return (await self._round_trip(
                pack(("EVALSHA", script.sha, len(keys), *keys, *args)), 1))[0]
        except NoScriptError:
            return await self.execute("EVAL", script.script, len(keys), *keys, *args)

    async def run(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Send ``commands`` in one write on one connection, then read their replies (one
        round trip); the first error reply is raised once every reply is read."""
        return await self._round_trip(b"".join(map(pack, commands)), len(commands))

    async def _round_trip(self, data: bytes, n: int) -> list[Any]:
        if self._idle:
            conn, held = self._idle.pop(), True
        else:
            conn, held = await self._take()
        try:
            try:
                replies = await self._exchange(conn, data, n)
            except (RedisConnectionError, RedisTimeoutError):
                # The reply is lost with the connection (redis-py closed it): again, on a new
                # one (to whichever primary the Sentinels name now).
                await conn.disconnect()
                replies = await conn.retry.call_with_retry(
                    lambda: self._exchange(conn, data, n), _closer(conn))
        except BaseException:
            # Cancelled or failed between the write and the last reply: the replies still
            # due would answer the connection's next command.
            await conn.disconnect(nowait=True)
            raise
        finally:
            if held:
                self._idle.append(conn)
            else:
                await self._pool.release(conn)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _exchange(self, conn: AbstractConnection, data: bytes, n: int) -> list[Any]:
        if self._traffic is not None:
            self._traffic.commands += n
        await conn.send_packed_command(data)
        replies: list[Any] = []
        for _ in range(n):
            try:
                replies.append(await conn.read_response())
            except ResponseError as e:  # an error reply: the connection is still in step
                replies.append(e)
        return replies

    async def _take(self) -> tuple[AbstractConnection, bool]:
        """A connection of the pool's: kept (True) while fewer than the cap are."""
        conn: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py: untyped
        if self._held < self._cap:
            self._held += 1
            return conn, True
        return conn, False


def _closer(conn: AbstractConnection) -> Callable[[Exception], Awaitable[None]]:
    async def close(_error: Exception) -> None:
        await conn.disconnect()
    return close


async def next_published(pubsub: PubSub, timeout_s: float) -> Any:
    """The data of the next message ``pubsub`` receives, or None (nothing within
    ``timeout_s``, or a reply that is not a message: a subscription's confirmation, a health
    check's PONG).

    Read from the connection itself (:mod:`redis.asyncio.client`'s ``get_message`` wraps
    every read in its retry and observability layers and makes a dict of each message);
    redis-py's ``get_message`` is used whenever there is more to do than read: no
    connection yet or any more, a health check due, or a read that failed (it reconnects and
    subscribes again).
    """
    conn = pubsub.connection
    if (conn is None or not conn.is_connected or (
            conn.health_check_interval
            and asyncio.get_running_loop().time() > conn.next_health_check)):
        return _data(await pubsub.get_message(timeout=timeout_s))
    try:
        reply = await conn.read_response(timeout=timeout_s, disconnect_on_error=False,
                                         push_request=True)
    except (RedisConnectionError, RedisTimeoutError):
        await conn.disconnect()
        return _data(await pubsub.get_message(timeout=timeout_s))
    if isinstance(reply, list) and len(reply) == 3 and reply[0] in (b"message", "message"):
        return reply[2]
    return None


def _data(message: dict[str, Any] | None) -> Any:
    return message["data"] if message is not None and message["type"] == "message" else None
