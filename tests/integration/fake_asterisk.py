"""A scripted Asterisk 22 that runs one verification call against the IVR over FastAGI.

It sends the AGI headers of a call from ``dialplan/extensions_callmfa.conf`` and answers
each command line as Asterisk 22's res_agi does, keeping the channel's variables:

- ``SET VARIABLE name value``: ``200 result=1`` (allowed on a dead channel too);
- ``GET FULL VARIABLE expr``: ``200 result=1 (<expr expanded>)``; ``${NAME}`` of an unset
  variable expands to nothing, ``${STAT(e,path)}`` (func_env) to 1 or 0;
- ``EXEC Read var,files,max,,1,secs``: sets ``var`` and ``READSTATUS`` (OK or TIMEOUT;
  ERROR when the last file is missing), answers ``200 result=0``; ``-1`` (READSTATUS
  HANGUP) when the caller is gone;
- ``GET DATA file ms max``: ``200 result=<keys>``, ``200 result=<keys> (timeout)``,
  ``200 result=-1`` when the caller hangs up or the file is missing, 511 on a dead channel;
- ``EXEC Playback files``: ``200 result=0`` (``-1`` on a dead channel);
- ``HANGUP``: ``200 result=1`` (511 on a dead channel); anything else: 510.

What the caller does at each key collection (Read or GET DATA) is scripted as the keys
pressed: ``"#"``, ``"0#"``, ``"1234#"``; keys without a final ``#`` end in the timeout
(``""`` is silence). Keys after the ``#`` that ends a Read() come before the IVR's next
command: Read() never sees them, and res_agi drops them, but the dialplan's StoreDTMF
(``store_dtmf``, on by default) keeps every key in ``CALLMFA_EARLY_KEYS``, as it does.
:data:`HANG_UP` hangs up during the prompt: Asterisk answers the
pending command ``200 result=-1``, then sends ``HANGUP`` and treats the channel as dead.
After a hang-up it keeps answering, as Asterisk does, until the IVR closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from ivr.domain.calltoken import token_hash
from ivr.storage.store import EVENTS, Store, result_key

from .conftest import Ivr, close_writer

HANG_UP = "hang up"  # the caller's action: hang up during the prompt
DEAD_CHANNEL = b"511 Command Not Permitted on a dead channel or intercept routine\n"
UNKNOWN_COMMAND = b"510 Invalid or unknown command\n"
_EXPANSION = re.compile(r"\$\{([^{}]*)\}")
_STAT_EXISTS = re.compile(r"STAT\(e,(.*)\)\Z")

Reply = bytes | None  # None: close the socket without a reply
# The token the originator handed "Asterisk" (CALLMFA_TOKEN); place_call stores its hash.
CALL_TOKEN = "5e" * 24


@dataclass(frozen=True)
class ReadStatus:
    """The caller's action at a Read(): it ends with this READSTATUS and result 0."""

    status: str


Action = str | ReadStatus


def collect(keys: str, max_digits: int) -> tuple[str, bool]:
    """What Asterisk's digit collection gets from ``keys``: (digits, timed_out).

    It stops at '#' (not kept) or at ``max_digits``; else the caller fell silent.
    """
    digits = ""
    for key in keys:
        if key == "#":
            return digits, False
        digits += key
        if len(digits) >= max_digits:
            return digits, False
    return digits, True


@dataclass
class FakeAsterisk:
    """Asterisk 22's side of one FastAGI session; see the module docstring.

    ``keys``: the caller's action at each key collection, in order. ``token``: the channel's
    CALLMFA_TOKEN (the call's, by default; "" for none). ``amd``: what AMD()
    left in AMDSTATUS ("" when AMD is off: the variable is unset). ``files``: the files
    that exist on the Asterisk host, for STAT(e,...). ``missing``: sound files (no
    extension) that do not exist. ``dead``: the caller hung up before the IVR ran (the
    dialplan's ``h`` extension runs it). ``on_command`` may override the reply to a command
    (bytes, or None to close the socket; False: answer as usual). ``on_playback`` runs
    before a Playback is answered.
    """

    keys: list[Action] = field(default_factory=list)
    token: str = CALL_TOKEN
    amd: str = "HUMAN"
    files: frozenset[str] = frozenset()
    missing: frozenset[str] = frozenset()
    dead: bool = False
    store_dtmf: bool = True
    on_playback: Callable[[str], Awaitable[None]] | None = None
    on_command: Callable[[str], Reply | bool] | None = None
    reset: bool = False  # close with RST rather than FIN
    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.token:
            self.variables["CALLMFA_TOKEN"] = self.token
        if self.amd:
            self.variables["AMDSTATUS"] = self.amd

    def reply(self, command: str) -> Reply:
        """Asterisk's answer to one command line."""
        if self.on_command is not None:
            custom = self.on_command(command)
            if custom is not False:
                assert not isinstance(custom, bool)
                # A scripted reply that tells of a hang-up leaves the channel dead.
                if custom is not None and (
                    b"result=-1" in custom or custom.startswith((b"HANGUP", b"511"))
                ):
                    self.dead = True
                return custom
        if command.startswith("SET VARIABLE "):
            name, _, value = command.removeprefix("SET VARIABLE ").partition(" ")
            self.variables[name] = value
            return b"200 result=1\n"
        if command.startswith("GET FULL VARIABLE "):
            return f"200 result=1 ({self.expand(command.removeprefix('GET FULL VARIABLE '))})\n" \
                .encode()
        if command.startswith("EXEC Read "):
            return self._read(command.removeprefix("EXEC Read "))
        if command.startswith("GET DATA "):
            return self._get_data(command.removeprefix("GET DATA ").split(" "))
        if command.startswith("EXEC Playback "):
            return b"200 result=-1\n" if self.dead else b"200 result=0\n"
        if command.startswith("STREAM FILE "):  # played to the end, no key
            return b"200 result=-1 endpos=0\n" if self.dead else b"200 result=0 endpos=8000\n"
        if command.startswith("WAIT FOR DIGIT "):  # no key within the timeout
            return b"200 result=-1\n" if self.dead else b"200 result=0\n"
        if command == "NOOP":
            return b"200 result=0\n"  # allowed on a dead channel too
        if command == "HANGUP":
            if self.dead:
                return DEAD_CHANNEL
            self.dead = True
            return b"200 result=1\n"
        return UNKNOWN_COMMAND

    def expand(self, expression: str) -> str:
        """The expression with every ``${...}`` expanded, as ast_str_substitute_variables."""
        def value(m: re.Match[str]) -> str:
            stat = _STAT_EXISTS.match(m.group(1))
            if stat:
                return "1" if stat.group(1) in self.files else "0"
            return self.variables.get(m.group(1), "")
        return _EXPANSION.sub(value, expression)

    def _next_action(self, command: str) -> Action:
        assert self.keys, f"the IVR collects keys once more than scripted: {command}"
        return self.keys.pop(0)

    def _read(self, args: str) -> bytes:
        variable, files, max_digits, *_ = args.split(",")
        if self.dead:
            self.variables["READSTATUS"] = "HANGUP"
            return b"200 result=-1\n"
        if files.split("&")[-1] in self.missing:
            # Read() skips a missing file; with the last one missing it collects nothing.
            self.variables.update({variable: "", "READSTATUS": "ERROR"})
            return b"200 result=0\n"
        action = self._next_action(f"EXEC Read {args}")
        if isinstance(action, ReadStatus):
            self.variables.update({variable: "", "READSTATUS": action.status})
            return b"200 result=0\n"
        if action == HANG_UP:
            self.dead = True
            self.variables.update({variable: "", "READSTATUS": "HANGUP"})
            return b"200 result=-1\nHANGUP\n"
        digits, timed_out = collect(action, int(max_digits or 255))
        self.variables.update({variable: digits, "READSTATUS": "TIMEOUT" if timed_out else "OK"})
        if self.store_dtmf:
            heard = self.variables.get("CALLMFA_EARLY_KEYS", "") + action
            self.variables["CALLMFA_EARLY_KEYS"] = heard[:32]
        return b"200 result=0\n"

    def _get_data(self, args: list[str]) -> bytes:
        if self.dead:
            return DEAD_CHANNEL
        file, _timeout_ms, max_digits = args
        if file in self.missing:
            return b"200 result=-1\n"  # ast_streamfile failed: the channel is still up
        action = self._next_action(f"GET DATA {' '.join(args)}")
        assert isinstance(action, str), "ReadStatus is for Read() only"
        if action == HANG_UP:
            self.dead = True
            return b"200 result=-1\nHANGUP\n"
        digits, timed_out = collect(action, int(max_digits))
        return f"200 result={digits}{' (timeout)' if timed_out else ''}\n".encode()

    async def call(
        self, port: int, rid: str, *, with_arg: bool = True, timeout_s: float = 5.0
    ) -> list[str]:
        """Run one AGI session for ``rid`` until the IVR closes it; the commands received.

        Fails (TimeoutError) if the IVR has not closed the session after ``timeout_s``.
        """
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extension, priority = ("h", "2") if self.dead else ("s", "6")
        headers = [
            "agi_network: yes", "agi_network_script: verify",
            "agi_request: agi://127.0.0.1/verify", "agi_channel: PJSIP/trunk-00000001",
            "agi_language: en", "agi_type: PJSIP", f"agi_uniqueid: {rid}",
            "agi_version: 22.10.1", "agi_callerid: 15550000", "agi_context: callmfa-verify",
            f"agi_extension: {extension}", f"agi_priority: {priority}",
        ]
        if with_arg:
            headers.append(f"agi_arg_1: {rid}")
        writer.write(("\n".join(headers) + "\n\n").encode())
        try:
            async with asyncio.timeout(timeout_s):
                while line := await reader.readline():
                    command = line.decode().rstrip("\n")
                    self.commands.append(command)
                    if command.startswith("EXEC Playback ") and self.on_playback is not None:
                        await self.on_playback(command)
                    answer = self.reply(command)
                    if answer is None:
                        if self.reset:
                            _reset(writer)
                        break
                    writer.write(answer)
        except ConnectionResetError:
            pass  # the IVR closed with our last reply unread: it is done
        finally:
            await close_writer(writer)
        return self.commands


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def place_call(store: Store, rid: str, **marker: str) -> float:
    """What the originator writes before dialling: the call marker (``marker`` overrides)."""
    t = time.time() - 5
    await store.claim_call(rid, {
        "user": "alice", "number": "+12015550100", "mode": "standard", "lang": "en",
        "requested_at": str(t), "call_started_at": str(t), "context": "{}",
        "token_hash": token_hash(CALL_TOKEN), **marker,
    })
    return t


async def outcome_json(redis: Redis, rid: str) -> dict[str, Any] | None:
    raw = await redis.get(result_key(rid))
    return json.loads(raw) if raw is not None else None


async def events_of(redis: Redis, rid: str) -> list[dict[str, str]]:
    entries = await redis.xrange(EVENTS)
    out = []
    for _, fields in entries:
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        if decoded.get("id") == rid:
            out.append(decoded)
    return out


async def run_call(
    ivr: Ivr, rid: str, *keys: Action, marker: dict[str, str] | None = None, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """Place the marker, run the session, return (commands, stored outcome JSON)."""
    await place_call(ivr.store, rid, **(marker or {}))
    asterisk = FakeAsterisk(list(keys), **options)
    commands = await asterisk.call(ivr.port, rid)
    await ivr.idle()
    stored = await outcome_json(ivr.redis, rid)
    assert stored is not None, f"no outcome stored; commands were {commands}"
    return commands, stored
