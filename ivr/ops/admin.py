"""The security team's commands: ``callmfa block|unblock|blocked|bypass`` (all audited)."""

from __future__ import annotations

import argparse
import getpass
import math
import re
import socket
import sys

from ..domain.outcome import iso
from ..domain.users import UserNameError, normalise_user
from ..security import limits
from ..settings import Settings
from ..storage.guard import Guard
from ..storage.store import connect_for

COMMANDS = ("block", "unblock", "blocked", "bypass")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Ten years: a longer block or bypass is a typing mistake.
MAX_DURATION_S = 3650 * 86400
# An hour: a command waiting longer for one call is a typing mistake.
MAX_WAIT_S = 3600


def duration(text: str) -> int:
    """``90``, ``30s``, ``10m``, ``12h`` or ``90d`` as seconds, at most ten years (argparse
    type)."""
    match = re.fullmatch(r"([0-9]{1,12})([smhd]?)", text.strip())
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0
    if not 0 < seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a duration like 600, 10m, 12h, 90d (at most 3650d)")
    return seconds


def wait_seconds(text: str) -> float:
    """Seconds a command waits, such as ``90`` or ``2.5``: over 0 and at most an hour
    (argparse type; nan, inf and 0 are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a number of seconds over 0 and at most {MAX_WAIT_S}")
    return value


def block_duration(requested: int | None, settings: Settings) -> int | None:
    """How long a manual block lasts: ``requested``, else CALLMFA_FRAUD_BLOCK_S; None when
    neither gives a length (CALLMFA_FRAUD_BLOCK_S=0 means 0# only audits, not "block for
    0 s": the administrator must say how long)."""
    seconds = requested if requested is not None else settings.fraud_block_s
    return seconds if seconds > 0 else None


NO_BLOCK_LENGTH = ("CALLMFA_FRAUD_BLOCK_S is 0 (0# only audits), so a block has no default "
                   "length: give one with --for, e.g. --for 12h")


def user_name(text: str) -> str:
    """A user name in its normalised form, as every per-user key holds it (argparse type)."""
    try:
        return normalise_user(text)
    except UserNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin subcommands to the ``callmfa`` parser."""
    b = sub.add_parser("block", help="block a user: their requests end 'blocked', uncalled")
    b.add_argument("user", type=user_name)
    b.add_argument("--for", dest="duration", type=duration, default=None,
                   help="how long, e.g. 12h or 90d (default CALLMFA_FRAUD_BLOCK_S; needed "
                        "when that is 0)")
    b.add_argument("--reason", default="manual")
    b.add_argument("--replace", action="store_true",
                   help="set this block even if it ends sooner than the current one")
    u = sub.add_parser("unblock", help="lift a user's block")
    u.add_argument("user", type=user_name)
    u.add_argument("--reason", default="")
    sub.add_parser("blocked", help="list the blocked users")
    p = sub.add_parser("bypass", help="the user's next request within the window ends "
                       "'bypassed' without a call (one time)")
    p.add_argument("user", type=user_name)
    p.add_argument("--for", dest="duration", type=duration, default=600,
                   help="the window (default 10m)")
    p.add_argument("--reason", default="")


def actor() -> str:
    """Who runs the command, for the audit stream."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return f"cli:{name}@{socket.gethostname()}"


async def bypass(guard: Guard, user: str, seconds: int, *, actor: str, reason: str) -> bool:
    """Grant ``user`` a one-time bypass for ``seconds``; False (nothing granted) if the user
    is blocked: a block is lifted with unblock, never slipped past (the CLI and the API)."""
    if await guard.is_blocked(user):
        return False
    await guard.grant_bypass(user, seconds, actor=actor, reason=reason)
    return True


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one admin command; 0 on success, 1 when there was nothing to do, 2 for a block
    with no length."""
    seconds = block_duration(args.duration, settings) if args.command == "block" else None
    if args.command == "block" and seconds is None:
        print(f"callmfa: {NO_BLOCK_LENGTH}", file=sys.stderr)
        return 2
    redis = connect_for(settings, max_connections=2)
    try:
        guard = Guard(redis, limits(settings))
        if args.command == "block":
            assert seconds is not None
            if not await guard.block(args.user, seconds, actor=actor(), reason=args.reason,
                                     replace=args.replace):
                print(f"{args.user} is already blocked until "
                      f"{iso(await guard.blocked_until(args.user))}, longer than {seconds}s: "
                      "kept (--replace sets the shorter block)")
                return 1
            print(f"blocked {args.user} for {seconds}s")
        elif args.command == "unblock":
            if not await guard.unblock(args.user, actor=actor(), reason=args.reason):
                print(f"{args.user} was not blocked")
                return 1
            print(f"unblocked {args.user}")
        elif args.command == "bypass":
            if not await bypass(guard, args.user, args.duration, actor=actor(),
                                reason=args.reason):
                print(f"{args.user} is blocked: a bypass does not apply until "
                      f"'callmfa unblock {args.user}'")
                return 1
            print(f"the next request for {args.user} within {args.duration}s is bypassed")
        else:
            for entry in await guard.blocked():
                print(f"{entry.user}\tuntil {iso(entry.until)}")
        return 0
    finally:
        await redis.aclose()
