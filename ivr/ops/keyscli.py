"""``callmfa keys rotate|list``: the Entra EAM's signing keys (CALLMFA_ENTRA_SIGNING_KEY_FILE).

``rotate`` on a missing file makes the first key, which signs at once; later, it adds a key
that signs 2 days on (both are published meanwhile) and drops the keys already replaced.
A running ``callmfa serve`` reads the file again when it changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..domain.outcome import iso
from ..fronts.entra.keys import SigningKeys, rotated, write_keys
from ..settings import Settings

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``callmfa keys``."""
    k = sub.add_parser("keys", help="the Entra EAM's signing keys")
    actions = k.add_subparsers(dest="action", required=True)
    actions.add_parser("rotate", help="add a key that signs in 2 days (the first: at once)")
    actions.add_parser("list", help="the keys: kid, signs from, signing now")
    k.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one keys command."""
    path = settings.entra_signing_key_file
    if not path:
        print("callmfa: set CALLMFA_ENTRA_SIGNING_KEY_FILE", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    keys = SigningKeys.from_file(path) if Path(path).exists() else None
    if args.action == "rotate":
        keys = rotated(keys, now)
        write_keys(path, keys)
        print(f"added {keys.keys[-1].kid}, signing from {iso(keys.keys[-1].signs_from)}")
    if keys is None:
        print(f"callmfa: no key file at {path} (callmfa keys rotate makes one)",
              file=sys.stderr)
        return EXIT_FAILED
    signing = keys.signing_at(now)
    for k in keys.keys:
        print(f"{k.kid}\tsigns from {iso(k.signs_from)}"
              + ("\tsigning now" if k is signing else ""))
    return EXIT_OK
