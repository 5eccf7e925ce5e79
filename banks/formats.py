"""Hash list files: reading ThreatExchange/HMA-style CSV or TSV lists of hashes, and writing a bank's entries out.

A list is read a line at a time: blank lines and lines starting with ``#`` are skipped; the delimiter is a tab
when the first data line holds one, a comma otherwise; fields may be quoted as in CSV. The first data line is a
header when it names known columns (case-insensitively): the hash (``hash``, ``pdq``, ``signal_value``,
``value``, ``sha256``), its kind (``kind``, ``signal_type``, ``type``), an id (``id``, ``entry_id``,
``content_id``) and a note (``note``, ``notes``, ``description``); other columns are ignored. Without a header
the columns are ``hash[,id[,note]]`` (later fields join the note). A kind given on a row wins over the default.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator

from banks.store import Entry, NewEntry, normalise_hash
from classifiers.errors import ModerationError

HASH_COLUMNS = ("hash", "pdq", "signal_value", "value", "sha256")
KIND_COLUMNS = ("kind", "signal_type", "type")
ID_COLUMNS = ("id", "entry_id", "content_id")
NOTE_COLUMNS = ("note", "notes", "description")
# Names a row (or the default) may give its kind in; ThreatExchange's indicator types included.
KIND_NAMES = {"pdq": "pdq", "hash_pdq": "pdq", "sha256": "sha256", "sha-256": "sha256", "hash_sha256": "sha256"}
EXPORT_HEADER = ("kind", "hash", "entry_id", "note")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85]+")  # what str.splitlines() splits on


def _kind(name: str, default: str) -> str | None:
    name = name.strip().lower()
    return KIND_NAMES.get(name) if name else default


def parse_hash_list(text: str, *, default_kind: str = "pdq", max_entries: int = 1_000_000) -> list[NewEntry]:
    """The entries of a hash list; ``invalid_request`` ("line N: ...") naming the first bad line."""
    default = KIND_NAMES.get(default_kind.strip().lower()) if isinstance(default_kind, str) else None
    if default is None:
        raise ModerationError("invalid_request", f"unknown hash kind {default_kind!r} (expected pdq or sha256)")
    delimiter: str | None = None
    columns: dict[str, int] | None = None  # field -> column index, from a header; None: positional
    column_kind = default  # a header's hash column named "pdq" or "sha256" says the kind
    entries: list[NewEntry] = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if delimiter is None:
            delimiter = "\t" if "\t" in line else ","
            fields = _fields(line, delimiter, number)
            names = [field.strip().lower() for field in fields]
            known = set(HASH_COLUMNS + KIND_COLUMNS + ID_COLUMNS + NOTE_COLUMNS)
            if any(name in known for name in names) and not any(_HEX64.fullmatch(name) for name in names):
                columns = _header(names, number)
                hash_name = names[columns["hash"]]
                column_kind = hash_name if hash_name in ("pdq", "sha256") else default
                continue
        else:
            fields = _fields(line, delimiter, number)
        if len(entries) >= max_entries:
            raise ModerationError("invalid_request", f"line {number}: more than {max_entries} entries in the list")
        entries.append(_entry(fields, columns, column_kind, delimiter, number))
    return entries


def _fields(line: str, delimiter: str, number: int) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error as error:
        raise ModerationError("invalid_request", f"line {number}: {error}") from None


def _header(names: list[str], number: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    for field, aliases in (("hash", HASH_COLUMNS), ("kind", KIND_COLUMNS), ("id", ID_COLUMNS),
                           ("note", NOTE_COLUMNS)):
        for index, name in enumerate(names):
            if name in aliases:
                columns[field] = index
                break
    if "hash" not in columns:
        raise ModerationError("invalid_request", f"line {number}: the header names no hash column "
                              f"(one of {', '.join(HASH_COLUMNS)})")
    return columns


def _entry(fields: list[str], columns: dict[str, int] | None, default: str, delimiter: str,
           number: int) -> NewEntry:
    def cell(name: str) -> str:
        index = columns.get(name) if columns is not None else None
        return fields[index].strip() if index is not None and index < len(fields) else ""

    if columns is None:  # positional: hash[,id[,note]]
        value = fields[0].strip()
        entry_id = fields[1].strip() if len(fields) > 1 else ""
        note = delimiter.join(fields[2:]).strip()
        kind: str | None = default
    else:
        value, entry_id, note = cell("hash"), cell("id"), cell("note")
        kind = _kind(cell("kind"), default)
        if kind is None:
            raise ModerationError("invalid_request", f"line {number}: unknown hash kind {cell('kind')!r} "
                                  "(expected pdq or sha256)")
    if not value:
        raise ModerationError("invalid_request", f"line {number}: no hash")
    try:
        value = normalise_hash(kind, value)
    except ModerationError as error:
        raise ModerationError("invalid_request", f"line {number}: {error.message}") from None
    return NewEntry(kind=kind, hash=value, entry_id=entry_id or None, note=note or None)


def export_hash_list(entries: Iterable[Entry], *, delimiter: str = "\t") -> Iterator[str]:
    """A header ``kind<TAB>hash<TAB>entry_id<TAB>note`` then a line per entry, each ending in ``\\n``; fields are quoted
    as in CSV where they need it, and line breaks inside an id or note become spaces (the list is line based).
    ``parse_hash_list`` reads it back."""
    if delimiter not in ("\t", ","):
        raise ValueError("delimiter must be a tab or a comma (what parse_hash_list tells apart)")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")

    def line(fields: tuple[str, ...]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(fields)
        return buffer.getvalue()

    yield line(EXPORT_HEADER)
    for entry in entries:
        yield line((entry.kind, entry.hash, _one_line(entry.entry_id), _one_line(entry.note)))


def _one_line(value: str | None) -> str:
    return _LINE_BREAKS.sub(" ", value) if value else ""
