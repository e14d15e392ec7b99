"""The result of one ``callmfa check`` line (its own module: the checks are split across
:mod:`ivr.ops.doctor` and :mod:`ivr.ops.pbxcheck`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How one check ended."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report, with what to do when it is not ok."""

    name: str
    status: Status
    message: str
    fix: str | None = None
