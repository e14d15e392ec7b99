"""Build callmfa's own prompt recordings from the catalogue (``make prompts``).

    python -m ivr.ops.promptgen build/prompts

writes ``build/prompts/<lang>/callmfa/<id>.wav`` (8 kHz, mono, 16-bit PCM: Asterisk's
``wav`` format) for every prompt and language of :mod:`ivr.domain.prompts`, with espeak-ng
and sox (Debian packages of the same names). A file whose text did not change is kept.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from ..domain.prompts import PROMPTS, SOUNDS_SUBDIR

VOICES = {"en": "en-us", "fr": "fr-fr", "de": "de", "es": "es"}


def build(out: Path) -> int:
    """Generate every missing or changed prompt under ``out``; returns how many were made."""
    made = 0
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        for pid, texts in PROMPTS.items():
            for lang, text in texts.items():
                target = out / lang / SOUNDS_SUBDIR / f"{pid}.wav"
                stamp = target.with_suffix(".txt-sha256")
                digest = hashlib.sha256(f"{VOICES[lang]}\n{text}".encode()).hexdigest()
                if target.exists() and stamp.exists() and stamp.read_text() == digest:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["espeak-ng", "-v", VOICES[lang], "-s", "160", "-w", str(raw),
                                text], check=True, timeout=60)
                subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16",
                                "-e", "signed-integer", str(target)], check=True, timeout=60)
                stamp.write_text(digest)
                made += 1
    return made


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m ivr.ops.promptgen OUTDIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ivr.ops.promptgen OUTDIR", file=sys.stderr)
        return 2
    made = build(Path(args[0]))
    print(f"prompts: {made} generated in {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
