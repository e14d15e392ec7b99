"""Checking user directory entries before they are stored: one from ``callmfa user set``,
an LDAP record, or every row of a ``callmfa user import`` CSV file.

Pure: user names are normalised (:func:`~ivr.domain.users.normalise_user`), numbers put in
E.164 (:func:`~ivr.domain.numbers.normalise_phone`), modes and languages checked as a
request's are (:mod:`ivr.domain.request`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from ..exceptions import RequestError
from .directory import DirectoryEntry
from .numbers import PhoneNumberError, normalise_phone
from .request import check_lang, check_mode
from .users import UserNameError, normalise_user

CSV_HEADER = ("user", "phone", "mode", "lang")
REQUIRED_COLUMNS = ("user", "phone")


class EntryError(ValueError):
    """An entry that cannot be stored; the message says why."""


def directory_entry(
    user: str, phone: str, *, mode: str = "", lang: str = "", region: str | None,
    source: str = "local",
) -> DirectoryEntry:
    """The checked, normalised entry; EntryError naming the first field that is wrong.

    An empty ``mode`` or ``lang`` is ``standard`` or ``en``; a ``phone`` without ``+`` is
    read as a number of ``region``.
    """
    try:
        name = normalise_user(user)
    except UserNameError as e:
        raise EntryError(f"user: {e}") from None
    try:
        number = normalise_phone(phone, region)
    except PhoneNumberError as e:
        raise EntryError(f"phone: {e}") from None
    try:
        checked_mode = check_mode(mode or "standard")
        checked_lang = check_lang(lang or "en")
    except RequestError as e:
        raise EntryError(e.message) from None
    return DirectoryEntry(user=name, phone=number, mode=checked_mode, lang=checked_lang,
                          source=source)


@dataclass(frozen=True)
class Refused:
    """A row of the CSV file that cannot be imported: its line and why."""

    line: int
    why: str


@dataclass
class CsvImport:
    """What a CSV file holds: the entries, or the rows refused (then nothing is imported)."""

    entries: list[DirectoryEntry] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


def parse_csv(text: str, *, region: str | None) -> CsvImport:
    """Every row of a ``user,phone,mode,lang`` file, checked; every refused row reported.

    The header line names the columns (``mode`` and ``lang`` may be left out, or left empty
    in a row); a user twice in the file (after normalisation) is refused at its second
    line. Blank lines are skipped. Line numbers are the file's (the header is line 1).
    """
    result = CsvImport()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        result.refused.append(Refused(1, f"not CSV: {e}"))
        return result
    columns = [c.strip().lower() for c in header or []]
    unknown = [c for c in columns if c not in CSV_HEADER]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if not columns or unknown or missing or len(set(columns)) != len(columns):
        result.refused.append(Refused(1, "the header must be user,phone,mode,lang (mode and "
                                         f"lang may be left out); found {','.join(columns)!r}"))
        return result
    seen: dict[str, int] = {}
    line = 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as e:
            result.refused.append(Refused(reader.line_num, f"not CSV: {e}"))
            return result
        if row is None:
            break
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            result.refused.append(Refused(line, f"{len(row)} fields where the header has "
                                                f"{len(columns)}"))
            continue
        cells = {c: cell.strip() for c, cell in zip(columns, row, strict=True)}
        try:
            entry = directory_entry(cells["user"], cells["phone"], mode=cells.get("mode", ""),
                                    lang=cells.get("lang", ""), region=region)
        except EntryError as e:
            result.refused.append(Refused(line, str(e)))
            continue
        if entry.user in seen:
            result.refused.append(Refused(line, f"user {entry.user!r} is already on line "
                                                f"{seen[entry.user]}"))
            continue
        seen[entry.user] = line
        result.entries.append(entry)
    return result
