"""Position reconciliation: a custodian's position file against Kilat's positions.

Malformed files are refused naming the file, the line and the field; the breaks come out in a
fixed order; a reconciliation changes neither its file nor its arguments.
"""

import copy
import gzip
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.messages import TableView
from kilat.recon import (
    BREAK_COLUMNS,
    EXIT_BREAKS,
    EXIT_MATCHED,
    EXIT_REFUSED,
    I64_MAX,
    I64_MIN,
    PositionLine,
    ReconFileError,
    parse_positions_csv,
    positions_from_table,
    positions_to_csv,
    reconcile,
    run_recon,
    to_lines,
)

ACCOUNTS = {"FUND1", "FUND2"}
INSTRUMENTS = {"AAPL", "ESH4", "SAP"}
HEADER = "account,instrument,location,quantity\n"


def write(tmp_path: Path, text: str | bytes, name: str = "positions.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def parse(path: Path) -> list[PositionLine]:
    return parse_positions_csv(path, known_accounts=ACCOUNTS, known_instruments=INSTRUMENTS)


def keys_and_qty(lines: list[PositionLine]) -> list[tuple]:
    return [(ln.account, ln.instrument, ln.location, ln.quantity, ln.as_of) for ln in lines]


# -- READING A FILE --


def test_parse_when_file_is_valid_then_lines_in_file_order_with_line_numbers(tmp_path):
    path = write(tmp_path, HEADER + "FUND1,AAPL,CUSTODY,200\nFUND2,ESH4,BROKER,-3\n")

    lines = parse(path)

    assert lines == [
        PositionLine("FUND1", "AAPL", "CUSTODY", 200, line=2),
        PositionLine("FUND2", "ESH4", "BROKER", -3, line=3),
    ]


def test_parse_when_columns_reordered_with_bom_crlf_quotes_and_spaces_then_read(tmp_path):
    text = ('\ufeffquantity, location ,instrument,account\r\n'
            '+200,"CUSTODY, NY",AAPL, FUND1 \r\n'
            '0007,CUSTODY,SAP,FUND2\r\n\r\n\r\n')
    path = write(tmp_path, text)

    lines = parse(path)

    assert keys_and_qty(lines) == [("FUND1", "AAPL", "CUSTODY, NY", 200, ""),
                                   ("FUND2", "SAP", "CUSTODY", 7, "")]


def test_parse_when_lines_end_in_cr_only_then_lines_still_counted(tmp_path):
    path = write(tmp_path, HEADER.replace("\n", "\r") + "FUND1,AAPL,C,1\rFUND1,SAP,C,x\r")

    with pytest.raises(ReconFileError) as caught:
        parse(path)

    assert (caught.value.line, caught.value.field) == (3, "quantity")


def test_parse_when_as_of_column_given_then_kept_on_every_line(tmp_path):
    path = write(tmp_path, "as_of," + HEADER + "2024-03-01,FUND1,AAPL,C,1\n2024-03-01,FUND1,SAP,C,2\n")

    lines = parse(path)

    assert {ln.as_of for ln in lines} == {"2024-03-01"}


def test_parse_when_header_only_then_no_positions(tmp_path):
    assert parse(write(tmp_path, HEADER)) == []


def test_parse_when_gzipped_then_read_like_plain(tmp_path):
    text = "\ufeff" + HEADER + "FUND1,AAPL,CUSTODY,200\n"
    path = write(tmp_path, gzip.compress(text.encode()), "positions.csv.gz")

    assert keys_and_qty(parse(path)) == [("FUND1", "AAPL", "CUSTODY", 200, "")]


def test_parse_when_quantity_at_int64_bounds_then_accepted(tmp_path):
    path = write(tmp_path, HEADER + f"FUND1,AAPL,C,{I64_MAX}\nFUND1,SAP,C,{I64_MIN}\n")

    assert [ln.quantity for ln in parse(path)] == [I64_MAX, I64_MIN]


# -- REFUSING A FILE --

MALFORMED = [
    # (name, file text, line, field, words in the message)
    ("empty", "", 1, None, "the file is empty; expected a header row account,instrument"),
    ("only a bom and blank lines", "\ufeff\n\n", 1, None, "the file is empty"),
    ("no header", "FUND1,AAPL,C,1\n", 1, None, "expected a header row account,instrument,location,"
                                               "quantity, got 'FUND1,AAPL,C,1'"),
    ("semicolons", "account;instrument;location;quantity\n", 1, None,
     "the file must be comma separated"),
    ("missing column", "account,instrument,quantity\nFUND1,AAPL,1\n", 1, "location",
     "missing column(s) 'location'"),
    ("unknown columns", "account,instrument,location,quantity,price,desk\n", 1, "price",
     "unknown column(s) 'price', 'desk'; expected the columns account,instrument,location,quantity"),
    ("unnamed column", "account,instrument,location,quantity,\n", 1, "",
     "unknown column(s) an unnamed column 5"),
    ("duplicate column", "account,instrument,location,quantity,account\n", 1, "account",
     "column 'account' appears twice"),
    ("case of a column", "Account,instrument,location,quantity\n", 1, "Account",
     "unknown column(s) 'Account'"),
    ("empty account", HEADER + "FUND1,AAPL,C,1\n,AAPL,C,1\n", 3, "account",
     "expected a value, got an empty field"),
    ("blank location", HEADER + "FUND1,AAPL,  ,1\n", 2, "location", "got an empty field"),
    ("empty quantity", HEADER + 'FUND1,AAPL,C,""\n', 2, "quantity", "got an empty field"),
    ("decimal quantity", HEADER + "FUND1,AAPL,C,1\nFUND1,SAP,C,1.5\n", 3, "quantity",
     "expected an integer number of lots (e.g. 200 long, -200 short), got '1.5'"),
    ("word quantity", HEADER + "FUND1,AAPL,C,abc\n", 2, "quantity", "got 'abc'"),
    ("exponent quantity", HEADER + "FUND1,AAPL,C,1e3\n", 2, "quantity", "got '1e3'"),
    ("underscore quantity", HEADER + "FUND1,AAPL,C,1_000\n", 2, "quantity", "got '1_000'"),
    ("thousands separator", HEADER + 'FUND1,AAPL,C,"1,000"\n', 2, "quantity", "got '1,000'"),
    ("non-ascii digits", HEADER + "FUND1,AAPL,C,\u0663\n", 2, "quantity", "got '\u0663'"),
    ("above int64", HEADER + f"FUND1,AAPL,C,{I64_MAX + 1}\n", 2, "quantity",
     f"expected an integer within int64 ({I64_MIN}..{I64_MAX}), got '{I64_MAX + 1}'"),
    ("below int64", HEADER + f"FUND1,AAPL,C,{I64_MIN - 1}\n", 2, "quantity", "within int64"),
    ("huge number", HEADER + "FUND1,AAPL,C," + "9" * 5000 + "\n", 2, "quantity", "within int64"),
    ("unknown account", HEADER + "FUND1,AAPL,C,1\nFUND9,AAPL,C,1\n", 3, "account",
     "unknown account 'FUND9'; expected one of Kilat's accounts (FUND1, FUND2)"),
    ("unknown instrument", HEADER + "FUND1,MSFT,C,1\n", 2, "instrument",
     "unknown instrument 'MSFT'; expected one of Kilat's instruments (AAPL, ESH4, SAP)"),
    ("duplicate key", HEADER + "FUND1,AAPL,C,1\nFUND1,SAP,C,1\nFUND1,AAPL,C,5\n", 4,
     "account,instrument,location", "duplicate position ('FUND1', 'AAPL', 'C'); expected each "
     "(account, instrument, location) once, first on line 2"),
    ("too few fields", HEADER + "FUND1,AAPL,C\n", 2, "quantity",
     "expected 4 fields (account,instrument,location,quantity), got 3: 'quantity' is missing"),
    ("too many fields", HEADER + "FUND1,AAPL,C,1,9\n", 2, None,
     "expected 4 fields (account,instrument,location,quantity), got 5: field 5 has no column"),
    ("blank line inside", HEADER + "FUND1,AAPL,C,1\n\nFUND1,SAP,C,1\n", 3, None, "blank line"),
    ("blank line before header", "\n" + HEADER, 1, None, "got a blank line"),
    ("control character", HEADER + 'FUND1,AAPL,"C\nD",1\n', 2, "location",
     "expected printable text, got 'C\\nD'"),
    ("unclosed quote", HEADER + 'FUND1,AAPL,"C,1\n', 2, None, "expected well-formed CSV"),
    ("not utf-8", HEADER.encode() + b"FUND1,AAPL,Z\xfcrich,1\n", 2, None,
     "expected UTF-8 text, got byte 0xfc at byte 13 of the line"),
    ("not utf-8 after crlf", HEADER.replace("\n", "\r\n").encode() + b"F,A,C,1\r\nF,A,\xff,1\r\n",
     3, None, "got byte 0xff at byte 5 of the line"),
    ("bad as_of", "as_of," + HEADER + "2024-13-01,FUND1,AAPL,C,1\n", 2, "as_of",
     "expected a date YYYY-MM-DD, got '2024-13-01'"),
    ("compact as_of", "as_of," + HEADER + "20240301,FUND1,AAPL,C,1\n", 2, "as_of",
     "expected a date YYYY-MM-DD"),
    ("mixed as_of", "as_of," + HEADER + "2024-03-01,FUND1,AAPL,C,1\n2024-03-02,FUND1,SAP,C,1\n",
     3, "as_of", "expected the same date as line 2 (2024-03-01), got '2024-03-02'"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_parse_when_file_malformed_then_refused_naming_file_line_and_field(
        tmp_path, text, line, field, words):
    path = write(tmp_path, text)

    with pytest.raises(ReconFileError) as caught:
        parse(path)

    err = caught.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    where = f"{path}, line {line}" + (f", field {field!r}" if field is not None else "")
    assert str(err).startswith(where + ": ")
    assert words in str(err)


def test_parse_when_gz_name_holds_plain_text_then_refused(tmp_path):
    path = write(tmp_path, HEADER, "positions.csv.gz")

    with pytest.raises(ReconFileError, match=r"positions\.csv\.gz: expected gzip data"):
        parse(path)


def test_parse_when_gzip_truncated_then_refused(tmp_path):
    data = gzip.compress((HEADER + "FUND1,AAPL,C,1\n" * 100).encode())
    path = write(tmp_path, data[: len(data) // 2], "positions.csv.gz")

    with pytest.raises(ReconFileError, match="expected a complete gzip stream"):
        parse(path)


def test_parse_when_gzipped_file_malformed_then_line_counted_in_the_plain_text(tmp_path):
    path = write(tmp_path, gzip.compress((HEADER + "FUND1,AAPL,C,1\nFUND1,SAP,C,x\n").encode()),
                 "p.csv.gz")

    with pytest.raises(ReconFileError) as caught:
        parse(path)

    assert (caught.value.line, caught.value.field) == (3, "quantity")


def test_parse_when_file_missing_then_refused(tmp_path):
    with pytest.raises(ReconFileError, match="cannot read the file"):
        parse(tmp_path / "nope.csv")


def test_parse_when_known_sets_are_none_then_any_account_and_instrument_accepted(tmp_path):
    path = write(tmp_path, HEADER + "ANY,THING,C,1\n")

    lines = parse_positions_csv(path, known_accounts=None, known_instruments=None)

    assert keys_and_qty(lines) == [("ANY", "THING", "C", 1, "")]


# -- RECONCILING --


def line(account, instrument, location, qty, n=0):
    return PositionLine(account, instrument, location, qty, n)


def test_reconcile_when_both_sides_agree_then_no_breaks():
    ours = {("FUND1", "AAPL", "C"): 200, ("FUND2", "SAP", "C"): -5}
    theirs = [line("FUND2", "SAP", "C", -5, 2), line("FUND1", "AAPL", "C", 200, 3)]

    result = reconcile(ours, theirs)

    assert result.breaks == ()
    assert (result.compared, result.matched) == (2, 2)
    assert result.counts == {"quantity_mismatch": 0, "missing_in_file": 0, "missing_in_kilat": 0}


def test_reconcile_when_quantities_differ_then_quantity_mismatch_with_file_minus_kilat():
    result = reconcile({("FUND1", "AAPL", "C"): 200}, [line("FUND1", "AAPL", "C", 150, 7)])

    (b,) = result.breaks
    assert (b.kind, b.kilat_qty, b.file_qty, b.difference, b.line) == (
        "quantity_mismatch", 200, 150, -50, 7)


def test_reconcile_when_sign_differs_then_quantity_mismatch():
    result = reconcile({("FUND1", "AAPL", "C"): 100}, [line("FUND1", "AAPL", "C", -100, 2)])

    assert [(b.kind, b.difference) for b in result.breaks] == [("quantity_mismatch", -200)]


def test_reconcile_when_file_lacks_kilat_position_then_missing_in_file():
    result = reconcile({("FUND1", "AAPL", "C"): 200}, [])

    (b,) = result.breaks
    assert (b.kind, b.kilat_qty, b.file_qty, b.difference, b.line) == (
        "missing_in_file", 200, 0, -200, 0)


def test_reconcile_when_file_says_zero_for_kilat_position_then_missing_in_file_at_that_line():
    result = reconcile({("FUND1", "AAPL", "C"): 200}, [line("FUND1", "AAPL", "C", 0, 4)])

    assert [(b.kind, b.line) for b in result.breaks] == [("missing_in_file", 4)]


def test_reconcile_when_kilat_lacks_file_position_then_missing_in_kilat():
    result = reconcile({("FUND1", "AAPL", "C"): 0}, [line("FUND1", "SAP", "C", -3, 2)])

    (b,) = result.breaks
    assert (b.kind, b.account, b.instrument, b.location, b.kilat_qty, b.file_qty, b.line) == (
        "missing_in_kilat", "FUND1", "SAP", "C", 0, -3, 2)


def test_reconcile_when_zero_on_both_sides_then_no_break():
    result = reconcile({("FUND1", "AAPL", "C"): 0}, [line("FUND1", "AAPL", "C", 0, 2)])

    assert result.breaks == ()
    assert result.matched == 1


def test_reconcile_when_many_breaks_then_sorted_by_account_instrument_location():
    ours = {("FUND2", "AAPL", "C"): 1, ("FUND1", "SAP", "B"): 1, ("FUND1", "AAPL", "Z"): 1}
    theirs = [line("FUND1", "SAP", "A", 1), line("FUND1", "AAPL", "Z", 2)]

    result = reconcile(ours, theirs)

    assert [(b.account, b.instrument, b.location, b.kind) for b in result.breaks] == [
        ("FUND1", "AAPL", "Z", "quantity_mismatch"),
        ("FUND1", "SAP", "A", "missing_in_kilat"),
        ("FUND1", "SAP", "B", "missing_in_file"),
        ("FUND2", "AAPL", "C", "missing_in_file"),
    ]
    assert result.counts == {"quantity_mismatch": 1, "missing_in_file": 2, "missing_in_kilat": 1}


def test_reconcile_when_scoped_to_a_location_then_other_locations_ignored_on_both_sides():
    ours = {("FUND1", "AAPL", "CUST_A"): 100, ("FUND1", "AAPL", "CUST_B"): 50,
            ("FUND1", "SAP", "CUST_A"): 10}
    theirs = [line("FUND1", "AAPL", "CUST_A", 90, 2), line("FUND1", "ESH4", "CUST_C", 4, 3)]

    result = reconcile(ours, theirs, scope={"CUST_A"})

    assert [(b.location, b.instrument, b.kind) for b in result.breaks] == [
        ("CUST_A", "AAPL", "quantity_mismatch"), ("CUST_A", "SAP", "missing_in_file")]
    assert (result.compared, result.file_lines_out_of_scope, result.scope) == (2, 1, ("CUST_A",))


def test_reconcile_when_scope_unset_then_every_location_compared():
    ours = {("FUND1", "AAPL", "CUST_B"): 50}

    result = reconcile(ours, [line("FUND1", "AAPL", "CUST_A", 50)])

    assert [b.kind for b in result.breaks] == ["missing_in_kilat", "missing_in_file"]


def test_reconcile_when_scope_empty_then_refused():
    with pytest.raises(ValueError, match="scope: expected at least one location"):
        reconcile({}, [], scope=set())


def test_reconcile_when_file_lines_repeat_a_key_then_refused():
    with pytest.raises(ValueError, match="given twice"):
        reconcile({}, [line("F", "A", "C", 1, 2), line("F", "A", "C", 1, 3)])


def test_reconcile_when_kilat_quantity_not_int_then_refused():
    with pytest.raises(ValueError, match="expected an integer quantity"):
        reconcile({("F", "A", "C"): 1.0}, [])


# -- OUTPUT --


def mixed_result():
    ours = {("FUND1", "AAPL", "C"): 200, ("FUND2", "SAP", "C"): -5}
    theirs = [PositionLine("FUND1", "AAPL", "C", 150, 2, "2024-03-01"),
              PositionLine("FUND1", "ESH4", "C", 3, 3, "2024-03-01")]
    return reconcile(ours, theirs)


def test_to_csv_when_breaks_then_header_and_one_row_each():
    text = mixed_result().to_csv()

    assert text.splitlines() == [
        ",".join(BREAK_COLUMNS),
        "quantity_mismatch,FUND1,AAPL,C,200,150,-50,2",
        "missing_in_kilat,FUND1,ESH4,C,0,3,3,3",
        "missing_in_file,FUND2,SAP,C,-5,0,5,0",
    ]


def test_to_json_when_breaks_then_figures_counts_and_breaks():
    data = json.loads(mixed_result().to_json())

    assert data["counts"] == {"quantity_mismatch": 1, "missing_in_file": 1, "missing_in_kilat": 1}
    assert (data["as_of"], data["compared"], data["matched"], data["scope"]) == (
        "2024-03-01", 3, 0, None)
    assert data["breaks"][0] == {"kind": "quantity_mismatch", "account": "FUND1",
                                 "instrument": "AAPL", "location": "C", "kilat_qty": 200,
                                 "file_qty": 150, "difference": -50, "line": 2}


def test_to_text_when_breaks_then_summary_and_aligned_table():
    lines = mixed_result().to_text().splitlines()

    assert lines[0].startswith("3 breaks (quantity_mismatch 1, missing_in_file 1, "
                               "missing_in_kilat 1); 3 positions compared, 0 matched")
    assert "file as of 2024-03-01" in lines[0]
    assert lines[1].split() == list(BREAK_COLUMNS)
    assert lines[2].split() == ["quantity_mismatch", "FUND1", "AAPL", "C", "200", "150", "-50", "2"]
    assert len(lines) == 5


# -- KILAT'S SIDE --


def test_positions_from_table_when_server_table_then_keyed_with_location_and_zeros_dropped():
    view = TableView("positions", ["account", "symbol", "location", "position", "working_buy"],
                     [["FUND1", "AAPL", "C", 200, 5], ["FUND1", "SAP", "C", 0, 10]])

    assert positions_from_table(view) == {("FUND1", "AAPL", "C"): 200}


def test_positions_from_table_when_no_location_column_then_custodian_or_empty():
    view = TableView("positions", ["account", "symbol", "currency", "position", "working_buy",
                                   "working_sell", "mark"],
                     [["FUND1", "AAPL", "USD", 200, 0, 0, "190.10"],
                      ["FUND2", "SAP", "EUR", -4, 0, 0, ""]])

    assert positions_from_table(view) == {("FUND1", "AAPL", ""): 200, ("FUND2", "SAP", ""): -4}
    assert positions_from_table(view, custodians={"FUND1": "CUST_A"}) == {
        ("FUND1", "AAPL", "CUST_A"): 200, ("FUND2", "SAP", ""): -4}


def test_positions_from_table_when_quantity_not_int_then_refused():
    view = TableView("positions", ["account", "instrument", "quantity"], [["F", "A", "12"]])

    with pytest.raises(ValueError, match="row 1: expected an integer quantity, got '12'"):
        positions_from_table(view)


def test_positions_from_table_when_column_missing_then_refused():
    view = TableView("risk", ["account", "symbol"], [])

    with pytest.raises(ValueError, match="expected a column 'quantity' or 'position'"):
        positions_from_table(view)


# -- THE CLI'S ENTRY --


def test_run_recon_when_file_matches_then_exit_0(tmp_path):
    path = write(tmp_path, HEADER + "FUND1,AAPL,C,200\n")

    code, text = run_recon(path, {("FUND1", "AAPL", "C"): 200}, ACCOUNTS, INSTRUMENTS, "text")

    assert code == EXIT_MATCHED
    assert text.startswith("0 breaks")


def test_run_recon_when_breaks_then_exit_1_with_report_in_the_format_asked(tmp_path):
    path = write(tmp_path, HEADER + "FUND1,AAPL,C,150\n")
    ours = {("FUND1", "AAPL", "C"): 200}

    code, text = run_recon(path, ours, ACCOUNTS, INSTRUMENTS, "json")
    code_csv, text_csv = run_recon(path, ours, ACCOUNTS, INSTRUMENTS, "csv", scope={"C"})

    assert code == code_csv == EXIT_BREAKS
    assert json.loads(text)["counts"]["quantity_mismatch"] == 1
    assert text_csv.splitlines()[1] == "quantity_mismatch,FUND1,AAPL,C,200,150,-50,2"


def test_run_recon_when_file_refused_then_exit_2_with_the_reason(tmp_path):
    path = write(tmp_path, HEADER + "FUND1,AAPL,C,1.5\n")

    code, text = run_recon(path, {}, ACCOUNTS, INSTRUMENTS, "text")

    assert code == EXIT_REFUSED
    assert text.startswith(f"{path}, line 2, field 'quantity': expected an integer")


def test_run_recon_when_format_unknown_then_value_error(tmp_path):
    with pytest.raises(ValueError, match="out_format"):
        run_recon(write(tmp_path, HEADER), {}, ACCOUNTS, INSTRUMENTS, "xml")


# -- READ ONLY --


def test_parse_and_reconcile_when_run_then_inputs_and_file_unchanged(tmp_path):
    path = write(tmp_path, HEADER + "FUND1,AAPL,C,150\nFUND2,SAP,D,3\n")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    ours = {("FUND1", "AAPL", "C"): 200, ("FUND1", "ESH4", "D"): 1}
    known_accounts, known_instruments, scope = set(ACCOUNTS), set(INSTRUMENTS), {"C", "D"}
    snapshot = copy.deepcopy((ours, known_accounts, known_instruments, scope))

    theirs = parse_positions_csv(path, known_accounts=known_accounts,
                                 known_instruments=known_instruments)
    lines_before = list(theirs)
    reconcile(ours, theirs, scope=scope)
    run_recon(path, ours, known_accounts, known_instruments, "json", scope=scope)

    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    assert (ours, known_accounts, known_instruments, scope) == snapshot
    assert theirs == lines_before
    assert sorted(tmp_path.iterdir()) == [path]


# -- PROPERTIES --

# Values a config could name: printable, no surrounding blanks; commas and quotes included.
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                min_size=1, max_size=8).filter(lambda s: s == s.strip(" \t") and s.isprintable())
positions = st.dictionaries(st.tuples(names, names, names),
                            st.integers(min_value=I64_MIN, max_value=I64_MAX), max_size=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ours=positions, as_of=st.sampled_from(["", "2024-02-29"]), gz=st.booleans())
def test_property_valid_file_round_trips_and_own_positions_have_no_breaks(tmp_path, ours, as_of, gz):
    lines = [PositionLine(*ln.key, ln.quantity, as_of=as_of) for ln in to_lines(ours)]
    text = positions_to_csv(lines).encode()
    path = write(tmp_path, gzip.compress(text) if gz else text, "p.csv.gz" if gz else "p.csv")

    parsed = parse_positions_csv(path, known_accounts=None, known_instruments=None)

    assert keys_and_qty(parsed) == keys_and_qty(lines)
    assert [ln.line for ln in parsed] == list(range(2, len(lines) + 2))
    assert positions_to_csv(parsed).encode() == text
    result = reconcile(ours, parsed)
    assert result.breaks == ()
    assert result.matched == result.compared == len(ours)


@settings(max_examples=200, deadline=None)
@given(ours=positions, theirs=positions, data=st.data())
def test_property_reconcile_finds_exactly_the_differing_non_zero_positions(ours, theirs, data):
    locations = sorted({k[2] for k in ours.keys() | theirs.keys()}) or ["C"]
    scope = data.draw(st.none() | st.sets(st.sampled_from(locations) | names, min_size=1,
                                          max_size=3))
    snapshot = copy.deepcopy((ours, theirs, scope))

    result = reconcile(ours, to_lines(theirs), scope=scope)

    keys = {k for k in ours.keys() | theirs.keys() if scope is None or k[2] in scope}
    expected = sorted(k for k in keys if ours.get(k, 0) != theirs.get(k, 0))
    assert [(b.account, b.instrument, b.location) for b in result.breaks] == expected
    assert all(b.difference == b.file_qty - b.kilat_qty != 0 for b in result.breaks)
    assert (ours, theirs, scope) == snapshot


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.lists(st.sampled_from(["account", "instrument", "location", "quantity", "as_of",
                                   "FUND1", "AAPL", "C", "1", "-2", "1.5", "", " ", '"', "\ufeff",
                                   "2024-01-01"]), max_size=20)
       .map(lambda parts: ",".join(parts).replace(",,,", "\n").encode()))
def test_property_any_bytes_either_parse_or_are_refused_with_a_file_error(tmp_path, data):
    path = write(tmp_path, data)

    try:
        lines = parse(path)
    except ReconFileError as err:
        assert str(err).startswith(str(path))
        assert err.line is None or 1 <= err.line <= len(re.split(rb"\r\n|\r|\n", data))
    else:
        assert all(ln.account in ACCOUNTS and ln.instrument in INSTRUMENTS for ln in lines)
