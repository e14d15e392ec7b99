"""The RADIUS front's decisions: from a screened Access-Request to the reply's verdict.

Every verification goes through the Redis contract (:class:`Verifier`: ivr.client's
submit and wait), so admission (blocks, throttles, number policy) is the originator's, as
for any request. Retransmissions are recognised here: a copy (same source address and port,
Identifier and Request Authenticator) of a request still held joins it, and a copy of a
finished one is answered from a short reply cache, byte for byte.

Number match: the first Access-Request of a ``match`` user places the call at once and gets an
Access-Challenge whose State names the verification; the challenge response (same State,
same client and user) is held until the outcome. What the user typed as the response is
ignored: the proof is the number keyed on the phone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pyrad.dictionary import Dictionary
from pyrad.packet import AuthPacket
from redis.exceptions import RedisError

from ...domain.directory import PasswordChecker, UserDirectory
from ...domain.flow import MATCH_DIGITS
from ...domain.outcome import OutcomeRecord
from ...domain.users import UserNameError, normalise_user
from ...exceptions import IvrError
from ...settings import Settings
from ...tasks import drain
from . import packets
from .clients import ClientTable, RadiusClient
from .metrics import RadiusMetrics
from .replies import Kind, Verdict, challenge, for_outcome, reject
from .upstream import UpstreamError

log = structlog.get_logger("ivr.fronts.radius")

REPLY_CACHE_S = 30.0  # RFC 5080 2.2.2: answer late copies of a finished request the same
REPLY_CACHE_MAX = 10_000
MAX_HELD = 2_000  # requests held at once; more are dropped (cause "overloaded")
MAX_CHALLENGES = 10_000  # number-match challenges awaiting their answer; more are rejected
STATE_BYTES = 16

Address = tuple[str, int]
Key = tuple[str, int, int, bytes]  # source address, port, Identifier, Request Authenticator
Send = Callable[[bytes, Address], None]


class Verifier(Protocol):
    """The Redis contract as the front uses it (:class:`ivr.client.VerificationClient`)."""

    async def submit(self, *, user: str, phone: str, mode: str = ..., lang: str = ...,
                     expires_in_s: float | None = ..., context: Mapping[str, Any] | None = ...,
                     request_id: str | None = ..., match_number: str | None = ...) -> str: ...

    async def wait(self, request_id: str, timeout_s: float, *,
                   user: str | None = ...) -> OutcomeRecord | None: ...


@dataclass(frozen=True)
class _Challenge:
    rid: str
    user: str
    client: str  # the client's name: the response must come from the same NAS entry
    expires: float  # monotonic


class RadiusFront:
    """Takes datagrams from the listener and sends their replies (``send``)."""

    def __init__(
        self,
        settings: Settings,
        clients: ClientTable,
        verifier: Verifier,
        directory: UserDirectory,
        metrics: RadiusMetrics,
        *,
        passwords: PasswordChecker | None = None,
        dict_: Dictionary | None = None,
    ) -> None:
        if settings.radius_password != "none" and passwords is None:  # noqa: S105 - a mode
            raise ValueError(f"CALLMFA_RADIUS_PASSWORD={settings.radius_password} needs a "
                             "password checker")
        self.settings = settings
        self.clients = clients
        self._verifier = verifier
        self._directory = directory
        self._passwords = passwords
        self.metrics = metrics
        self.dict = dict_ or packets.dictionary()
        self._held: dict[Key, asyncio.Task[None]] = {}
        self._cache: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        # In the order they expire (each lives request_ttl_s from its making).
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._closing = False
        metrics.in_flight.set_function(lambda: len(self._held))

    @property
    def held(self) -> int:
        """Access-Requests held now (waiting for their outcome)."""
        return len(self._held)

    def datagram(self, data: bytes, source: Address, send: Send) -> None:
        """One datagram from ``source``: drop it, answer it from the cache, join it to the
        copy held, or start holding it."""
        client = self.clients.find(source[0])
        if client is None:
            self._drop(packets.Drop.UNKNOWN_CLIENT, source, None)
            return
        screened = packets.screen(data, client, self.dict)
        if isinstance(screened, packets.Drop):
            self._drop(screened, source, client)
            return
        request = screened
        key: Key = (source[0], source[1], request.id, request.authenticator)
        now = time.monotonic()
        self._expire(now)
        cached = self._cache.get(key)
        if cached is not None:
            self.metrics.retransmissions.labels("cached").inc()
            log.info("radius_copy_answered", nas=client.name, nas_address=source[0],
                     identifier=request.id)
            send(cached[1], source)
            return
        if key in self._held:
            self.metrics.retransmissions.labels("joined").inc()
            log.info("radius_copy_joined", nas=client.name, nas_address=source[0],
                     identifier=request.id)
            return
        if request.code == packets.StatusServer:
            self.metrics.status_server.inc()
            self._answer(key, packets.reply(request, packets.AccessAccept), source, send)
            return
        if self._closing or len(self._held) >= MAX_HELD:
            cause = packets.Drop.SHUTTING_DOWN if self._closing else packets.Drop.OVERLOADED
            self._drop(cause, source, client)  # the NAS retries, or asks another server
            return
        self.metrics.requests.inc()
        self._held[key] = asyncio.create_task(
            self._hold(key, request, client, source, send), name=f"radius-{source[0]}")

    def _drop(self, cause: packets.Drop, source: Address, client: RadiusClient | None) -> None:
        self.metrics.drops.labels(cause.value).inc()
        log.warning("radius_packet_dropped", cause=cause.value, nas_address=source[0],
                    nas_port=source[1], nas=client.name if client else None)

    def _answer(self, key: Key, encoded: bytes, source: Address, send: Send) -> None:
        self._cache[key] = (time.monotonic() + REPLY_CACHE_S, encoded)
        while len(self._cache) > REPLY_CACHE_MAX:
            self._cache.popitem(last=False)
        send(encoded, source)

    def _expire(self, now: float) -> None:
        while self._cache:
            key, (expires, _) = next(iter(self._cache.items()))
            if expires > now:
                break
            del self._cache[key]
        while self._challenges and next(iter(self._challenges.values())).expires <= now:
            self._challenges.popitem(last=False)

    async def _hold(self, key: Key, request: AuthPacket, client: RadiusClient,
                    source: Address, send: Send) -> None:
        rid = str(uuid.uuid4())
        with structlog.contextvars.bound_contextvars(
            verification_id=rid, nas=client.name, nas_address=source[0]
        ):
            started = time.monotonic()
            try:
                try:
                    async with asyncio.timeout(self.settings.radius_reply_by_s):
                        verdict = await self._decide(request, client, rid)
                except TimeoutError:
                    verdict = reject("timeout")
                except (RedisError, OSError, UpstreamError, IvrError) as e:
                    log.error("radius_verification_failed", error=str(e))
                    verdict = reject("unavailable")
                except Exception:  # the boundary of one request: logged, answered
                    log.exception("radius_verification_failed")
                    verdict = reject("unavailable")
                decided = time.monotonic()
                encoded = packets.reply(request, _CODES[verdict.kind], message=verdict.message,
                                        state=verdict.state)
                self._answer(key, encoded, source, send)
                self.metrics.added_latency.observe(time.monotonic() - decided)
                self._count(verdict)
                log.info("radius_replied", answer=verdict.kind.value, reason=verdict.reason,
                         held_s=round(decided - started, 3))
            finally:
                self._held.pop(key, None)

    def _count(self, verdict: Verdict) -> None:
        if verdict.kind is Kind.ACCEPT:
            self.metrics.accepts.inc()
        elif verdict.kind is Kind.CHALLENGE:
            self.metrics.challenges.inc()
        else:
            self.metrics.rejects.labels(verdict.reason).inc()

    async def _decide(self, request: AuthPacket, client: RadiusClient, rid: str) -> Verdict:
        if packets.is_eap(request):  # RFC 3579 2.6.2: a server without EAP rejects it
            log.info("radius_user_refused", reason="eap_not_supported")
            return reject("eap_not_supported")
        name = packets.text(request, "User-Name")
        try:
            user = normalise_user(name)
        except UserNameError:
            log.info("radius_user_refused", reason="invalid_user")
            return reject("invalid_user")
        structlog.contextvars.bind_contextvars(user=user)
        state = packets.octets(request, "State")
        if state is not None:
            return await self._challenge_answered(state, user, client)
        if self._passwords is not None:
            password = packets.password(request)
            if password is None:
                return reject("password_required")
            # An upstream RADIUS server gets the name as the NAS sent it; LDAP the normal form.
            who = (name or user) if self.settings.radius_password == "radius" else user  # noqa: S105
            if not await self._passwords.check_password(who, password):
                log.info("radius_password_refused", check=self.settings.radius_password)
                return reject("wrong_password")
        entry = await self._directory.lookup(user)
        if entry is None or not entry.phone:
            log.info("radius_user_unknown")
            return reject("unknown_user")
        context = {"front": "radius", "nas": client.name}
        if entry.mode == "match":
            if len(self._challenges) >= MAX_CHALLENGES:
                log.warning("radius_user_refused", reason="overloaded",
                            challenges=len(self._challenges))
                return reject("overloaded")
            code = match_code()
            await self._verifier.submit(
                user=user, phone=entry.phone, mode="match", lang=entry.lang,
                expires_in_s=self.settings.request_ttl_s, context=context, request_id=rid,
                match_number=code)
            token = secrets.token_bytes(STATE_BYTES)
            self._challenges[token] = _Challenge(
                rid, user, client.name, time.monotonic() + self.settings.request_ttl_s)
            log.info("radius_challenge_sent")
            return challenge(self.settings.org_name, code, token)
        await self._verifier.submit(
            user=user, phone=entry.phone, mode=entry.mode, lang=entry.lang,
            expires_in_s=self.settings.radius_reply_by_s, context=context, request_id=rid)
        record = await self._verifier.wait(rid, self.settings.radius_reply_by_s, user=user)
        return for_outcome(record)

    async def _challenge_answered(self, state: bytes, user: str,
                                  client: RadiusClient) -> Verdict:
        pending = self._challenges.get(state)
        if pending is None or pending.user != user or pending.client != client.name:
            log.info("radius_challenge_refused", reason="unknown_state")
            return reject("unknown_state")
        del self._challenges[state]  # one response per challenge
        structlog.contextvars.bind_contextvars(verification_id=pending.rid)
        left = max(0.0, pending.expires - time.monotonic())
        record = await self._verifier.wait(
            pending.rid, min(left, self.settings.radius_reply_by_s), user=user)
        return for_outcome(record)

    async def close(self, grace_s: float) -> None:
        """Take no more requests; let those held finish for ``grace_s``, cancel the rest."""
        self._closing = True
        cancelled = await drain(list(self._held.values()), grace_s)
        if cancelled:
            log.warning("radius_requests_cancelled", count=cancelled)


def match_code() -> str:
    """A fresh number for the user to key: MATCH_DIGITS digits, no leading 0 (37, never 07)."""
    low = 10 ** (MATCH_DIGITS - 1)
    return str(low + secrets.randbelow(9 * low))


_CODES = {Kind.ACCEPT: packets.AccessAccept, Kind.CHALLENGE: packets.AccessChallenge,
          Kind.REJECT: packets.AccessReject}
