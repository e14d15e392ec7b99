"""The sign-in side: ask for a verification and wait for its outcome, over Redis only.

    key = os.environ["CALLMFA_SIGNING_KEY"]  # the key `callmfa serve` signs outcomes with
    async with VerificationClient.from_url("redis://127.0.0.1:6379/0", signing_key=key) as client:
        record = await client.verify(user="alice", phone="+12015550100")
        if record.outcome is Outcome.APPROVED: ...

One client shares one pub/sub subscription among all its waiting calls. Given the
service's ``signing_key`` (CALLMFA_SIGNING_KEY), it refuses unsigned or tampered outcomes:
``wait`` and ``verify`` raise :class:`~ivr.exceptions.OutcomeSignatureError`. A client
without a key is refused (:class:`~ivr.exceptions.SettingsError`) unless its caller passes
``insecure_unsigned=True``: it then warns once, and accepts what Redis holds. While the key
is rotated, ``previous_signing_key`` (CALLMFA_SIGNING_KEY_PREVIOUS) is believed too.

Every outcome must also answer the request: its id, its user, and a ``requested_at`` no
earlier than the submission. A genuine signed outcome of another request, copied into this
request's result key, raises :class:`~ivr.exceptions.OutcomeBindingError`; a forged or
foreign published message is ignored and the wait goes on.

Every call ends by its own timeout, Redis' retries included, even when Redis stops
answering: ``submit`` by the client's ``timeout_s``, ``wait``, ``verify`` and ``watch`` by
theirs plus ``READ_GRACE_S``; they raise TimeoutError when Redis did not answer in time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog
from redis.asyncio import Redis

from .domain.codes import hash_code
from .domain.outcome import OutcomeRecord, iso
from .domain.request import MAX_REQUEST_BYTES
from .domain.signing import verified
from .exceptions import SettingsError
from .storage.results import ResultListener
from .storage.store import EVENTS, REQUESTS, Durability, Entry, connect, connect_for

if TYPE_CHECKING:
    from .settings import Settings

log = structlog.get_logger("ivr.client")

# What the client remembers of its own submissions, for the binding check of a later wait.
REMEMBERED_SUBMISSIONS = 10_000
# How long a wait, verify or watch may go on past its timeout_s for its last read of Redis.
READ_GRACE_S = 1.0


@dataclass(frozen=True)
class ProgressEvent:
    """One entry of ``callmfa:events`` for a verification."""

    id: str
    event: str
    at: str
    fields: Mapping[str, str]


class VerificationClient:
    """Submits requests to ``callmfa:requests`` and reads outcomes and progress."""

    def __init__(
        self, redis: Redis, *, signing_key: str | bytes = b"", insecure_unsigned: bool = False,
        durability: Durability | None = None, timeout_s: float = 5.0,
        previous_signing_key: str | bytes = b"",
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s  # the most a submit takes, Redis' retries included
        self._durability = durability or Durability()  # WAIT for replicas after the XADD
        key, previous = (k.encode() if isinstance(k, str) else k
                         for k in (signing_key, previous_signing_key))
        if not key and not insecure_unsigned:
            raise SettingsError(
                "VerificationClient needs the key callmfa signs outcomes with "
                "(signing_key=, CALLMFA_SIGNING_KEY): without it a forged 'approved' written to "
                "Redis is believed. Pass insecure_unsigned=True (CALLMFA_INSECURE_UNSIGNED=1 "
                "for from_settings) to accept unsigned outcomes on purpose")
        if not key:
            log.warning("outcomes_unverified",
                        reason="no signing key: forged outcomes cannot be told apart")
        # While the key is rotated, outcomes signed with the one before it are believed too.
        keys = (key, previous) if previous else (key,)
        parse = functools.partial(verified, keys) if key else OutcomeRecord.from_json
        self._results = ResultListener(redis, parse)
        self._started = False
        self._submitted: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id: user, time

    def __repr__(self) -> str:
        return f"VerificationClient({self._redis!r}, signing_key=***)"

    @classmethod
    def from_url(
        cls, url: str, *, max_connections: int = 50, timeout_s: float = 5.0,
        signing_key: str | bytes = b"", insecure_unsigned: bool = False,
        previous_signing_key: str | bytes = b"",
    ) -> Self:
        """A client with its own connection pool (closed by :meth:`aclose`); ``timeout_s``
        bounds a connect and a :meth:`submit`, retries included."""
        # A read waits a little longer than watch's XREAD blocks (1 s), no more: every call
        # has its own deadline, and a reply that late is not waited for.
        redis = connect(url, max_connections=max_connections, timeout_s=timeout_s,
                        socket_timeout_s=timeout_s + 1)
        return cls(redis, signing_key=signing_key, insecure_unsigned=insecure_unsigned,
                   timeout_s=timeout_s, previous_signing_key=previous_signing_key)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """A client of the service configured by ``settings``: its Redis (or its Sentinels,
        followed across failovers), its signing key (or CALLMFA_INSECURE_UNSIGNED=1), and
        CALLMFA_REDIS_WAIT_REPLICAS for the request entry. A submit may take as long as a
        failover (CALLMFA_REDIS_FAILOVER_S), as the service's own commands do."""
        return cls(connect_for(settings, max_connections=50), signing_key=settings.signing_key,
                   previous_signing_key=settings.signing_key_previous,
                   insecure_unsigned=bool(settings.insecure_unsigned),
                   durability=Durability.from_settings(settings),
                   timeout_s=settings.redis_failover_s + settings.connect_timeout_s)

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the subscription and close the connection pool."""
        await self.stop()
        await self._redis.aclose()

    async def stop(self) -> None:
        """Stop the subscription (its task, started by the first wait) and leave the
        connection pool open: for a client on a Redis client that its caller closes."""
        await self._results.close()
        self._started = False

    async def _ensure_started(self) -> None:
        if not self._started:
            await self._results.start()
            self._started = True

    async def submit(
        self,
        *,
        user: str,
        phone: str | None = None,
        mode: str | None = None,
        lang: str | None = None,
        expires_in_s: float | None = 120,
        context: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        match_number: str | None = None,
        callback_url: str | None = None,
        otp: str | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Queue a verification; returns its id (ValueError if the request would be over
        ``MAX_REQUEST_BYTES``, which callmfa rejects).

        TimeoutError when Redis has not taken it within ``timeout_s`` (by default the
        client's): it may have been queued all the same, so submit again with the same
        ``request_id`` (one id is one call).

        ``callback_url``: where callmfa POSTs the outcome as a signed webhook (it must be
        under CALLMFA_WEBHOOK_ALLOWED_URLS).

        ``match_number`` (mode ``match``): the number the sign-in page shows; only its
        salted hash is sent. ``otp`` (mode ``otp``): the one-time code the call reads out;
        it ends ``delivered``.

        Without ``phone``, callmfa calls the number its user directory holds for ``user``
        (``rejected``/``unknown_user`` if it has none); without ``mode`` or ``lang``, the
        directory's, else ``standard`` and ``en``.
        """
        rid = request_id or str(uuid.uuid4())
        request: dict[str, Any] = {"id": rid, "user": user}
        for name, value in (("phone", phone), ("mode", mode), ("lang", lang)):
            if value is not None:
                request[name] = value
        request["context"] = dict(context or {})
        if match_number is not None:
            request["match_hash"] = hash_code(match_number)
        if callback_url is not None:
            request["callback_url"] = callback_url
        if otp is not None:
            request["otp"] = otp
        if expires_in_s is not None:
            request["expires_at"] = iso(time.time() + expires_in_s)
        payload = json.dumps(request)
        if len(payload) > MAX_REQUEST_BYTES:  # callmfa would only reject it (too_large)
            raise ValueError(f"the request is {len(payload)} bytes, over {MAX_REQUEST_BYTES}")
        # A retried XADD (its reply lost in a failover) may queue the request twice: the
        # call claim lets only one of them dial.
        async with asyncio.timeout(self._timeout_s if timeout_s is None else timeout_s):
            entry_id: Any = await self._durability.command(
                self._redis, "request", "XADD", REQUESTS, "*", "request", payload)
        # The entry id is Redis' clock at the XADD: what the outcome's requested_at will be.
        self._submitted[rid.lower()] = (user, Entry(_text(entry_id), None).enqueued_at)
        while len(self._submitted) > REMEMBERED_SUBMISSIONS:
            self._submitted.popitem(last=False)
        return rid

    async def wait(
        self, request_id: str, timeout_s: float, *, user: str | None = None
    ) -> OutcomeRecord | None:
        """The outcome of ``request_id``, or None if none arrives within ``timeout_s``.

        With a signing key, a stored outcome whose signature is missing or wrong raises
        OutcomeSignatureError (a forged published message is ignored). An outcome of another
        request raises OutcomeBindingError: another id, another ``user`` (by default the
        one this client submitted it for), or older than this client's submission.

        TimeoutError when Redis does not answer: the call never outlasts ``timeout_s`` +
        ``READ_GRACE_S`` (the grace is for the last read of the result key).
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        submitted_user, submitted_at = self._submitted.get(request_id.lower(), (None, None))
        async with asyncio.timeout_at(end + READ_GRACE_S):
            await self._ensure_started()
            with self._results.expecting(request_id, user=user or submitted_user,
                                         submitted_at=submitted_at) as expected:
                record = await expected.read(timeout_s)
                if record is None:
                    await asyncio.wait({expected.arrived}, timeout=max(end - loop.time(), 0))
                    if expected.arrived.done():
                        record = expected.arrived.result()
                    else:  # in the key, if the message was lost with the subscription
                        record = await expected.read(READ_GRACE_S)
        if record is not None:
            self._submitted.pop(request_id.lower(), None)
        return record

    async def verify(
        self, *, user: str, phone: str | None = None, timeout_s: float = 180, **options: Any
    ) -> OutcomeRecord | None:
        """Queue a verification and wait for its outcome (None on timeout; TimeoutError,
        by ``timeout_s`` + ``READ_GRACE_S``, when Redis does not answer).

        The request expires after ``timeout_s`` unless ``expires_in_s`` says otherwise: a
        sign-in that gave up is not rung later.
        """
        options.setdefault("expires_in_s", timeout_s)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        async with asyncio.timeout_at(end + READ_GRACE_S):
            await self._ensure_started()
        rid = await self.submit(user=user, phone=phone, **options,
                                timeout_s=min(self._timeout_s, max(end - loop.time(), 0)))
        return await self.wait(rid, max(end - loop.time(), 0))

    async def watch(
        self, request_id: str, *, since_ms: int = 0, timeout_s: float = 180
    ) -> AsyncIterator[ProgressEvent]:
        """Yield the progress events of ``request_id`` until ``finished`` (or the timeout).

        ``since_ms`` (epoch milliseconds) skips older history; use the time just before
        the request was submitted. TimeoutError when Redis does not answer: no read of it
        outlasts ``timeout_s`` + ``READ_GRACE_S``.
        """
        last = f"{since_ms}-0"
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            async with asyncio.timeout(left + READ_GRACE_S):  # never around a yield
                reply: Any = await self._redis.xread({EVENTS: last}, count=500,
                                                block=int(min(left, 1.0) * 1000) or 1)
            for _stream, items in reply or ():
                for entry_id, raw in items:
                    last = _text(entry_id)
                    fields = {_text(k): _text(v) for k, v in raw.items()}
                    if fields.get("id") != request_id:
                        continue
                    yield ProgressEvent(request_id, fields["event"], fields.get("at", ""), fields)
                    if fields["event"] == "finished":
                        return


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
