"""The README's settings table stays complete."""

from __future__ import annotations

from pathlib import Path

from ivr.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


class TestReadme:
    def test_every_setting_is_in_the_table(self) -> None:
        """Each CALLMFA_ setting has a row in README.md's settings table."""
        text = README.read_text()
        missing = [name for name, _, _ in Settings.reference() if f"| `{name}` |" not in text]
        assert missing == []
