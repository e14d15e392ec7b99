"""``callmfa pin set|unlock USER``: an administrator sets a user's PIN or lifts a lockout.

The PIN is read without echo (or as one line from a pipe, for scripts), hashed with scrypt
at once and only the hash is stored; the PIN itself is never printed, logged or kept. Both
actions are audited (``pin_set``, ``pin_unlocked``, with the administrator as ``actor``).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from ..domain.codes import hash_pin
from ..domain.flow import PIN_MAX_DIGITS, PIN_MIN_DIGITS
from ..settings import Settings
from ..storage.pins import PinStore
from ..storage.store import connect_for
from .admin import actor, user_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pin`` command to the ``callmfa`` parser."""
    p = sub.add_parser("pin", help="set a user's PIN (pin mode) or unlock a locked-out user")
    actions = p.add_subparsers(dest="pin_action", required=True)
    s = actions.add_parser("set", help="set or replace USER's PIN (read without echo)")
    s.add_argument("user", type=user_name)
    u = actions.add_parser("unlock", help="clear USER's wrong-PIN count and lockout")
    u.add_argument("user", type=user_name)


def read_pin() -> str:
    """The new PIN, typed twice on a terminal or one line on stdin."""
    if sys.stdin.isatty():
        pin = getpass.getpass("New PIN: ")
        if getpass.getpass("Again: ") != pin:
            raise ValueError("the two PINs differ")
        return pin
    return sys.stdin.readline().strip()


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Carry out ``callmfa pin ...``."""
    if args.pin_action == "set":
        try:
            pin = read_pin()
        except ValueError as e:
            print(f"callmfa: {e}", file=sys.stderr)
            return EXIT_USAGE
        if not (pin.isascii() and pin.isdigit() and PIN_MIN_DIGITS <= len(pin) <= PIN_MAX_DIGITS):
            print(f"callmfa: a PIN is {PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits",
                  file=sys.stderr)
            return EXIT_USAGE
        if not settings.pin_pepper:
            print("callmfa: warning: CALLMFA_PIN_PEPPER is not set, so this PIN's hash is "
                  "not peppered (docs/security.md)", file=sys.stderr)
        code_hash = hash_pin(pin, settings.pin_pepper.encode())
    redis = connect_for(settings, max_connections=2)
    try:
        pins = PinStore.for_settings(redis, settings)
        if args.pin_action == "set":
            await pins.set_hash(args.user, code_hash, actor=actor())
            print(f"PIN set for {args.user}")
            return EXIT_OK
        if await pins.unlock(args.user, actor=actor()):
            print(f"{args.user} unlocked")
            return EXIT_OK
        print(f"callmfa: {args.user} has no PIN", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await redis.aclose()
