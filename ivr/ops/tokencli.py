"""``callmfa token create|list|revoke``: the HTTP API's bearer tokens (audited)."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from ..domain.outcome import iso
from ..security import limits
from ..settings import Settings
from ..storage.guard import Guard
from ..storage.store import connect_for
from ..storage.tokens import SCOPES, Tokens
from .admin import actor, duration

EXIT_OK, EXIT_FAILED = 0, 1


def token_name(text: str) -> str:
    """A token's name: 1 to 64 letters, digits, '.', '_' or '-' (argparse type)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a token name is 1 to 64 letters, digits, '.', '_' or '-'")
    return text


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``callmfa token``."""
    t = sub.add_parser("token", help="the HTTP API's bearer tokens")
    actions = t.add_subparsers(dest="action", required=True)
    c = actions.add_parser("create", help="make a token for NAME and print it (once)")
    c.add_argument("name", type=token_name)
    c.add_argument("--scope", choices=SCOPES, default="verify",
                   help="verify: /v1/verifications (default); admin: also /v1/admin")
    c.add_argument("--expires", type=duration, default=None, metavar="D",
                   help="lifetime, e.g. 90d or 12h (default: until revoked)")
    actions.add_parser("list", help="the tokens: name, scope, created, expires")
    r = actions.add_parser("revoke", help="revoke NAME's token at once")
    r.add_argument("name", type=token_name)
    t.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one token command."""
    return asyncio.run(_run(settings, args))


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    redis = connect_for(settings, max_connections=2)
    try:
        tokens = Tokens(redis, Guard(redis, limits(settings)))
        if args.action == "create":
            token = await tokens.create(args.name, args.scope, expires_s=args.expires,
                                        actor=actor())
            if token is None:
                print(f"callmfa: {args.name} has a token already "
                      f"(callmfa token revoke {args.name} first)", file=sys.stderr)
                return EXIT_FAILED
            print(token)
        elif args.action == "revoke":
            if not await tokens.revoke(args.name, actor=actor()):
                print(f"callmfa: no token named {args.name}", file=sys.stderr)
                return EXIT_FAILED
            print(f"revoked {args.name}")
        else:
            for t in await tokens.list():
                print(f"{t.name}\t{t.scope}\tcreated {iso(t.created_at)}\t"
                      f"expires {iso(t.expires_at) or 'never'}")
        return EXIT_OK
    finally:
        await redis.aclose()
