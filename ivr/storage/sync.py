"""The Redis side for the classic AGI driver: redis-py's sync client, the same keys and scripts.

Imported only by the classic AGI script (one short-lived process per call), so it loads
nothing from ``redis.asyncio``.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from ..domain.outcome import OutcomeRecord
from ..settings import Settings
from .keys import (
    CLAIM_IVR,
    EVENTS,
    RECORD_AUDIT,
    REQUESTS,
    STORE_OUTCOME,
    call_key,
    event_fields,
    fraud_report_args,
    outcome_script_args,
)
from .pins import (
    RECORD_DENIAL,
    RESET_PIN,
    PinState,
    denial_script_args,
    parse_pin_state,
    pin_key,
    reset_args,
)


class SyncStore:
    """What one IVR call reads and writes: its marker, the PIN state, events, the outcome."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self.unreplicated = False  # the last outcome was not replicated within the WAIT

    @classmethod
    def connect(cls, settings: Settings) -> SyncStore:
        """A single connection with the configured timeouts (one call, one process); with
        CALLMFA_REDIS_SENTINELS, to the primary the Sentinels name, followed across a
        failover as :func:`ivr.storage.store.connect_for` does."""
        timeouts = {"socket_connect_timeout": settings.connect_timeout_s,
                    "socket_timeout": settings.connect_timeout_s + 5}
        if not settings.redis_sentinels:
            return cls(Redis.from_url(settings.redis_url, **timeouts), settings)
        # Imported here: a script on a plain Redis loads none of it.
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.connection import SSLConnection, parse_url
        from redis.exceptions import AuthenticationError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from redis.retry import Retry
        from redis.sentinel import Sentinel, SentinelManagedConnection

        class Following(SentinelManagedConnection):
            # As store.FollowingConnection: asks the Sentinels again on a reconnect, and
            # tries their primary once per retry of the command.
            resolving = False

            def connect(self) -> None:
                self.resolving = True
                try:
                    super().connect()  # type: ignore[no-untyped-call]  # redis-py: untyped
                finally:
                    self.resolving = False

            def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
                if self._sock:
                    return
                if self.resolving:
                    super().connect_check_health(*args, **kwargs)
                    return
                self.resolving = True
                try:
                    self._connect_retry()  # type: ignore[no-untyped-call]  # redis-py: untyped
                finally:
                    self.resolving = False

        class FinalError(Exception):
            def __init__(self, error: Exception) -> None:
                self.error = error

        class LoginNotRetried(Retry):
            # As retry.LoginNotRetried (which is asyncio's): a refused login is final, and
            # so is any error once the plan's budget has gone by. The error goes
            # through redis-py's loop as one it does not retry, because the Asterisk host's
            # redis-py may be older (6.x: no is_retryable).
            def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
                ends = time.monotonic() + p.budget_s

                def once() -> Any:
                    try:
                        return do()
                    except AuthenticationError as e:
                        raise FinalError(e) from e
                    except (RedisConnectionError, RedisTimeoutError) as e:
                        if time.monotonic() >= ends:
                            raise FinalError(e) from e
                        raise
                try:
                    return super().call_with_retry(once, fail, *args, **kwargs)
                except FinalError as r:
                    raise r.error from None

        class FollowingSSL(Following, SSLConnection):
            pass

        from .sentinel import RETRY_BASE_S, RETRY_CAP_S, plan

        # redis-py's sync Sentinel and parse_url are untyped.
        options = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        p = plan(settings, options, timeout_s=settings.connect_timeout_s)
        timeouts["socket_timeout"] = settings.connect_timeout_s  # as store.connect_for
        manager = Sentinel(  # type: ignore[no-untyped-call]
            list(p.addresses), sentinel_kwargs=dict(p.sentinel))
        node = dict(p.node)
        tls = node.pop("ssl", False)
        redis: Redis = manager.master_for(  # type: ignore[no-untyped-call]
            p.service,
            connection_class=FollowingSSL if tls else Following,
            retry=LoginNotRetried(
                ExponentialWithJitterBackoff(base=RETRY_BASE_S, cap=RETRY_CAP_S),
                retries=p.retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            **timeouts, **node,
        )
        return cls(redis, settings)

    def close(self) -> None:
        """Close the connection."""
        self._redis.close()

    def request_payload(self, entry_id: str) -> bytes | None:
        """The request in the stream entry ``entry_id`` (an otp call's code is read there)."""
        if not entry_id:
            return None
        rows: Any = self._redis.xrange(REQUESTS, min=entry_id, max=entry_id, count=1)
        return (rows[0][1] or {}).get(b"request") if rows else None

    def call_info(self, rid: str) -> dict[str, str]:
        """The call marker's fields (empty if unknown)."""
        raw: Any = self._redis.hgetall(call_key(rid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def claim_ivr(self, rid: str, at: float) -> bool:
        """Take the call for this IVR process; False if another session took it first."""
        return bool(self._redis.eval(CLAIM_IVR, 1, call_key(rid), str(at)))

    def pin_state(self, user: str) -> PinState:
        """The user's PIN hash and lockout."""
        raw: Any = self._redis.hgetall(pin_key(user))
        return parse_pin_state(raw, time.time())

    def event(self, rid: str, name: str, at: float | None = None) -> None:
        """Append a progress event."""
        data: dict[Any, Any] = event_fields(rid, name, at)
        self._redis.xadd(EVENTS, data, maxlen=self._settings.events_maxlen, approximate=True)

    def store_outcome(self, record: OutcomeRecord, *, input_at: float | None = None) -> bool:
        """Store and publish the outcome; False if the id already had one.

        With ``input_at``, the ``input`` event is appended first, in the same round trip.
        """
        keys, args = outcome_script_args(
            record, self._settings.result_ttl_s, self._settings.events_maxlen, input_at,
            signing_key=self._settings.signing_key.encode(),
            webhook_url=self._settings.webhook_url,
        )
        replicas = self._settings.redis_wait_replicas
        if replicas <= 0:
            return bool(self._redis.eval(STORE_OUTCOME, len(keys), *keys, *args))
        # WAIT on the same connection: the replicas that have this outcome.
        pipe = self._redis.pipeline(transaction=False)
        pipe.eval(STORE_OUTCOME, len(keys), *keys, *args)
        pipe.execute_command(  # type: ignore[no-untyped-call]  # redis-py: untyped
            "WAIT", replicas, self._settings.redis_wait_timeout_ms)
        stored, acked = pipe.execute()
        self.unreplicated = int(acked) < replicas
        return bool(stored)

    def report_fraud(self, *, rid: str, user: str, number: str, context: str) -> None:
        """0#: block the user (or only audit, with CALLMFA_FRAUD_BLOCK_S=0), as serve does."""
        keys, args = fraud_report_args(rid=rid, user=user, number=number, context=context,
                                       block_s=self._settings.fraud_block_s)
        if not self._redis.eval(RECORD_AUDIT, len(keys), *keys, *args):
            # A longer block stands: the report itself is still audited.
            keys, args = fraud_report_args(rid=rid, user=user, number=number,
                                           context=context, block_s=0)
            self._redis.eval(RECORD_AUDIT, len(keys), *keys, *args)

    def record_denial(self, user: str, *, rid: str = "") -> bool:
        """Count a denied PIN call; True when it locked the user out (audited, as serve's
        IVR does: the same script and arguments)."""
        keys, args = denial_script_args(user, rid=rid,
                                        lockout_after=self._settings.pin_lockout_after,
                                        lockout_s=self._settings.pin_lockout_s)
        return bool(self._redis.eval(RECORD_DENIAL, len(keys), *keys, *args))

    def reset_pin(self, user: str, upgrade: tuple[str, str] | None = None) -> int:
        """Clear the user's denials after a success, and apply a hash ``upgrade`` (see
        :meth:`ivr.storage.pins.PinStore.reset`)."""
        return int(self._redis.eval(RESET_PIN, 1, pin_key(user), *reset_args(upgrade)))
