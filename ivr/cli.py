"""The ``callmfa`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence

import aiohttp
import structlog
from redis.exceptions import RedisError

from . import __version__
from .app import run as run_service
from .client import VerificationClient
from .domain.flow import MATCH_DIGITS, MODES, OTP_MAX_DIGITS, OTP_MIN_DIGITS
from .domain.outcome import Outcome
from .domain.request import check_lang, parse_request
from .exceptions import IvrError, RequestError
from .fronts import web as http
from .log import configure
from .ops import admin, keyscli, pincli, tokencli, usercli
from .ops.commands import add_commands
from .ops.reference import settings_markdown
from .settings import Settings, default_config_file
from .tasks import cancel_and_wait

EXIT_OK, EXIT_NOT_APPROVED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callmfa", description="Phone-call verification on Asterisk (settings: CALLMFA_*)."
    )
    p.add_argument("--version", action="version", version=f"callmfa {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the originator and the FastAGI server")
    v = sub.add_parser("verify", help="place one verification and print its outcome")
    v.add_argument("--user", required=True, type=admin.user_name)
    v.add_argument("--phone", help="E.164, e.g. +12015550100 or +12015550100x1234 (default: "
                                   "the number `callmfa user` or LDAP holds for the user)")
    v.add_argument("--mode", choices=MODES,
                   help="standard: '#' approves (default, or the directory's mode); pin: the "
                        "user's PIN then '#'; "
                        "match: the number given with --match, then '#'; otp: reads the "
                        "code given with --otp (outcome delivered)")
    v.add_argument("--match", metavar="NN", dest="match_number",
                   help=f"mode match: the {MATCH_DIGITS}-digit number the user must key "
                        "(only its salted hash is sent)")
    v.add_argument("--otp", metavar="DIGITS",
                   help=f"mode otp: the one-time code to read out ({OTP_MIN_DIGITS} to "
                        f"{OTP_MAX_DIGITS} digits)")
    v.add_argument("--lang", help="the prompts' language (default: the directory's, else en)")
    v.add_argument("--timeout", type=admin.wait_seconds, default=180,
                   help=f"seconds to wait (default 180, at most {admin.MAX_WAIT_S})")
    v.add_argument("--json", action="store_true", help="print only the outcome as JSON")
    st = sub.add_parser("settings", help="print the settings reference")
    st.add_argument("--markdown", action="store_true", help="as the Markdown table of the docs")
    pincli.add_parser(sub)
    usercli.add_parser(sub)
    admin.add_parsers(sub)
    tokencli.add_parser(sub)
    keyscli.add_parser(sub)
    add_commands(sub)
    sub.add_parser("health", help="ask the running `callmfa serve` for its /healthz status")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callmfa`` console script."""
    args = _parser().parse_args(argv)
    # The service's file (the systemd unit names it), and SIGHUP's reload with it.
    default_config_file(os.environ)
    try:
        settings = Settings.load()
    except IvrError as e:
        print(f"callmfa: {e}", file=sys.stderr)
        return EXIT_USAGE
    configure(settings.log_level)
    try:
        if args.command == "serve":
            run_service(settings)
            return EXIT_OK
        if args.command == "health":
            return asyncio.run(_health(settings))
        if args.command == "verify":
            usage = _verify_usage(args)
            if usage is not None:
                print(f"callmfa: {usage}", file=sys.stderr)
                return EXIT_USAGE
            try:
                if args.phone is not None:  # else the directory's, checked by serve
                    parse_request(
                        json.dumps({"id": "00000000-0000-0000-0000-000000000000",
                                    "user": args.user, "phone": args.phone,
                                    "lang": args.lang or "en"}),
                        requested_at=0, default_ttl_s=0,
                    )
                elif args.lang is not None:
                    check_lang(args.lang)
            except RequestError as e:
                print(f"callmfa: {e.message}", file=sys.stderr)
                return EXIT_USAGE
            return asyncio.run(_verify(settings, args))
        if args.command == "pin":
            return asyncio.run(pincli.run(settings, args))
        if args.command in admin.COMMANDS:
            return asyncio.run(admin.run(settings, args))
        if hasattr(args, "run"):
            code: int = args.run(settings, args)
            return code
        if args.markdown:
            print(settings_markdown(), end="")
            return EXIT_OK
        for name, default, doc in Settings.reference():
            print(f"{name}\t{default}\t{doc}")
        return EXIT_OK
    except (IvrError, RedisError, OSError) as e:
        structlog.get_logger("ivr.cli").error("command_failed", error=str(e))
        print(f"callmfa: {e}", file=sys.stderr)
        return EXIT_NOT_APPROVED
    except KeyboardInterrupt:
        return 130


def _verify_usage(args: argparse.Namespace) -> str | None:
    """What is wrong with verify's --mode and --match, if anything."""
    if args.mode == "match":
        if args.match_number is None:
            return "--mode match needs --match NN: the number the user must key"
        if not (args.match_number.isascii() and args.match_number.isdigit()
                and len(args.match_number) == MATCH_DIGITS):
            return f"--match must be {MATCH_DIGITS} digits, e.g. 37"
    elif args.match_number is not None:
        return "--match is for --mode match only"
    if args.mode == "otp":
        if not (args.otp and args.otp.isascii() and args.otp.isdigit()
                and OTP_MIN_DIGITS <= len(args.otp) <= OTP_MAX_DIGITS):
            return f"--mode otp needs --otp: {OTP_MIN_DIGITS} to {OTP_MAX_DIGITS} digits"
    elif args.otp is not None:
        return "--otp is for --mode otp only"
    return None


async def _health(settings: Settings) -> int:
    """Print serve's /healthz JSON; exit 0 when healthy, 1 otherwise (or when unreachable)."""
    try:
        status, body = await http.get(settings.health_host, settings.health_port, "/healthz",
                                      timeout_s=settings.connect_timeout_s)
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        print(f"callmfa: no callmfa serve answers on {settings.health_host}:"
              f"{settings.health_port}: {e}", file=sys.stderr)
        return EXIT_NOT_APPROVED
    print(body.decode().strip())
    return EXIT_OK if status == 200 else EXIT_NOT_APPROVED


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    async with VerificationClient.from_settings(settings) as client:
        since = int(time.time() * 1000) - 1
        rid = await client.submit(
            user=args.user, phone=args.phone, lang=args.lang, expires_in_s=args.timeout,
            mode=args.mode, match_number=args.match_number, otp=args.otp,
        )
        progress = None
        if not args.json:
            callee = args.phone or f"the directory's number of {args.user}"
            print(f"verification {rid}: calling {callee}"
                  + ("" if args.mode in (None, "standard") else f" (mode {args.mode})"))
            progress = asyncio.create_task(_print_progress(client, rid, since, args.timeout))
        try:
            record = await client.wait(rid, args.timeout)
            if progress is not None:  # let it print the last events
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(progress), 2)
        finally:
            if progress is not None:
                await cancel_and_wait(progress)
    if record is None:
        print(json.dumps({"id": rid, "outcome": None, "detail": "timeout"}) if args.json
              else f"no outcome within {args.timeout:g}s")
        return EXIT_NOT_APPROVED
    if args.json:
        print(record.to_json())
    else:
        detail = ": ".join(d for d in (record.detail, record.reason) if d)
        print(f"outcome: {record.outcome.value}" + (f" ({detail})" if detail else ""))
    granted = record.outcome in (Outcome.APPROVED, Outcome.BYPASSED, Outcome.DELIVERED)
    return EXIT_OK if granted else EXIT_NOT_APPROVED


async def _print_progress(
    client: VerificationClient, rid: str, since: int, wait_s: float
) -> None:
    async for ev in client.watch(rid, since_ms=since, timeout_s=wait_s):
        extra = f" {ev.fields['outcome']}" if "outcome" in ev.fields else ""
        print(f"  {ev.at}  {ev.event}{extra}", flush=True)
