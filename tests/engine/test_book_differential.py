"""Seeded differential tests: the numba book against the reference book (the oracle)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.book import NumbaBook
from engine.book_events import C_NCOLS, OP_CANCEL, OP_MODIFY, OP_SUBMIT, format_events
from engine.refbook import ReferenceBook
from engine.workload import generate_workload


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    n = min(len(a), len(b))
    bad = np.flatnonzero((a[:n] != b[:n]).any(axis=1))
    i = int(bad[0]) if len(bad) else n
    return (
        f"event streams differ at row {i} (numba {len(a)} rows, reference {len(b)}):\n"
        f"numba     {format_events(a[i : i + 3])}\nreference {format_events(b[i : i + 3])}"
    )


def test_million_commands_single_instrument_then_numba_batch_equals_reference():
    cmds = generate_workload(1_000_000, seed=20240601)
    numba_book = NumbaBook(1, 1 << 17, max_levels_per_side=4096)
    ref_book = ReferenceBook(1, 1 << 17, max_levels_per_side=4096)

    numba_events = numba_book.process_batch(cmds)
    ref_events = ref_book.process_batch(cmds)

    assert np.array_equal(numba_events, ref_events), _first_difference(numba_events, ref_events)
    assert numba_book.state_hash() == ref_book.state_hash()
    numba_book.validate()
    ref_book.validate()
    assert numba_book.stats()["trades"] > 100_000  # the mix really trades


def test_all_features_multi_instrument_then_books_agree_command_by_command():
    cmds = generate_workload(50_000, seed=7, n_instruments=3, features=True, n_accounts=3)
    args = (3, 400, 24, 20)  # small capacities so BOOK_FULL, levels full and match limit occur
    numba_book, ref_book = NumbaBook(*args), ReferenceBook(*args)
    submit_n, submit_r = numba_book.process_batch, ref_book.process_batch
    for start in range(0, len(cmds), 2_500):
        chunk = cmds[start : start + 2_500]
        for k in range(len(chunk)):
            a, b = submit_n(chunk[k : k + 1]), submit_r(chunk[k : k + 1])
            if not np.array_equal(a, b):
                raise AssertionError(
                    f"command {start + k} {chunk[k].tolist()}: " + _first_difference(a, b)
                )
        numba_book.validate()
        ref_book.validate()
        assert numba_book.state_hash() == ref_book.state_hash(), f"after command {start + 2_499}"


def _per_command(book: NumbaBook, cmds: np.ndarray) -> np.ndarray:
    out = []
    for row in cmds.tolist():
        op = row[0]
        if op == OP_SUBMIT:
            ev = book.submit(*row[1:12], post_only=bool(row[12]), stp=row[13])
        elif op == OP_CANCEL:
            ev = book.cancel(row[1])
        elif op == OP_MODIFY:
            ev = book.modify(row[1], row[7], row[8])
        elif op == 3:
            ev = book.mass_cancel(row[2], row[3], row[4])
        elif op == 4:
            ev = book.end_of_day()
        else:
            ev = book.expire(row[11])
        out.append(np.array(ev))
    return np.concatenate(out)


def test_numba_per_command_path_then_equals_batch_path_with_tiny_event_buffer():
    cmds = generate_workload(20_000, seed=3, n_instruments=2, features=True, n_accounts=2)
    args = (2, 300, 16, 4)  # max_fills 4: the batch path pauses for buffer space very often
    batch_book, single_book = NumbaBook(*args), NumbaBook(*args)
    batch_book.batch_event_rows = 30  # worst case is 24 rows: forces drains mid-cascade
    batch_book._set_events(np.zeros((30, 8), dtype=np.int64))
    batch = batch_book.process_batch(cmds)
    single = _per_command(single_book, cmds)
    assert np.array_equal(batch, single), _first_difference(batch, single)
    assert batch_book.state_hash() == single_book.state_hash()


_commands = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3, 4, 5]),  # op
        st.integers(1, 12),  # oid
        st.integers(0, 1),  # instr
        st.integers(0, 2),  # account
        st.integers(0, 1),  # side
        st.integers(0, 3),  # otype
        st.integers(0, 4),  # tif
        st.integers(95, 105),  # price
        st.integers(1, 8),  # qty
        st.integers(0, 3),  # display
        st.integers(95, 105),  # stop price
        st.integers(0, 20),  # expire ts / now
        st.integers(0, 1),  # post only
        st.integers(0, 3),  # stp
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_commands)
def test_random_small_sequences_then_both_books_identical_and_valid(rows):
    cmds = np.array(rows, dtype=np.int64).reshape(len(rows), C_NCOLS)
    cmds[:, 2] = np.where(cmds[:, 0] == 3, cmds[:, 2] - 1, cmds[:, 2])  # mass cancel: -1 = any
    args = (2, 8, 3, 3)
    numba_book, ref_book = NumbaBook(*args), ReferenceBook(*args)
    for k in range(len(cmds)):
        a = numba_book.process_batch(cmds[k : k + 1])
        b = ref_book.process_batch(cmds[k : k + 1])
        assert np.array_equal(a, b), f"command {k} {cmds[k].tolist()}: " + _first_difference(a, b)
        numba_book.validate()
        ref_book.validate()
        assert numba_book.state_hash() == ref_book.state_hash()
        assert numba_book.next_expiry() == ref_book.next_expiry()
