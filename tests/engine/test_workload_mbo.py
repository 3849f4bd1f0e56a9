"""Real order flow: CME ESH4 market-by-order data replayed through both books."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from engine.book import NumbaBook
from engine.refbook import ReferenceBook
from engine.workload import WorkloadError, run_workload, to_commands, workload_from_mbo_csv

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "esh4_mbo_20231225_first14000.csv.gz"


def test_cme_mbo_flow_replays_identically_through_both_books_to_a_sane_book():
    arrays = workload_from_mbo_csv(SAMPLE)
    ops = np.bincount(arrays["op"], minlength=5)
    assert ops[0] > 10_000 and ops[2] > 100 and ops[4] > 1_000  # adds, trades, cancels
    result = run_workload(arrays, repeats=1)  # raises if the books disagree
    assert result["trades"] > 0
    # E-mini S&P around 4,800 USD in 0.25 ticks, one-tick spread or wider, never crossed
    assert 18_000 < result["best_bid"] < result["best_ask"] < 21_000
    books = [NumbaBook(1, 50_000), ReferenceBook(1, 50_000)]
    for book in books:
        book.process_batch(to_commands(arrays))
        book.validate()
    assert books[0].state_hash() == books[1].state_hash() == result["state_hash"]


def test_replayed_fills_come_close_to_the_exchanges_own_fills():
    import csv

    with gzip.open(SAMPLE, "rt", newline="") as f:
        exchange_filled = sum(int(r["size"]) for r in csv.DictReader(f) if r["action"] == "F")
    book = ReferenceBook(1, 50_000)
    book.process_batch(to_commands(workload_from_mbo_csv(SAMPLE)))
    # Not exact: a modify loses its place here and fills of orders the exchange had filled but
    # our book had not yet can differ; the same day's flow must still trade about as much.
    assert 0.8 * exchange_filled <= book.stats()["traded_qty"] <= 1.2 * exchange_filled


def test_unreadable_mbo_rows_are_refused_naming_the_line(tmp_path):
    header = "ts_recv,ts_event,instrument_id,symbol,action,side,price,size,order_id\n"
    bad_price = tmp_path / "bad.csv"
    bad_price.write_text(header + "1,1,1,ES,A,B,4799.10,1,7\n")
    with pytest.raises(WorkloadError, match="line 2: price 4799.10 is not a multiple of 0.25"):
        workload_from_mbo_csv(bad_price)
    bad_size = tmp_path / "bad2.csv.gz"
    with gzip.open(bad_size, "wt") as f:
        f.write(header + "1,1,1,ES,A,B,4799.00,1,7\n1,1,1,ES,A,A,4800.00,lots,8\n")
    with pytest.raises(WorkloadError, match="line 3: unreadable price or size"):
        workload_from_mbo_csv(bad_size)
    no_cols = tmp_path / "nocols.csv"
    no_cols.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(WorkloadError, match="missing"):
        workload_from_mbo_csv(no_cols)
