"""The workload generator, the .npz workload format and the verified replay."""

from __future__ import annotations

import numpy as np
import pytest

from engine.book_events import C_OP, OP_CANCEL, OP_SUBMIT
from engine.workload import (
    WorkloadError,
    generate_workload,
    load_workload,
    run_workload,
    save_workload,
    to_arrays,
    to_commands,
)


def _arrays(**override):
    arrays = {
        "op": np.array([1, 0, 2, 3, 4, 4]),
        "side": np.array([0, 1, 1, 0, 0, 0]),
        "price": np.array([100, 101, 100, 0, 0, 0]),
        "qty": np.array([5, 5, 2, 1, 0, 0]),
        "oid": np.array([1, 2, 3, 4, 2, 99]),
    }
    arrays.update(override)
    return arrays


def test_generate_workload_same_seed_then_same_commands_and_expected_mix():
    a = generate_workload(20_000, seed=5)
    assert np.array_equal(a, generate_workload(20_000, seed=5))
    assert not np.array_equal(a, generate_workload(20_000, seed=6))
    cancels = np.mean(a[:, C_OP] == OP_CANCEL)
    assert 0.30 < cancels < 0.40
    assert np.all(np.isin(a[:, C_OP], (OP_SUBMIT, OP_CANCEL)))


def test_save_then_load_workload_round_trips(tmp_path):
    path = tmp_path / "w.npz"
    save_workload(path, _arrays())
    loaded = load_workload(path)
    for name, values in _arrays().items():
        assert np.array_equal(loaded[name], values) and loaded[name].dtype == np.int64


def test_generated_commands_round_trip_through_workload_arrays():
    cmds = generate_workload(5_000, seed=1)
    assert np.array_equal(to_commands(to_arrays(cmds)), cmds)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"op": None}, "missing array(s) op"),
        ({"qty": np.array([5, 5, 2, 1, 0])}, "equal lengths"),
        ({"price": np.array([100.0, 101, 100, 0, 0, 0])}, "integer dtype"),
        ({"op": np.array([1, 0, 7, 3, 4, 4])}, "got 7 at index 2"),
        (
            {"qty": np.array([5, 0, 2, 1, 0, 0])},
            "qty must be > 0 for a new order, got 0 at index 1",
        ),
        (
            {"price": np.array([100, 101, -3, 0, 0, 0])},
            "price must be > 0 for a limit order, got -3 at index 2",
        ),
        ({"oid": np.array([1, 2, 3, 2, 2, 99])}, "duplicate new-order oid 2 at index 3"),
        (
            {"side": np.array([0, 2, 1, 0, 0, 0])},
            "side must be 0 (buy) or 1 (sell), got 2 at index 1",
        ),
    ],
)
def test_load_workload_with_bad_content_then_workload_error_says_what_and_where(
    tmp_path, override, message
):
    arrays = {k: v for k, v in _arrays(**override).items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(WorkloadError, match=None) as info:
        load_workload(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_load_workload_of_non_npz_file_then_workload_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload(path)


def test_run_workload_then_both_books_agree_and_figures_reported():
    result = run_workload(to_arrays(generate_workload(30_000, seed=11)), repeats=2)
    assert result["trades"] > 0 and result["traded_qty"] >= result["trades"]
    assert result["best_bid"] < result["best_ask"]
    assert result["resting_orders"] > 0 and result["bid_qty"] > 0 and result["ask_qty"] > 0
    assert result["ops_per_s"] > 0 and result["reference_ops_per_s"] > 0
    assert result["commands"] == 30_000


def test_run_workload_cancel_of_unknown_oid_then_fine():
    result = run_workload(_arrays(), repeats=1)
    # oid 3 (IOC sell 100) hits bid 1; market buy 4 hits ask 2; cancels of 2 and 99 reject
    assert result["trades"] == 2 and result["resting_orders"] == 1
