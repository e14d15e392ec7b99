"""The built wheel, installed into a fresh venv, is a working callmfa."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ivr.domain.prompts import LANGUAGES, PROMPTS

from ..conftest import REPO, Sandbox, _setns
from .test_operations import run_cli

LOCK = REPO / "docker" / "requirements.lock"


def _run(sandbox: Sandbox, *args: str) -> str:
    """Run a pip command; its output."""
    # pip needs the package index: run it in the namespace the tests started in, not in the
    # sandbox's (which this thread joined, and which holds only loopback).
    out = subprocess.run(args, capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: _setns(sandbox.host_netns_fd))
    assert out.returncode == 0, f"{args[:2]} failed:\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def build_log(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox) -> tuple[Path, str]:
    """(the wheel, what the build backend said): built as a user would."""
    tmp = tmp_path_factory.mktemp("dist")
    log = _run(sandbox, str(REPO / ".venv" / "bin" / "pip"), "wheel", "-v", "--no-deps", "-w",
               str(tmp), str(REPO))
    return next(tmp.glob("callmfa-*.whl")), log


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox, build_log: tuple[Path, str]
) -> tuple[Path, Path]:
    """(the wheel, the venv's bin directory): built and installed as a user would."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_log[0]
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    pip = tmp / "venv" / "bin" / "pip"
    # With the extra ldap: the sandbox has an LDAP source, which `callmfa check` binds to.
    _run(sandbox, str(pip), "install", "-q", "-c", str(LOCK), f"{wheel}[ldap]")
    return wheel, tmp / "venv" / "bin"


class TestWheel:
    def test_builds_without_warnings(self, build_log: tuple[Path, str]) -> None:
        """The backend warned that ivr.domain.data is not in the packages list."""
        warnings = [line for line in build_log[1].splitlines()
                    if "Warning" in line or "absent from the `packages`" in line]
        assert warnings == [], warnings

    def test_license_is_an_spdx_expression(self, build_log: tuple[Path, str]) -> None:
        """pyproject's `license = "Apache-2.0"` reaches the metadata as PEP 639 says."""
        with zipfile.ZipFile(build_log[0]) as wheel:
            [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
            metadata = wheel.read(name).decode()
        assert "License-Expression: Apache-2.0" in metadata.splitlines()

    def test_holds_every_module_and_the_dialplan(self, installed: tuple[Path, Path]) -> None:
        """Every ivr module, dialplan file, AGI script and data file is in the wheel."""
        names = set(zipfile.ZipFile(installed[0]).namelist())
        modules = {str(p.relative_to(REPO)) for p in (REPO / "ivr").rglob("*.py")}
        assert modules <= names, sorted(modules - names)
        assert {f"ivr/dialplan/{p.name}" for p in (REPO / "dialplan").glob("*.conf")} <= names
        assert "ivr/py.typed" in names
        assert "ivr/agi_scripts/callmfa-verify.agi" in names
        assert {str(p.relative_to(REPO)) for p in (REPO / "ivr").rglob("data/*")} <= names

    def test_help(self, installed: tuple[Path, Path]) -> None:
        """`callmfa --help` from the fresh venv lists the commands."""
        out = subprocess.run([str(installed[1] / "callmfa"), "--help"], capture_output=True,
                             text=True, check=True, timeout=60)
        for command in ("serve", "verify", "check", "report", "install-dialplan", "settings"):
            assert command in out.stdout

    def test_install_dialplan_copies_the_shipped_files(
        self, installed: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """install-dialplan DIR copies the same files the repository's dialplan/ holds."""
        out = subprocess.run([str(installed[1] / "callmfa"), "install-dialplan", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert os.access(tmp_path / "callmfa-verify.agi", os.X_OK)
        for conf in (REPO / "dialplan").glob("*.conf"):
            assert (tmp_path / conf.name).read_text() == conf.read_text()
        again = subprocess.run([str(installed[1] / "callmfa"), "install-dialplan",
                                str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert "--force overwrites" in again.stderr

    def test_install_dialplan_records_the_prompts(
        self, installed: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """--prompts SOUNDS_DIR records every prompt of the packaged catalogue, per language."""
        sounds = tmp_path / "sounds"
        out = subprocess.run([str(installed[1] / "callmfa"), "install-dialplan",
                              str(tmp_path), "--prompts", str(sounds)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        for lang in LANGUAGES:
            assert {p.stem for p in (sounds / lang / "callmfa").glob("*.wav")} == set(PROMPTS)

    def test_check_against_the_sandbox(
        self, installed: tuple[Path, Path], sandbox: Sandbox
    ) -> None:
        """`callmfa check` from the wheel's venv: all ok against the sandbox."""
        out = run_cli(sandbox, "check", exe=str(installed[1] / "callmfa"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.splitlines()[-1] == "all checks passed"


