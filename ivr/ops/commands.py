"""The operations commands of ``callmfa``: check, report, install-dialplan.

Each registers its own sub-parser with a ``run(settings, args) -> exit code``, so that the
main command line only dispatches.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import grp
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..classic import ENV_FILE, ROLE, SETTINGS_READ
from ..exceptions import RequestError
from ..log import configure
from ..settings import ENV_PREFIX, Settings, config_line
from ..storage.store import connect_for
from . import dialcheck, doctor, promptgen, report
from .admin import MAX_WAIT_S, wait_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register check, report and install-dialplan."""
    c = sub.add_parser("check", help="check Redis, AMI, dialplan, FastAGI and prompts; "
                                     "exit 1 if anything fails")
    c.add_argument("--call", metavar="NUMBER",
                   help="also place a real verification to NUMBER (E.164) and expect '#'")
    c.add_argument("--call-timeout", type=wait_seconds, default=90, metavar="S",
                   help="seconds to wait for the test call's outcome (default 90, at most "
                        f"{MAX_WAIT_S})")
    c.add_argument("--number", metavar="NUMBER",
                   help="only say what callmfa makes of NUMBER (region, type, valid) and "
                        "whether it would dial it; exit 0 if it would, 1 if not")
    c.set_defaults(run=_check)
    r = sub.add_parser("report", help="outcomes per day, per user and per value, from "
                                      "callmfa:events")
    r.add_argument("--since", metavar="DATE", help="from this UTC day or ISO time")
    r.add_argument("--until", metavar="DATE", help="up to this UTC day (inclusive) or ISO time")
    r.add_argument("--csv", action="store_true", help="day,user,outcome,count rows")
    r.set_defaults(run=_report)
    d = sub.add_parser("install-dialplan", help="copy the dialplan and manager.conf snippets "
                                                "into DIR (e.g. /etc/asterisk)")
    d.add_argument("directory", metavar="DIR", type=Path, nargs="?",
                   help="Asterisk's configuration directory; may be left out with --prompts")
    d.add_argument("--force", action="store_true", help="overwrite existing files")
    d.add_argument("--prompts", metavar="SOUNDS_DIR", type=Path,
                   help="also record callmfa's prompts (en, fr, de, es; needs espeak-ng and "
                        "sox) into SOUNDS_DIR/<lang>/callmfa/, e.g. /usr/share/asterisk/sounds")
    d.set_defaults(run=_install_dialplan)


def _check_number(settings: Settings, number: str) -> int:
    try:
        found = dialcheck.number_report(settings, number)
    except RequestError as e:
        print(f"callmfa: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"callmfa check --number {number}")
    for name, value in found.lines:
        print(f"  {name:<7} {value}")
    return EXIT_OK if found.dials else EXIT_FAILED


def _check(settings: Settings, args: argparse.Namespace) -> int:
    if args.number is not None:
        return _check_number(settings, args.number)
    # The report is for people: the JSON log lines of the clients it uses (ami_logged_in,
    # ...) would be mixed into it. Errors still show; CALLMFA_LOG_LEVEL=debug shows all.
    configure("debug" if settings.log_level == "debug" else "error")

    async def run() -> int:
        failed = 0
        print("callmfa check")
        async for result in doctor.run_checks(
            settings, call=args.call, call_timeout_s=args.call_timeout
        ):
            print(f"  {result.status.value:<5} {result.name:<14} {result.message}", flush=True)
            if result.fix and result.status in (doctor.Status.FAIL, doctor.Status.WARN):
                print(f"  {'':<5} {'':<14} fix: {result.fix}", flush=True)
            failed += result.status is doctor.Status.FAIL
        print("all checks passed" if not failed else f"{failed} check(s) failed")
        return EXIT_FAILED if failed else EXIT_OK

    return asyncio.run(run())


def _report(settings: Settings, args: argparse.Namespace) -> int:
    try:
        since = report.parse_bound(args.since) if args.since else None
        until = report.parse_bound(args.until) if args.until else None
    except ValueError as e:
        print(f"callmfa: {e}", file=sys.stderr)
        return EXIT_USAGE
    if until is not None and args.until and len(args.until) == 10:
        until += 86_400_000 - 1  # a day bound includes the whole day

    async def run() -> report.Report:
        redis = connect_for(settings, max_connections=2)
        try:
            return await report.collect(redis, since_ms=since, until_ms=until)
        finally:
            await redis.aclose()

    data = asyncio.run(run())
    sys.stdout.write(report.render_csv(data) if args.csv else report.render_text(data))
    return EXIT_OK


def shipped_directory(name: str, pattern: str) -> Path:
    """Shipped files (``dialplan``, ``agi_scripts``): package data in a wheel, the top-level
    folder in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir() and any(candidate.glob(pattern)):
            return candidate
    raise FileNotFoundError(f"callmfa's {name} files are not installed")


def dialplan_directory() -> Path:
    """The shipped dialplan files."""
    return shipped_directory("dialplan", "*.conf")


def classic_env(settings: Settings) -> str:
    """The classic AGI script's ``callmfa.env``: of the settings it reads
    (:data:`ivr.classic.SETTINGS_READ`), those that are not the default (secrets as values:
    the script cannot read serve's secret files); no other setting, and no other secret."""
    lines = ["# Written by `callmfa install-dialplan`: the classic AGI script's settings.",
             f"{ENV_PREFIX}ROLES={ROLE}"]
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in SETTINGS_READ and value != f.default:
            lines.append(config_line(f"{ENV_PREFIX}{f.name.upper()}", value))
    return "\n".join(lines) + "\n"


def write_secret_file(path: Path, text: str, *, group: str = "asterisk") -> str:
    """Write ``text`` to ``path`` readable by ``group`` only (0640 root:group, or 0640 with
    this process's owner when not root), never readable by others even for a moment;
    0600 when there is no such group. Returns how it was written, for the operator."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = None
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    mode = "0600"
    if gid is not None:
        try:
            os.chown(tmp, 0 if os.geteuid() == 0 else -1, gid)
            os.chmod(tmp, 0o640)
            mode = f"0640, group {group}"
        except PermissionError:
            pass
    os.replace(tmp, path)
    return mode


# Holds the AMI secret once it is filled in: 0640 root:asterisk, as Debian's own files.
SECRET_CONFS = frozenset({"manager_callmfa.conf"})


def _no_group_note(path: Path, how: str) -> None:
    if how == "0600":
        print(f"callmfa: there is no group 'asterisk' on this host: {path} is 0600, readable "
              "by its owner only; give it to the group Asterisk runs as: chgrp GROUP "
              f"{path} && chmod 0640 {path}", file=sys.stderr)


def _install_prompts(sounds: Path) -> int:
    try:
        made = promptgen.build(sounds)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"callmfa: recording the prompts failed ({e}): are espeak-ng and sox "
              "installed?", file=sys.stderr)
        return EXIT_FAILED
    print(f"recorded {made} prompt file(s) under {sounds}/<lang>/callmfa/")
    return EXIT_OK


def _install_dialplan(settings: Settings, args: argparse.Namespace) -> int:
    source = dialplan_directory()
    target: Path | None = args.directory
    if target is None:
        if args.prompts is None:
            print("callmfa: install-dialplan needs DIR, --prompts SOUNDS_DIR or both",
                  file=sys.stderr)
            return EXIT_USAGE
        return _install_prompts(args.prompts)
    if not target.is_dir():
        print(f"callmfa: {target} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    files = sorted(source.glob("*.conf")) + sorted(
        shipped_directory("agi_scripts", "*.agi").glob("*.agi"))
    existing = [f.name for f in files if (target / f.name).exists()]
    if (target / ENV_FILE).exists():
        existing.append(ENV_FILE)
    if existing and not args.force:
        print(f"callmfa: {', '.join(existing)} exist in {target}; --force overwrites",
              file=sys.stderr)
        return EXIT_FAILED
    for f in files:
        if f.name in SECRET_CONFS:
            how = write_secret_file(target / f.name, f.read_text())
            print(f"installed {target / f.name} ({how}): it will hold the AMI secret")
            _no_group_note(target / f.name, how)
            continue
        shutil.copy(f, target / f.name)  # keeps the AGI script executable
        print(f"installed {target / f.name}")
    how = write_secret_file(target / ENV_FILE, classic_env(settings))
    print(f"installed {target / ENV_FILE} ({how}): the classic AGI script's settings")
    _no_group_note(target / ENV_FILE, how)
    if args.prompts is not None and _install_prompts(args.prompts) != EXIT_OK:
        return EXIT_FAILED
    print('next: add #include "extensions_callmfa.conf" to extensions.conf and\n'
          '      #include "manager_callmfa.conf" to manager.conf, set the secret, then\n'
          "      asterisk -rx 'dialplan reload' and asterisk -rx 'manager reload'\n"
          "      (keep manager_callmfa.conf 0640, root:asterisk: it holds the AMI secret).\n"
          "      For CALLMFA_AGI_MODE=classic, move callmfa-verify.agi into Asterisk's\n"
          "      agi-bin (it imports ivr and pyst2: see docs/asterisk.md) and callmfa.env\n"
          "      (secrets: keep it mode 0640, root:asterisk) into Asterisk's config directory")
    return EXIT_OK
