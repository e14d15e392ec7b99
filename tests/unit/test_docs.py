"""The docs name only settings that exist, link only to what exists, and show settings the
way callmfa.conf reads them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ivr.settings import ENV_PREFIX, SECRETS, Settings, read_config_file

from ..conftest import REPO

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
# CALLMFA_ names in the docs that are no setting: dialplan channel variables, the config
# file's own name and its placeholder, and the sandbox's, images' and tests' variables.
NOT_SETTINGS = frozenset({
    "CALLMFA_CONFIG_FILE", "CALLMFA_NAME",
    "CALLMFA_AGI", "CALLMFA_TOKEN", "CALLMFA_TRUNK", "CALLMFA_COLLECT", "CALLMFA_EARLY_KEYS",
    "CALLMFA_KEEP_KEYS", "CALLMFA_CHECK_ENDPOINT",
    "CALLMFA_SANDBOX_REDIS", "CALLMFA_ENTRA_SCREENSHOT", "CALLMFA_PYTHON_BASE",
    "CALLMFA_ASTERISK_BASE",
})


def _known() -> frozenset[str]:
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    files = {f"{ENV_PREFIX}{name.upper()}_FILE" for name in SECRETS}
    return frozenset(fields | files | NOT_SETTINGS)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def _code_blocks(path: Path) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
class TestDocs:
    def test_every_callmfa_name_is_a_setting(self, path: Path) -> None:
        """A CALLMFA_ name in the docs is a setting, a secret's _FILE, or a known dialplan or
        tool variable: a misspelt or removed setting would be silently ignored."""
        names = set(re.findall(r"\bCALLMFA_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        assert names - _known() == set()

    def test_relative_links_resolve(self, path: Path) -> None:
        """Every relative link names a file that exists, and a heading of it if it has #."""
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        broken = []
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name).resolve() if name else path
            if not linked.exists() or (
                    anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
                broken.append(target)
        assert broken == []

    def test_settings_in_code_blocks_parse_as_callmfa_conf_reads_them(
        self, path: Path, tmp_path: Path
    ) -> None:
        """A block of CALLMFA_NAME=value lines can be pasted into callmfa.conf: one setting
        a line, no comment after a value (webhooks.md had both, freepbx.md the second)."""
        for block in _code_blocks(path):
            lines = [line for line in block.splitlines()
                     if re.match(r"(export )?CALLMFA_[A-Z0-9_]+=", line)]
            if not lines or len(lines) != len([ln for ln in block.splitlines()
                                               if ln.strip() and not ln.startswith("#")]):
                continue  # a shell session, not a settings file
            conf = tmp_path / "callmfa.conf"
            conf.write_text(block)
            assert len(read_config_file(conf)) == len({ln.split("=", 1)[0] for ln in lines})
