"""The prompt catalogue: every prompt the flow plays, by id, in one place.

For now the prompts are built from Asterisk's core sounds (English); a later catalogue
adds callmfa's own recordings and languages under the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable

CORE_SOUNDS: dict[str, tuple[str, ...]] = {
    # "Hello. Press pound." + "Press zero, then press pound." (to report fraud)
    "greeting": ("hello", "vm-press", "digits/pound", "vm-press", "digits/0", "vm-then-pound"),
    "retry": ("pm-invalid-option", "please-try-again"),
    "approved": ("auth-thankyou", "goodbye"),
    "fraud_reported": ("privacy-thankyou", "goodbye"),
    "failed": ("im-sorry", "goodbye"),
}


def sound_files(prompt_ids: Iterable[str], lang: str = "en") -> tuple[str, ...]:
    """The sound files (no extension) that make up these prompts, in order."""
    del lang  # the core sounds exist in English only
    return tuple(f for pid in prompt_ids for f in CORE_SOUNDS[pid])
