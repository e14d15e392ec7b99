"""pyproject.toml asks for what its own fields need."""

from __future__ import annotations

import re
import tomllib

from ..conftest import REPO


def test_setuptools_reads_the_spdx_license() -> None:
    """`license = "Apache-2.0"` (an SPDX string) needs setuptools 77 or later: it asked
    for 69."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    [req] = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", req)
    assert match is not None, req
    assert int(match.group(1)) >= 77


def test_every_package_data_directory_is_a_listed_package() -> None:
    """A directory of package data under ivr/ is itself in `packages` (the build warned
    about ivr.domain.data)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = set(data["tool"]["setuptools"]["packages"])
    for directory in (REPO / "ivr").rglob("*"):
        if directory.is_dir() and directory.name != "__pycache__" and any(
                f.is_file() and f.suffix != ".pyc" for f in directory.iterdir()):
            name = ".".join(directory.relative_to(REPO).parts)
            assert name in packages, name
