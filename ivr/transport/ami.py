"""The Asterisk Manager Interface client: login with a deadline, Originate, channel events.

panoramisk 1.4 supplies the wire protocol and the ActionID futures, except for Originate,
the one action of every call: it is written here, and its two replies (queued, then the
OriginateResponse event) are matched on its ActionID and read into a dict, without
panoramisk's Action and Message objects. Its connection handling is replaced: its
``connect()`` returns before the login and hides a wrong secret, and after a reconnect it
re-sends unanswered actions, which for Originate could dial twice. Here a lost connection
fails every pending action and reconnecting is the owner's choice.

Its parser is replaced too: it built a dict of every header of every event. Here an event's
name, ActionID and Uniqueid are read first (see :class:`_Protocol`), and only what callmfa
waits for is read further: the replies to its own actions (OriginateResponse) and the
Newstate and Hangup events of the calls it watches. Everything else is counted and dropped.
Asterisk can be told to send only what callmfa reads (``eventfilter`` lines in
dialplan/manager_callmfa.conf); the login asks for the ``call`` events only.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from ..exceptions import AmiConnectError, AmiError, AmiLoginError
from ..tasks import within

log = structlog.get_logger("ivr.ami")

CHANNEL_STATE_RINGING = b"5"
CHANNEL_EVENTS = frozenset({b"Newstate", b"Hangup"})
# The login's event mask: Newstate, Hangup and OriginateResponse are all "call" events, so
# an account with more read rights than manager_callmfa.conf's still gets only those.
LOGIN_EVENTS = "call"
EOL2 = b"\r\n\r\n"
# A Ping every this often; one still unanswered at the next is a hung or cut-off Asterisk.
PING_INTERVAL_S = 10
# An AMI message is a few hundred bytes: one still unended at this size ends the connection.
MAX_MESSAGE_BYTES = 1 << 20


@dataclass
class EventCounts:
    """AMI events that reached this client since it was made, across reconnections."""

    received: int = 0  # every event Asterisk sent
    read: int = 0  # the ones read past their first headers: our replies and watched calls
    unneeded: int = 0  # of a kind callmfa never reads (the account's eventfilter lets it in)
    unneeded_names: set[str] = field(default_factory=set)  # a few of their names


@dataclass
class ChannelWatch:
    """What the AMI events told about one channel (matched on Uniqueid)."""

    ringing: asyncio.Event = field(default_factory=asyncio.Event)
    hangup: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    on_ringing: Callable[[], None] | None = None  # told once, when the phone starts ringing

    def ring(self) -> None:
        """The phone rings: set ``ringing`` and tell ``on_ringing`` (the first time)."""
        if self.ringing.is_set():
            return
        self.ringing.set()
        if self.on_ringing is not None:
            self.on_ringing()


@dataclass(frozen=True)
class OriginateResult:
    """The OriginateResponse: ``answered`` with Reason 4, else the Reason code."""

    answered: bool
    reason: int | None
    payload: Mapping[str, Any]


def _header(raw: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (not the first line) in one raw message, or None."""
    start = raw.find(b"\r\n" + name + b": ")
    if start < 0:
        return None
    start += len(name) + 4
    end = raw.find(b"\r\n", start)
    return raw[start:] if end < 0 else raw[start:end]


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with a lazy parser: an event is read only if someone waits.

    Responses, and events that carry the ActionID of one of our actions, are parsed as
    panoramisk did. Newstate and Hangup go, unparsed, to ``on_channel_event``, which looks
    at their Uniqueid first. Other events (another session's OriginateResponse, events the
    account's eventfilter did not keep away) are counted and dropped.
    """

    def __init__(self, counts: EventCounts,
                 on_channel_event: Callable[[bytes, bytes], bool]) -> None:
        super().__init__()
        self._counts = counts
        self._on_channel_event = on_channel_event
        self._buffer = b""
        # Our Originates by ActionID: the refusal or the OriginateResponse, as fields.
        self.originates: dict[bytes, asyncio.Future[dict[str, str]]] = {}
        self._ids = f"callmfa/{secrets.token_hex(8)}/"  # unique among the account's sessions
        self._sent = 0

    def originate(self, fields: Mapping[str, str], variables: list[str]
                  ) -> tuple[bytes, asyncio.Future[dict[str, str]]]:
        """Send an async Originate: its ActionID, and a future that gets the fields of its
        OriginateResponse, or of the refusal (a Response that is not Success)."""
        self._sent += 1
        action_id = f"{self._ids}{self._sent}"
        lines = ["Action: Originate", f"ActionID: {action_id}", "Async: true",
                 *(f"{k}: {v}" for k, v in fields.items()),
                 *(f"Variable: {v}" for v in variables), "\r\n"]
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        key = action_id.encode()
        self.originates[key] = future
        self.transport.write("\r\n".join(lines).encode(self.encoding))
        return key, future

    def _originated(self, action_id: bytes, raw: bytes) -> None:
        # "Response: Success" (queued) comes first; the OriginateResponse event settles it.
        # The waiting AmiClient.originate takes its entry out, whatever ends the wait.
        if raw.startswith(b"Response: Success\r\n"):
            return
        future = self.originates[action_id]
        if not future.done():
            future.set_result(_fields(raw.decode(self.encoding, "ignore")))

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            if EOL2 not in self._buffer[-3:] + data[:3] and EOL2 not in data:
                self._buffer += data  # still no end: not split again
                self._check_unended()
                return
            data = self._buffer + data
        *messages, self._buffer = data.split(EOL2)
        self._check_unended()
        for raw in messages:
            # Asterisk sometimes ends a message with a single CRLF (panoramisk strips too).
            raw = raw.strip()
            if not raw.startswith(b"Event: "):
                action_id = _header(raw, b"ActionID")
                if action_id is not None and action_id in self.originates:
                    self._originated(action_id, raw)
                else:
                    self._parse(raw)
                continue
            self._counts.received += 1
            action_id = _header(raw, b"ActionID")
            if action_id is not None:
                # The events of an action: ours, or another session's (OriginateResponse
                # goes to every session of the account).
                if action_id in self.originates:
                    self._counts.read += 1
                    self._originated(action_id, raw)
                elif action_id.decode(self.encoding, "ignore") in self.responses:
                    self._counts.read += 1
                    self._parse(raw)
                continue
            end = raw.find(b"\r\n")
            name = raw[7:] if end < 0 else raw[7:end]
            if name in CHANNEL_EVENTS:
                if self._on_channel_event(name, raw):
                    self._counts.read += 1
            elif name == b"Shutdown":
                self._counts.read += 1
                self._parse(raw)
            else:
                self._counts.unneeded += 1
                if len(self._counts.unneeded_names) < 8:
                    self._counts.unneeded_names.add(name.decode(self.encoding, "ignore"))

    def _check_unended(self) -> None:
        if len(self._buffer) > MAX_MESSAGE_BYTES:
            log.error("ami_message_too_large", bytes=len(self._buffer))
            self._buffer = b""
            self.transport.abort()  # connection_lost follows, then a new login

    def _parse(self, raw: bytes) -> None:
        message = Message.from_line(raw.decode(self.encoding, "ignore"))
        if message is not None:
            self.handle_message(message)


def _fields(text: str) -> dict[str, str]:
    """A message's headers (a name that comes twice keeps its last value)."""
    fields = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(": ")
        if sep:
            fields[name] = value
    return fields


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager minus its reconnect loop and action replay, and with a Ping
    that must be answered (panoramisk's only sends it: a hung Asterisk, or one whose
    network is cut, kept its calls coming)."""

    def __init__(self, owner: AmiClient, **config: Any) -> None:
        super().__init__(**config)
        self._owner = owner
        self._ping: asyncio.Future[Any] | None = None
        self.gone: asyncio.Future[None] = self.loop.create_future()  # the connection ended

    def ping(self) -> None:
        if self._ping is not None and not self._ping.done():
            log.error("ami_ping_unanswered", endpoint=self._owner.endpoint,
                      after_s=self.ping_interval)
            self.pinger = None
            self.protocol.transport.abort()  # connection_lost follows: calls go elsewhere
            return
        self.pinger = self.loop.call_later(self.ping_interval, self.ping)
        self._ping = self.protocol.send({"Action": "Ping"})

    def connection_lost(self, exc: object) -> None:
        self._connected = False
        if not self.gone.done():
            self.gone.set_result(None)
        pinger: Any = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None
        # panoramisk parked the unanswered actions for replay; fail them instead.
        pending = list(self.awaiting_actions)
        futures = [action.future for action in pending]
        if self.protocol is not None:
            futures += [action.future for action in self.protocol.responses.values()]
            futures += self.protocol.originates.values()
            self.protocol.responses.clear()
            self.protocol.originates.clear()
        self.awaiting_actions.clear()
        for future in futures:
            if not future.done():
                future.set_exception(AmiConnectError("AMI connection lost"))
        self._owner._lost(exc)


class AmiClient:
    """One logged-in AMI connection."""

    def __init__(
        self, *, host: str, port: int, user: str, secret: str, timeout_s: float,
        on_reconnect: Callable[[], None] | None = None, ping_interval_s: int = PING_INTERVAL_S,
    ) -> None:
        self._host = host
        self._ping_interval_s = ping_interval_s
        self._on_reconnect = on_reconnect
        self._port = port
        self._user = user
        self._secret = secret
        self._timeout = timeout_s
        self._manager: _Manager | None = None
        self._watches: dict[str, ChannelWatch] = {}
        self.events = EventCounts()
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"AmiClient({self._user}@{self.endpoint}, secret=***)"

    @property
    def endpoint(self) -> str:
        """``host:port`` of this Asterisk."""
        return f"{self._host}:{self._port}"

    async def maintain(self, *, max_backoff_s: float = 10.0) -> None:
        """Stay logged in: reconnect with backoff and jitter whenever the connection drops.

        Runs until cancelled. A refused login is retried too (slowly), so that fixing
        manager.conf needs no restart of callmfa.
        """
        attempt = 0
        while True:
            if not self.connected.is_set():
                try:
                    await self.connect()
                    attempt = 0
                    self.reconnects += 1
                    if self._on_reconnect is not None:
                        self._on_reconnect()
                except AmiError as e:
                    wait = random.uniform(0, min(max_backoff_s, 0.25 * 2**attempt))  # noqa: S311
                    attempt += 1
                    log.warning("ami_reconnect_failed", endpoint=self.endpoint, error=str(e),
                                retry_in_s=round(wait, 2))
                    await asyncio.sleep(wait)
                    continue
            await self.lost.wait()

    async def connect(self) -> None:
        """Connect and log in; raise AmiConnectError or AmiLoginError within the timeout."""
        loop = asyncio.get_running_loop()
        manager = _Manager(
            self, loop=loop, host=self._host, port=self._port, username=self._user,
            secret=self._secret, events=LOGIN_EVENTS, ping_delay=self._ping_interval_s,
            ping_interval=self._ping_interval_s,
        )
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self.events, self._on_channel_event),
                    self._host, self._port),
                self._timeout,
            )
        except (OSError, TimeoutError) as e:
            raise AmiConnectError(
                f"cannot connect to AMI at {self._host}:{self._port}: {e}"
            ) from None
        done: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        done.set_result((transport, protocol))
        manager.connection_made(done)  # sends Login
        login: asyncio.Future[Any] = manager.authenticated_future
        try:
            await asyncio.wait({login, manager.gone}, timeout=self._timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: a stop while reconnecting
            manager.close()
            raise
        if not login.done():
            # No answer is no refusal: an Asterisk that hangs or drops the connection is
            # unreachable (the pool starts without it), not wrongly configured.
            manager.close()
            why = ("closed the connection" if manager.gone.done()
                   else f"did not answer within {self._timeout}s")
            raise AmiConnectError(f"AMI at {self._host}:{self._port} {why} during login")
        reply = login.result()
        if not reply.success:
            manager.close()
            raise AmiLoginError(
                f"AMI login refused for user {self._user!r}: {reply.message} "
                "(check CALLMFA_AMI_USER / CALLMFA_AMI_SECRET and manager.conf permit=)",
                dict(reply),
            )
        self._manager = manager
        self.lost.clear()
        self.connected.set()
        log.info("ami_logged_in", host=self._host, port=self._port, user=self._user)

    def _lost(self, exc: object) -> None:
        if not self.connected.is_set():
            return
        self.connected.clear()
        self.lost.set()
        log.error("ami_connection_lost", error=str(exc) if exc else None)
        for watch in self._watches.values():
            if not watch.hangup.done():
                watch.hangup.set_exception(AmiConnectError("AMI connection lost"))

    def _on_channel_event(self, name: bytes, raw: bytes) -> bool:
        """A Newstate or Hangup event, still raw: True if it was one of a watched call."""
        uniqueid = _header(raw, b"Uniqueid")
        watch = self._watches.get(uniqueid.decode(errors="ignore")) if uniqueid else None
        if watch is None:
            return False
        if name == b"Hangup":
            if not watch.hangup.done():
                try:
                    cause = int(_header(raw, b"Cause") or b"0")
                except ValueError:
                    cause = 0
                watch.hangup.set_result(cause)
        elif _header(raw, b"ChannelState") == CHANNEL_STATE_RINGING:
            watch.ring()
        return True

    def watch(self, uniqueid: str) -> ChannelWatch:
        """Start collecting events for a channel; call before Originate so none is missed."""
        w = ChannelWatch()
        self._watches[uniqueid] = w
        return w

    def unwatch(self, uniqueid: str) -> None:
        """Stop collecting events for a channel."""
        w = self._watches.pop(uniqueid, None)
        if w is not None and w.hangup.done() and not w.hangup.cancelled():
            w.hangup.exception()  # a lost connection's, unread when the Originate failed

    async def originate(
        self, fields: Mapping[str, str], variables: Mapping[str, str], *, timeout_s: float
    ) -> OriginateResult:
        """Send an async Originate and wait for its OriginateResponse."""
        if self._manager is None or not self.connected.is_set():
            raise AmiConnectError("not connected to AMI")
        assigned = [f"{k}={v}" for k, v in variables.items()]
        for value in (*fields, *fields.values(), *assigned):
            if "\r" in value or "\n" in value or "\0" in value:
                # Defence in depth: the request parser already refuses these.
                raise AmiError("refusing an AMI header value with CR, LF or NUL", value)
        protocol: _Protocol = self._manager.protocol
        action_id, future = protocol.originate(fields, assigned)
        try:
            final = await within(future, timeout_s)
        except TimeoutError:
            raise AmiError(f"no OriginateResponse within {timeout_s}s") from None
        finally:
            protocol.originates.pop(action_id, None)
        if "Event" not in final:
            # The synchronous refusal (permission, bad channel, ...).
            raise AmiError(f"Originate refused: {final.get('Message', '')}", final)
        try:
            reason: int | None = int(final.get("Reason", ""))
        except ValueError:
            reason = None
        return OriginateResult(final.get("Response") == "Success", reason, final)

    async def close(self) -> None:
        """Log off and close the connection."""
        manager, self._manager = self._manager, None
        self.connected.clear()
        if manager is not None:
            manager.close()

    async def action(self, fields: Mapping[str, str], *, timeout_s: float) -> list[dict[str, Any]]:
        """Send any action; its reply messages (one, or a list's events) as dicts."""
        if self._manager is None or not self.connected.is_set():
            raise AmiConnectError("not connected to AMI")
        future = self._manager.send_action(dict(fields))
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise AmiError(f"no reply to {fields.get('Action')} within {timeout_s}s") from None
        return [dict(m) for m in (reply if isinstance(reply, list) else [reply])]
