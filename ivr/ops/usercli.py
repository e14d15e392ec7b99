"""``callmfa user set|show|list|delete|import``: the local user directory (docs/directory.md).

Every value is checked and normalised before anything is written (numbers to E.164 with
``phonenumbers``; a number without ``+`` is one of the first of CALLMFA_ALLOWED_REGIONS).
An import writes all of its rows in one atomic step, or, when any row is refused, none:
every refused row is reported with its line number. Each change is audited (``user_set``,
``user_deleted``, ``users_imported``, with the administrator as ``actor``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..domain.directory import DirectoryEntry
from ..domain.entries import EntryError, directory_entry, parse_csv
from ..domain.numbers import default_region
from ..domain.request import USER_MODES
from ..security import number_policy
from ..settings import Settings
from ..storage.directory import LocalDirectory, StoredUser
from ..storage.store import connect_for
from .admin import actor, user_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_IMPORT_BYTES = 64 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``user`` command to the ``callmfa`` parser."""
    p = sub.add_parser("user", help="the user directory: who is called at which number")
    actions = p.add_subparsers(dest="user_action", required=True)
    s = actions.add_parser("set", help="create or replace USER's entry")
    s.add_argument("user", type=user_name)
    s.add_argument("--phone", required=True,
                   help="e.g. +12015550100 or +12015550100x1234 (other forms are normalised)")
    s.add_argument("--mode", choices=sorted(USER_MODES), default="standard")
    s.add_argument("--lang", default="en")
    for name, text in (("show", "print USER's entry"), ("delete", "delete USER's entry")):
        a = actions.add_parser(name, help=text)
        a.add_argument("user", type=user_name)
    actions.add_parser("list", help="list every user (tab-separated)")
    i = actions.add_parser("import", help="create or replace the users of a CSV file with "
                                          "the header user,phone,mode,lang; all rows or none")
    i.add_argument("file", type=Path, metavar="FILE.csv")
    p.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Carry out ``callmfa user ...`` (the ``run`` of its sub-parser)."""
    return asyncio.run(_run(settings, args))


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"callmfa: {message}", file=sys.stderr)
    return code


def _line(user: StoredUser) -> str:
    e = user.entry
    return "\t".join((e.user, e.phone, e.mode, e.lang, user.updated_at, user.updated_by))


def _policy_warning(settings: Settings, phone: str) -> str | None:
    """Why the dial policy would refuse ``phone`` now (stored all the same), if it would."""
    refusal = number_policy(settings).refusal(phone.split("x", 1)[0])
    if refusal is None:
        return None
    return (f"warning: callmfa would not dial {phone} with the current settings ({refusal}): "
            "see `callmfa check --number`")


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    region = default_region(settings.allowed_regions)
    entries: list[DirectoryEntry] = []
    if args.user_action == "set":
        try:
            entries = [directory_entry(args.user, args.phone, mode=args.mode, lang=args.lang,
                                       region=region)]
        except EntryError as e:
            return _fail(str(e), EXIT_USAGE)
    elif args.user_action == "import":
        try:
            if args.file.stat().st_size > MAX_IMPORT_BYTES:
                return _fail(f"{args.file}: over {MAX_IMPORT_BYTES // 2**20} MiB", EXIT_USAGE)
            text = args.file.read_text(encoding="utf-8-sig")
        except OSError as e:
            return _fail(f"cannot read {args.file}: {e.strerror}", EXIT_USAGE)
        except UnicodeDecodeError:
            return _fail(f"{args.file} is not UTF-8 text", EXIT_USAGE)
        parsed = parse_csv(text, region=region)
        if parsed.refused:
            for r in parsed.refused:
                print(f"{args.file}:{r.line}: {r.why}", file=sys.stderr)
            return _fail(f"{len(parsed.refused)} row(s) refused: nothing imported")
        if not parsed.entries:
            return _fail(f"{args.file} holds no users: nothing imported")
        entries = parsed.entries
    redis = connect_for(settings, max_connections=2)
    try:
        directory = LocalDirectory(redis)
        if args.user_action == "set":
            entry = entries[0]
            replaced = await directory.set(entry, actor=actor())
            print(f"{'replaced' if replaced else 'set'} {entry.user}: {entry.phone}, "
                  f"mode {entry.mode}, lang {entry.lang}")
            if (warning := _policy_warning(settings, entry.phone)) is not None:
                print(warning, file=sys.stderr)
        elif args.user_action == "import":
            count = await directory.import_all(entries, actor=actor(), source=str(args.file))
            print(f"imported {len(entries)} users from {args.file} ({count} replaced)")
            for entry in entries:
                if (warning := _policy_warning(settings, entry.phone)) is not None:
                    print(f"{entry.user}: {warning}", file=sys.stderr)
        elif args.user_action == "show":
            found = await directory.get(args.user)
            if found is None:
                return _fail(f"{args.user} is not in the directory")
            got = found.entry
            print(f"user: {got.user}\nphone: {got.phone}\nmode: {got.mode}\nlang: {got.lang}\n"
                  f"updated_at: {found.updated_at}\nupdated_by: {found.updated_by}")
        elif args.user_action == "delete":
            if not await directory.delete(args.user, actor=actor()):
                return _fail(f"{args.user} is not in the directory")
            print(f"deleted {args.user}")
        else:
            for user in await directory.users():
                print(_line(user))
        return EXIT_OK
    finally:
        await redis.aclose()
