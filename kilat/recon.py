"""Position reconciliation: Kilat's positions against a custodian's or broker's position file.

``kilat recon FILE`` reads the file, compares it with Kilat's positions and lists the breaks.
A reconciliation only reads: it changes neither the file, nor Kilat's state, nor its arguments.

The position file
-----------------
UTF-8 text (a leading BOM is allowed), comma separated, standard CSV quoting, optionally gzipped
(recognised by the gzip magic number; a name ending in ``.gz`` must hold gzip data). Line 1 is a
header naming exactly the columns ``account,instrument,location,quantity`` in any order, plus
optionally ``as_of``; names are lowercase and unique. Every other line is one position:

- every field is non-empty and printable (spaces and tabs around a value are dropped);
- ``account`` and ``instrument`` are ones Kilat knows; ``location`` is free text (a custodian or
  depot code);
- ``quantity`` is an integer number of lots in int64, signed: ``+``/none = long, ``-`` = short;
  ASCII digits only (``1.5``, ``1e3``, ``1_000`` and ``1,000`` are refused);
- ``as_of`` (if the column is there) is a ``YYYY-MM-DD`` date, the same on every line: a file is
  a statement at one date (reported in the result, not compared with anything);
- a position (account, instrument, location) appears once;
- blank lines at the end of the file are ignored; anywhere else they are refused.

A header with no rows is valid (the file holds no positions). Anything else is refused with a
``ReconFileError`` naming the file, the line (1 = the header), the field and what was expected.

The breaks
----------
A zero quantity counts as no position, whether written as 0 or absent. Per (account,
instrument, location), with Kilat's quantity ``kilat`` and the file's ``file``:

- ``quantity_mismatch``: both non-zero and different (a sign flip included);
- ``missing_in_file``: Kilat holds a non-zero position, the file none;
- ``missing_in_kilat``: the file holds a non-zero position, Kilat none.

``difference`` is ``file - kilat``. Breaks are sorted by (account, instrument, location).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from collections.abc import Collection, Iterable, Mapping
from datetime import date
from enum import StrEnum
from pathlib import Path

import msgspec

#: The columns a position file must have, in the order Kilat writes them.
REQUIRED_COLUMNS = ("account", "instrument", "location", "quantity")
#: The column a position file may have besides.
OPTIONAL_COLUMNS = ("as_of",)

EXIT_MATCHED = 0
EXIT_BREAKS = 1
EXIT_REFUSED = 2

OUT_FORMATS = ("text", "csv", "json")

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

_GZIP_MAGIC = b"\x1f\x8b"
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BLANKS = " \t"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

Key = tuple[str, str, str]  # (account, instrument, location)


class ReconFileError(ValueError):
    """A position file was refused; the message names the file, the line, the field and what
    was expected. ``line`` is 1-based (1 = the header), None when the whole file is at fault."""

    def __init__(self, path: str, line: int | None, field: str | None, text: str):
        self.path, self.line, self.field, self.text = path, line, field, text
        where = [path]
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {text}")


class PositionLine(msgspec.Struct, frozen=True, gc=False):
    """One position of a file. ``line`` is where it was read (0 when it was not read from one)."""

    account: str
    instrument: str
    location: str
    quantity: int
    line: int = 0
    as_of: str = ""

    @property
    def key(self) -> Key:
        return (self.account, self.instrument, self.location)


class BreakKind(StrEnum):
    QUANTITY_MISMATCH = "quantity_mismatch"
    MISSING_IN_FILE = "missing_in_file"
    MISSING_IN_KILAT = "missing_in_kilat"


class Break(msgspec.Struct, frozen=True, gc=False):
    """One difference. ``difference`` = ``file_qty - kilat_qty``; ``line`` is the file's line
    (0 when the file has no line for it)."""

    kind: BreakKind
    account: str
    instrument: str
    location: str
    kilat_qty: int
    file_qty: int
    difference: int
    line: int


BREAK_COLUMNS = tuple(Break.__struct_fields__)


class ReconResult(msgspec.Struct, frozen=True):
    """The outcome of one reconciliation.

    ``compared`` counts the positions looked at (the union of both sides within the scope);
    ``matched`` those that agree; ``file_lines_out_of_scope`` the file's lines whose location
    is outside the scope (ignored). ``scope`` is the sorted scope, None for every location.
    """

    breaks: tuple[Break, ...]
    compared: int
    matched: int
    file_lines_out_of_scope: int = 0
    scope: tuple[str, ...] | None = None
    as_of: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Breaks per kind, every kind present (0 included). O(breaks)."""
        counts = {kind.value: 0 for kind in BreakKind}
        for b in self.breaks:
            counts[b.kind.value] += 1
        return counts

    def to_csv(self) -> str:
        """The breaks as CSV, one per line, under a header of ``BREAK_COLUMNS``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(BREAK_COLUMNS)
        for b in self.breaks:
            writer.writerow([b.kind.value, b.account, b.instrument, b.location, b.kilat_qty,
                             b.file_qty, b.difference, b.line])
        return buf.getvalue()

    def to_json(self) -> str:
        """The whole result as one JSON object: the figures, ``counts`` and ``breaks``."""
        return msgspec.json.encode({
            "as_of": self.as_of,
            "scope": self.scope,
            "compared": self.compared,
            "matched": self.matched,
            "file_lines_out_of_scope": self.file_lines_out_of_scope,
            "counts": self.counts,
            "breaks": self.breaks,
        }).decode()

    def to_text(self) -> str:
        """A summary line, then the breaks as an aligned table (for a terminal)."""
        counts = ", ".join(f"{kind} {n}" for kind, n in self.counts.items())
        head = [f"{len(self.breaks)} breaks ({counts}); {self.compared} positions compared, "
                f"{self.matched} matched"]
        if self.as_of:
            head.append(f"file as of {self.as_of}")
        if self.scope is not None:
            head.append(f"locations {', '.join(self.scope)}; {self.file_lines_out_of_scope} file "
                        f"lines outside them ignored")
        lines = ["; ".join(head)]
        if self.breaks:
            table = [list(BREAK_COLUMNS)] + [
                [b.kind.value, b.account, b.instrument, b.location, str(b.kilat_qty),
                 str(b.file_qty), str(b.difference), str(b.line or "")] for b in self.breaks
            ]
            widths = [max(len(row[c]) for row in table) for c in range(len(BREAK_COLUMNS))]
            for row in table:
                cells = [cell.rjust(w) if c >= 4 else cell.ljust(w)
                         for c, (cell, w) in enumerate(zip(row, widths, strict=True))]
                lines.append("  ".join(cells).rstrip())
        return "\n".join(lines) + "\n"


# -- READING A POSITION FILE --------------------------------------------------------------------


def parse_positions_csv(
    path: str | Path,
    *,
    known_accounts: Collection[str] | None,
    known_instruments: Collection[str] | None,
) -> list[PositionLine]:
    """Read a position file (format in the module's docstring), in file order. O(size).

    ``known_accounts`` / ``known_instruments``: the accounts and instruments Kilat knows; a line
    naming another is refused. Pass None explicitly to accept any (tests, tools).
    Raises ReconFileError naming the file, the line and the field.
    """
    name = str(path)
    text = _read_text(Path(path), name)
    records = _records(text, name)
    if not records:
        raise ReconFileError(name, 1, None, "the file is empty; expected a header row "
                                            f"{','.join(REQUIRED_COLUMNS)}")
    columns = _header(records[0][1], name)
    body = records[1:]
    while body and _is_blank(body[-1][1]):
        body.pop()
    lines: list[PositionLine] = []
    first_line: dict[Key, int] = {}
    as_of_line = 0
    for line_no, fields in body:
        values = _fields(fields, columns, line_no, name)
        account, instrument = values["account"], values["instrument"]
        if known_accounts is not None and account not in known_accounts:
            raise ReconFileError(name, line_no, "account", f"unknown account {account!r}; "
                                 f"expected one of Kilat's accounts ({_some(known_accounts)})")
        if known_instruments is not None and instrument not in known_instruments:
            raise ReconFileError(name, line_no, "instrument", f"unknown instrument "
                                 f"{instrument!r}; expected one of Kilat's instruments "
                                 f"({_some(known_instruments)})")
        quantity = _quantity(values["quantity"], line_no, name)
        as_of = values.get("as_of", "")
        if as_of:
            _check_date(as_of, line_no, name)
            if as_of_line and as_of != lines[0].as_of:
                raise ReconFileError(name, line_no, "as_of", f"expected the same date as line "
                                     f"{as_of_line} ({lines[0].as_of}), got {as_of!r}")
            as_of_line = as_of_line or line_no
        key = (account, instrument, values["location"])
        if key in first_line:
            raise ReconFileError(name, line_no, "account,instrument,location",
                                 f"duplicate position {key!r}; expected each (account, "
                                 f"instrument, location) once, first on line {first_line[key]}")
        first_line[key] = line_no
        lines.append(PositionLine(*key, quantity, line_no, as_of))
    return lines


def _read_text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReconFileError(name, None, None,
                             f"cannot read the file ({exc.strerror or exc})") from exc
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReconFileError(name, None, None,
                                 f"expected a complete gzip stream ({exc})") from exc
    elif path.name.endswith(".gz"):
        raise ReconFileError(name, None, None, "expected gzip data (the name ends in .gz), "
                                               "got a file without the gzip header")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = _LINE_BREAK.split(data[:exc.start])  # the csv reader's line breaks
        line, column = len(before), len(before[-1]) + 1
        raise ReconFileError(name, line, None, f"expected UTF-8 text, got byte "
                             f"0x{data[exc.start]:02x} at byte {column} of the line") from exc


def _records(text: str, name: str) -> list[tuple[int, list[str]]]:
    """The CSV records with the line each starts on; blank text has none."""
    if not text.strip(_BLANKS + "\r\n"):
        return []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = []
    start = 1
    try:
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ReconFileError(name, start, None, f"expected well-formed CSV ({exc})") from exc
    return records


def _header(fields: list[str], name: str) -> list[str]:
    if _is_blank(fields):
        raise ReconFileError(name, 1, None, f"expected a header row "
                             f"{','.join(REQUIRED_COLUMNS)}, got a blank line")
    names = [f.strip(_BLANKS) for f in fields]
    allowed = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    expected = f"expected the columns {','.join(REQUIRED_COLUMNS)} (any order, optionally as_of)"
    if not set(names) & set(REQUIRED_COLUMNS):
        hint = "; the file must be comma separated" if any(
            sep in fields[0] for sep in ";\t|") else ""
        raise ReconFileError(name, 1, None, f"expected a header row {','.join(REQUIRED_COLUMNS)}"
                             f", got {','.join(fields)[:80]!r}{hint}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ReconFileError(name, 1, n, f"column {n!r} appears twice; {expected}")
        seen.add(n)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        listed = ", ".join(repr(n) if n else f"an unnamed column {names.index(n) + 1}"
                           for n in unknown)
        raise ReconFileError(name, 1, unknown[0], f"unknown column(s) {listed}; {expected}")
    missing = [n for n in REQUIRED_COLUMNS if n not in seen]
    if missing:
        raise ReconFileError(name, 1, missing[0], f"missing column(s) "
                             f"{', '.join(map(repr, missing))}; {expected}")
    return names


def _fields(fields: list[str], columns: list[str], line_no: int, name: str) -> dict[str, str]:
    if len(fields) != len(columns):
        if _is_blank(fields):
            raise ReconFileError(name, line_no, None, f"blank line; expected {len(columns)} "
                                 f"fields ({','.join(columns)})")
        if len(fields) < len(columns):
            missing = columns[len(fields)]
            raise ReconFileError(name, line_no, missing, f"expected {len(columns)} fields "
                                 f"({','.join(columns)}), got {len(fields)}: {missing!r} "
                                 "is missing")
        raise ReconFileError(name, line_no, None, f"expected {len(columns)} fields "
                             f"({','.join(columns)}), got {len(fields)}: field "
                             f"{len(columns) + 1} has no column")
    values = {}
    for column, raw in zip(columns, fields, strict=True):
        value = raw.strip(_BLANKS)
        if not value:
            raise ReconFileError(name, line_no, column, "expected a value, got an empty field")
        if _CONTROL.search(value):
            raise ReconFileError(name, line_no, column,
                                 f"expected printable text, got {value!r}")
        values[column] = value
    return values


def _quantity(text: str, line_no: int, name: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ReconFileError(name, line_no, "quantity", f"expected an integer number of lots "
                             f"(e.g. 200 long, -200 short), got {text!r}")
    digits = text.lstrip("+-").lstrip("0")
    qty = int(text) if len(digits) <= 19 else None  # int64 has 19 digits; avoid huge int()s
    if qty is None or not I64_MIN <= qty <= I64_MAX:
        raise ReconFileError(name, line_no, "quantity", f"expected an integer within int64 "
                             f"({I64_MIN}..{I64_MAX}), got {text[:40]!r}")
    return qty


def _check_date(text: str, line_no: int, name: str) -> None:
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise ReconFileError(name, line_no, "as_of", f"expected a date YYYY-MM-DD, "
                             f"got {text!r}") from None


def _is_blank(fields: list[str]) -> bool:
    return len(fields) <= 1 and not "".join(fields).strip(_BLANKS)


def _some(names: Collection[str], shown: int = 5) -> str:
    ordered = sorted(names)
    more = f", … {len(ordered) - shown} more" if len(ordered) > shown else ""
    return ", ".join(ordered[:shown]) + more if ordered else "none configured"


# -- WRITING A POSITION FILE --------------------------------------------------------------------


def to_lines(ours: Mapping[Key, int]) -> list[PositionLine]:
    """Kilat's positions as file lines, sorted by key, zeros included. O(n log n)."""
    return [PositionLine(*key, qty) for key, qty in sorted(ours.items())]


def positions_to_csv(lines: Iterable[PositionLine]) -> str:
    """A position file (header ``account,instrument,location,quantity``, plus ``as_of`` when a
    line has one) that ``parse_positions_csv`` reads back to the same positions."""
    lines = list(lines)
    with_date = any(ln.as_of for ln in lines)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS + (OPTIONAL_COLUMNS if with_date else ()))
    for ln in lines:
        row = [ln.account, ln.instrument, ln.location, ln.quantity]
        writer.writerow(row + [ln.as_of] if with_date else row)
    return buf.getvalue()


# -- KILAT'S SIDE --------------------------------------------------------------------------------


def positions_from_table(view, *, custodians: Mapping[str, str] | None = None) -> dict[Key, int]:
    """Kilat's positions from the server's positions table (a ``TableView``). O(rows).

    Columns: ``account``; ``instrument`` (or ``symbol``); ``quantity`` (or ``position``);
    ``location`` if there. Without a ``location`` column, each account's location is
    ``custodians[account]``, or "" when not given (such positions then match no file line
    with a location, and show as breaks). Zero positions are left out. Raises ValueError on
    a table without those columns, a non-integer quantity or a repeated key.
    """
    columns = list(view.columns)
    account_c = _column(columns, "account")
    instrument_c = _column(columns, "instrument", "symbol")
    quantity_c = _column(columns, "quantity", "position")
    location_c = columns.index("location") if "location" in columns else None
    custodians = custodians or {}
    ours: dict[Key, int] = {}
    for n, row in enumerate(view.rows, 1):
        account, qty = row[account_c], row[quantity_c]
        if type(qty) is not int:
            raise ValueError(f"positions table, row {n}: expected an integer quantity, "
                             f"got {qty!r}")
        location = row[location_c] if location_c is not None else custodians.get(account, "")
        key = (str(account), str(row[instrument_c]), str(location))
        if key in ours:
            raise ValueError(f"positions table, row {n}: position {key!r} given twice")
        if qty:
            ours[key] = qty
    return ours


def _column(columns: list[str], *names: str) -> int:
    for name in names:
        if name in columns:
            return columns.index(name)
    raise ValueError(f"positions table: expected a column {' or '.join(map(repr, names))}, "
                     f"got {columns}")


# -- RECONCILING --------------------------------------------------------------------------------


def reconcile(
    ours: Mapping[Key, int],
    theirs: Iterable[PositionLine],
    *,
    scope: Collection[str] | None = None,
) -> ReconResult:
    """Compare Kilat's positions with a file's; neither argument is changed. O(n log n).

    ``scope``: when given, only these locations are compared, on both sides (the custodian
    the file comes from: its file says nothing about positions held elsewhere); the file's
    lines at other locations are ignored and counted in ``file_lines_out_of_scope``. None
    compares every location. An empty scope is refused (it would compare nothing and pass).
    Raises ValueError if ``theirs`` repeats a key or ``ours`` holds a non-integer.
    """
    if scope is not None and not scope:
        raise ValueError("scope: expected at least one location, or None for every location")
    in_scope = (lambda location: True) if scope is None else scope.__contains__
    file_lines: dict[Key, PositionLine] = {}
    out_of_scope = 0
    as_of = ""
    for ln in theirs:
        as_of = as_of or ln.as_of
        if not in_scope(ln.location):
            out_of_scope += 1
            continue
        key = ln.key
        if key in file_lines:
            raise ValueError(f"file positions: {key!r} given twice (lines "
                             f"{file_lines[key].line} and {ln.line})")
        file_lines[key] = ln
    keys = set(file_lines)
    for key, qty in ours.items():
        if type(qty) is not int:
            raise ValueError(f"Kilat positions: expected an integer quantity for {key!r}, "
                             f"got {qty!r}")
        if in_scope(key[2]):
            keys.add(key)
    breaks = []
    for key in sorted(keys):
        kilat_qty = ours.get(key, 0)
        ln = file_lines.get(key)
        file_qty = ln.quantity if ln is not None else 0
        if kilat_qty == file_qty:
            continue
        kind = (BreakKind.MISSING_IN_KILAT if kilat_qty == 0
                else BreakKind.MISSING_IN_FILE if file_qty == 0
                else BreakKind.QUANTITY_MISMATCH)
        breaks.append(Break(kind, *key, kilat_qty, file_qty, file_qty - kilat_qty,
                            ln.line if ln is not None else 0))
    return ReconResult(
        tuple(breaks), len(keys), len(keys) - len(breaks), out_of_scope,
        None if scope is None else tuple(sorted(scope)), as_of,
    )


def run_recon(
    file: str | Path,
    ours: Mapping[Key, int],
    known_accounts: Collection[str] | None,
    known_instruments: Collection[str] | None,
    out_format: str = "text",
    *,
    scope: Collection[str] | None = None,
) -> tuple[int, str]:
    """What ``kilat recon FILE`` does: (exit code, text to print).

    Exit 0 with no breaks, 1 with breaks (the report in ``out_format``: text, csv or json),
    2 when the file is refused (the text is the ReconFileError's message).
    """
    if out_format not in OUT_FORMATS:
        raise ValueError(f"out_format: expected one of {', '.join(OUT_FORMATS)}, "
                         f"got {out_format!r}")
    try:
        theirs = parse_positions_csv(file, known_accounts=known_accounts,
                                     known_instruments=known_instruments)
    except ReconFileError as exc:
        return EXIT_REFUSED, str(exc)
    result = reconcile(ours, theirs, scope=scope)
    text = {"text": result.to_text, "csv": result.to_csv, "json": result.to_json}[out_format]()
    return (EXIT_BREAKS if result.breaks else EXIT_MATCHED), text
