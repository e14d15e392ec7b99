"""docs/contract.md against the code: the outcome table names every Outcome, and each
``detail`` the code can give is listed in the row of its outcome (and nowhere else)."""

from __future__ import annotations

import ast
import itertools
import re
import time
from pathlib import Path

import pytest

from ivr.domain import outcome as outcome_module
from ivr.domain.outcome import Outcome
from ivr.domain.request import parse_request

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract.md"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
SOURCES = [*sorted((ROOT / "ivr").rglob("*.py")), *sorted((ROOT / "agi_scripts").glob("*"))]
_CODE = re.compile(r"`([^`]+)`")


def _strings(node: ast.expr) -> set[str]:
    """The details an argument can be: a string, or either branch of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _outcome_calls(tree: ast.AST) -> list[tuple[str, set[str]]]:
    """(member, details) for each ``f(..., Outcome.X, <detail>, ...)`` or tuple
    ``Outcome.X, <detail>``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            items = node.args
        elif isinstance(node, ast.Tuple):
            items = node.elts
        else:
            continue
        for arg, nxt in itertools.pairwise(items):
            if (isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name)
                    and arg.value.id == "Outcome"):
                found.append((arg.attr, _strings(nxt)))
    return found


def contract_outcomes() -> dict[str, set[str]]:
    """{outcome: the details its row lists} from the table under "The outcome"."""
    text = CONTRACT.read_text()
    table = text.split("| `outcome` | what happened | `detail` |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in table.strip().splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = _CODE.fullmatch(cells[0])
        assert name is not None, f"not an outcome row: {line}"
        detail = cells[2]
        rows[name.group(1)] = {d for d in _CODE.findall(detail) if re.fullmatch(r"[a-z_]+", d)}
    return rows


def code_details() -> dict[str, set[str]]:
    """{outcome: details} that the code passes next to ``Outcome.X``, plus the Q.850 maps,
    the throttle details of the admission script and the RequestError details."""
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        text = path.read_text()
        if path.suffix == ".py":
            for member, details in _outcome_calls(ast.parse(text)):
                found.setdefault(Outcome[member].value, set()).update(details)
        for detail in re.findall(r"RequestError\(\s*\"([^\"]+)\"", text):
            found.setdefault(Outcome.REJECTED.value, set()).add(detail)
        for detail in re.findall(r"\{'throttled', '([a-z_]+)'", text):
            found.setdefault(Outcome.THROTTLED.value, set()).add(detail)
    for mapping, out in ((outcome_module._BUSY_CAUSES, Outcome.BUSY),
                         (outcome_module._NO_ANSWER_CAUSES, Outcome.NO_ANSWER),
                         (outcome_module._UNREACHABLE_CAUSES, Outcome.UNREACHABLE)):
        found.setdefault(out.value, set()).update(mapping.values())
    return found


class TestOutcomeTable:
    def test_every_outcome_has_a_row(self) -> None:
        """The table's rows are exactly the Outcome values, none missing, none extra."""
        assert sorted(contract_outcomes()) == sorted(o.value for o in Outcome)

    @pytest.mark.parametrize("outcome", [o.value for o in Outcome])
    def test_code_details_are_in_the_row(self, outcome: str) -> None:
        """Every detail the code gives for this outcome is listed in its row."""
        documented = contract_outcomes()[outcome]
        given = code_details().get(outcome, set())
        # unreachable lists the common causes and says "...": the rest read cause_<n>.
        if outcome == Outcome.UNREACHABLE.value:
            given = {d for d in given if d not in outcome_module._UNREACHABLE_CAUSES.values()}
        assert given <= documented, f"{outcome}: not in docs/contract.md: {given - documented}"

    def test_documented_details_exist_in_the_code(self) -> None:
        """No row lists a detail that no code gives."""
        source = "\n".join(p.read_text() for p in SOURCES)
        for outcome, details in contract_outcomes().items():
            for detail in details:
                assert f'"{detail}"' in source or f"'{detail}'" in source, (outcome, detail)

    def test_a_detail_belongs_to_one_outcome(self) -> None:
        """The same detail under two outcomes (originate_failed was) confuses a reader."""
        seen: dict[str, str] = {}
        for outcome, details in code_details().items():
            for detail in details:
                assert seen.setdefault(detail, outcome) == outcome, (detail, seen[detail], outcome)


class TestEvents:
    def test_progress_events_are_the_documented_ones(self) -> None:
        """The progress events table names what the code writes to callmfa:events."""
        text = CONTRACT.read_text()
        table = text.split("| event | when |", 1)[1].split("\n\n", 1)[0]
        documented = {_CODE.findall(line)[0] for line in table.strip().splitlines()[1:]}
        source = "\n".join(p.read_text() for p in SOURCES)
        written = set(re.findall(r"\.event\([^,]+, \"([a-z_]+)\"", source)) | set(
            re.findall(r"'event', '([a-z_]+)'", source))
        written -= {"bypass_used"}  # callmfa:audit, not callmfa:events
        assert written <= documented


def troubleshooting_rows() -> set[tuple[str, str]]:
    """(outcome, detail) of each row of docs/troubleshooting.md's table ('' for none)."""
    rows = set()
    for line in TROUBLESHOOTING.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not (name := _CODE.fullmatch(cells[0])):
            continue
        details = _CODE.findall(cells[1]) or [""]
        rows |= {(name.group(1), d) for d in details}
    return rows


class TestTroubleshooting:
    @pytest.mark.parametrize("outcome", [o.value for o in Outcome])
    def test_every_outcome_has_an_entry(self, outcome: str) -> None:
        """denied, locked_out, machine_answered, throttled, blocked and bypassed had none."""
        assert outcome in {o for o, _ in troubleshooting_rows()}

    @pytest.mark.parametrize("detail", sorted(contract_outcomes()["error"]))
    def test_every_error_detail_has_an_entry(self, detail: str) -> None:
        """error/no_pin and error/no_code had none: each error detail needs its own fix."""
        assert ("error", detail) in troubleshooting_rows()


class TestRequestExample:
    def test_the_xadd_example_is_valid_now(self) -> None:
        """The XADD example carries no expires_at that is already past (issue 19): pasted
        as is it is a valid request that has not expired."""
        line = next(x for x in CONTRACT.read_text().splitlines()
                    if x.startswith("XADD callmfa:requests * request "))
        payload = re.fullmatch(r"XADD callmfa:requests \* request '(.*)'", line)
        assert payload is not None
        assert "expires_at" not in payload.group(1)
        parse_request(payload.group(1), requested_at=time.time(), default_ttl_s=120)
