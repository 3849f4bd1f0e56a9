"""Block-order allocation: hand-computed splits, rotation of ties, the invariants under random
fills (hypothesis), amend / cancel, snapshots, and the numba kernels against the exact rule."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import allocation_kernels as kernels
from engine.allocation import BlockAllocator

PX = 10_050  # price in ticks


def _fill(alloc: BlockAllocator, qty: int, px: int = PX) -> list[tuple[str, int, int]]:
    out = alloc.on_fill(qty, qty * px)
    alloc.validate()
    return out


def _split(alloc: BlockAllocator) -> dict[str, int]:
    return {account: qty for account, qty, _ in alloc.allocations()}


# -- EACH METHOD'S WEIGHTS, HAND-COMPUTED ------------------------------------------------------


def test_three_accounts_one_third_each_on_100_lots_then_leftover_lot_goes_by_rotation():
    alloc = BlockAllocator(["A", "B", "C"], [1, 1, 1], block_id="B-1")

    first = _fill(alloc, 100)
    second = _fill(alloc, 1)

    # floors 33/33/33; the lot left ties on due (102) and remainder; B-1's rotation starts at C
    assert first == [("A", 33, 33 * PX), ("B", 33, 33 * PX), ("C", 34, 34 * PX)]
    # 101 lots: A and B tie again; the rotation has moved on to A
    assert second[0] == ("A", 1, PX)
    assert _split(alloc) == {"A": 34, "B": 33, "C": 34}


def test_seven_accounts_in_basis_points_with_lot_100_then_remainder_goes_to_the_most_urgent():
    bps = [2500, 2000, 1500, 1500, 1000, 1000, 500]
    accounts = [f"ACC-{k}" for k in range(7)]
    alloc = BlockAllocator(accounts, bps, lot=100, block_id="B-7")

    _fill(alloc, 10_000)  # 100 lots: exact
    assert list(_split(alloc).values()) == [2500, 2000, 1500, 1500, 1000, 1000, 500]
    _fill(alloc, 300)  # 103 lots: shares 25.75 20.6 15.45 15.45 10.3 10.3 5.15

    # floors take 100 lots; 3 left; next lot due at 104, 105, 107, 107, 110, 110, 120
    split = _split(alloc)
    assert split["ACC-0"] == 2600 and split["ACC-1"] == 2100
    assert sorted([split["ACC-2"], split["ACC-3"]]) == [1500, 1600]
    assert [split[a] for a in accounts[4:]] == [1000, 1000, 500]
    assert all(qty % 100 == 0 for qty in split.values())


def test_explicit_quantities_are_caps_and_the_block_cannot_be_overfilled():
    alloc = BlockAllocator(["A", "B", "C"], [500, 300, 200], lot=100, block_id="B-2", capped=True)

    _fill(alloc, 700)  # shares 3.5 / 2.1 / 1.4 lots: floors 3/2/1, A's 4th lot due first (8)
    assert _split(alloc) == {"A": 400, "B": 200, "C": 100}
    _fill(alloc, 300)
    assert _split(alloc) == {"A": 500, "B": 300, "C": 200}
    with pytest.raises(ValueError, match="above its explicit quantities' total 1000"):
        alloc.on_fill(100, 100 * PX)
    assert alloc.filled_qty == 1000


def test_target_weights_times_nav_use_the_exact_path_and_keep_every_invariant():
    nav_minor = [7_512_345_678_901, 12_000_000_000_000, 3_141_592_653_589]
    target_bps = [5000, 3000, 2000]
    weights = [w * nav for w, nav in zip(target_bps, nav_minor, strict=True)]
    alloc = BlockAllocator(["P1", "P2", "P3"], weights, block_id="B-NAV")

    for qty in (1, 999, 3, 10_000, 1):
        _fill(alloc, qty)

    filled = alloc.filled_qty
    for (_, qty, _), w in zip(alloc.allocations(), weights, strict=True):
        assert abs(Fraction(qty) - Fraction(filled * w, sum(weights))) < 1


def test_quantized_nav_weights_keep_their_ratios_and_the_same_split_on_the_kernel_path():
    from engine.allocation import WEIGHT_BITS, quantize_weights

    rng = random.Random(11)
    weights = [rng.randint(1, 10_000) * rng.randint(10**12, 10**13) for _ in range(500)] + [0, 5]
    small = quantize_weights(weights)
    top = max(weights)
    assert max(small) == 1 << WEIGHT_BITS and small[-2] == 0 and small[-1] == 1  # tiny stays > 0
    for w, q in zip(weights, small, strict=True):
        assert abs(Fraction(q, 1 << WEIGHT_BITS) - Fraction(w, top)) <= Fraction(1, 1 << WEIGHT_BITS)
    assert quantize_weights([3, 0, 7]) == [3, 0, 7] and quantize_weights([-1, 10**20]) == [-1, 10**20]
    exact = BlockAllocator([f"A{k}" for k in range(len(weights))], weights, block_id="B-Q")
    fast = BlockAllocator([f"A{k}" for k in range(len(weights))], small, block_id="B-Q")
    for qty in (1, 999, 3, 10_000, 1, 250_000):
        _fill(exact, qty)
        _fill(fast, qty)
    # lots differ from the exact split only where two accounts' shares tie within 2**-30
    moved = sum(abs(a[1] - b[1]) for a, b in zip(exact.allocations(), fast.allocations(), strict=True))
    assert moved <= 2
    fast.validate()


def test_pro_rata_by_nav_with_a_zero_nav_account_gives_it_nothing():
    alloc = BlockAllocator(["A", "B", "Z"], [300_00, 100_00, 0], block_id="B-3")

    _fill(alloc, 5)

    assert _split(alloc) == {"A": 4, "B": 1, "Z": 0}  # shares 3.75 / 1.25 / 0


def test_stuck_case_of_monotone_hamilton_stays_within_quota():
    # Hamilton kept monotone holds 4/3/3/1/1 at 12 lots and cannot reach 13 (floors 4/4/4/0/0)
    alloc = BlockAllocator(["A", "B", "C", "D", "E"], [8, 8, 8, 1, 1], block_id="X")
    done = 0
    for cumulative in (1, 3, 4, 5, 6, 10, 11, 12, 13):
        _fill(alloc, cumulative - done)
        done = cumulative
    split = _split(alloc)
    assert split["A"] == split["B"] == split["C"] == 4 and split["D"] + split["E"] == 1


def test_average_price_of_every_account_is_the_block_average_within_one_unit():
    alloc = BlockAllocator(["A", "B", "C", "D"], [3, 5, 7, 11], block_id="B-4")

    for qty, px in ((13, 10_000), (7, 10_003), (29, 9_998), (1, 10_011)):
        _fill(alloc, qty, px)

    block_avg = Fraction(alloc.filled_notional, alloc.filled_qty)
    for _, qty, notional in alloc.allocations():
        assert abs(Fraction(notional) - block_avg * qty) < 1


# -- TIES ROTATE --------------------------------------------------------------------------------


def test_ties_rotate_across_fills_so_single_lot_fills_go_round_every_account():
    alloc = BlockAllocator([f"A{k}" for k in range(5)], [1] * 5, block_id="B-5")

    winners = [next(a for a, q, _ in _fill(alloc, 1) if q) for _ in range(5)]

    assert sorted(winners) == [f"A{k}" for k in range(5)]


def test_ties_rotate_across_blocks_and_do_not_depend_on_the_order_of_the_account_list():
    accounts = ["A", "B", "C", "D"]
    wins = dict.fromkeys(accounts, 0)
    for k in range(400):
        alloc = BlockAllocator(accounts, [1] * 4, block_id=f"BLK-{k}")
        reverse = BlockAllocator(accounts[::-1], [1] * 4, block_id=f"BLK-{k}")
        winner = next(a for a, q, _ in alloc.on_fill(1, PX) if q)
        assert reverse.on_fill(1, PX) == [(winner, 1, PX)]
        wins[winner] += 1
    assert all(60 <= n <= 140 for n in wins.values()), wins


# -- INVARIANTS UNDER RANDOM FILLS --------------------------------------------------------------


@st.composite
def _blocks(draw):
    n = draw(st.integers(1, 12))
    big = draw(st.booleans())
    hi = 10**15 if big else 60
    weights = draw(st.lists(st.integers(0, hi), min_size=n, max_size=n))
    if sum(weights) == 0:
        weights[0] = 1
    lot = draw(st.sampled_from([1, 1, 100]))
    capped = draw(st.booleans())
    if capped:
        weights = [w % 50 * lot for w in weights]
        if sum(weights) == 0:
            weights[0] = lot
    fills = draw(st.lists(st.tuples(st.integers(1, 40), st.integers(-5_000, 50_000)),
                          min_size=1, max_size=40))
    return n, weights, lot, capped, fills


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_blocks(), st.text(max_size=6))
def test_after_every_fill_sums_are_exact_caps_hold_and_nobody_loses_a_lot(block, block_id):
    n, weights, lot, capped, fills = block
    accounts = [f"ACC-{k}" for k in range(n)]
    alloc = BlockAllocator(accounts, weights, lot, block_id=block_id, capped=capped)
    total = sum(weights)
    filled = notional = 0
    prev = dict.fromkeys(accounts, 0)
    for lots, px in fills:
        qty = lots * lot
        if capped and filled + qty > total:
            qty = (total - filled) // lot * lot
            if qty == 0:
                break
        increments = alloc.on_fill(qty, qty * px)
        filled, notional = filled + qty, notional + qty * px

        assert all(q >= 0 and q % lot == 0 for _, q, _ in increments)
        split = alloc.allocations()
        assert sum(q for _, q, _ in split) == filled
        assert sum(x for _, _, x in split) == notional
        for (account, q, _), w in zip(split, weights, strict=True):
            assert q >= prev[account]
            assert abs(Fraction(q, lot) - Fraction(filled // lot * w, total)) < 1
            assert not capped or q <= w
            prev[account] = q
        alloc.validate()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=4), st.integers(-2, 250), st.integers(-2, 3))
def test_bad_input_is_refused_with_what_was_expected(weights, qty, lot):
    valid = lot > 0 and all(w >= 0 for w in weights) and sum(weights) > 0
    accounts = [f"A{k}" for k in range(len(weights))]
    if not valid:
        with pytest.raises(ValueError, match="must"):
            BlockAllocator(accounts, weights, lot)
        return
    alloc = BlockAllocator(accounts, weights, lot)
    before = alloc.state_hash()
    if qty <= 0 or qty % lot:
        with pytest.raises(ValueError, match=f"positive multiple of lot size {lot}"):
            alloc.on_fill(qty, qty)
        assert alloc.state_hash() == before
    else:
        alloc.on_fill(qty, qty)
        alloc.validate()


def test_duplicate_accounts_and_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="distinct, got 'A' twice"):
        BlockAllocator(["A", "B", "A"], [1, 1, 1])
    with pytest.raises(ValueError, match="same length, got 2 accounts and 3 weights"):
        BlockAllocator(["A", "B"], [1, 1, 1])
    with pytest.raises(ValueError, match="multiple of lot size 100, got 150"):
        BlockAllocator(["A", "B"], [150, 100], lot=100, capped=True)


# -- AMEND AND CANCEL ---------------------------------------------------------------------------


def _apply(book: dict[str, list[int]], deltas) -> None:
    for account, qty, notional in deltas:
        row = book.setdefault(account, [0, 0])
        row[0] += qty
        row[1] += notional


def test_amend_re_splits_everything_filled_and_deltas_keep_the_sums():
    alloc = BlockAllocator(["A", "B", "C"], [1, 1, 1], block_id="B-6")
    book: dict[str, list[int]] = {}
    _apply(book, _fill(alloc, 10, 100))
    _apply(book, _fill(alloc, 11, 101))

    deltas = alloc.amend([1, 3, 0, 4], ["A", "B", "C", "D"])
    alloc.validate()
    _apply(book, deltas)

    assert any(q < 0 for _, q, _ in deltas)
    assert {a: row for a, row in book.items() if any(row)} == {
        a: [q, x] for a, q, x in alloc.allocations() if q or x}
    # 21 lots: shares 2.625 / 7.875 / 0 / 10.5, floors take 19; next lots due at 24 / 22 / - / 22
    assert _split(alloc) == {"A": 2, "B": 8, "C": 0, "D": 11}
    _apply(book, _fill(alloc, 8, 99))
    assert sum(r[0] for r in book.values()) == 29 == alloc.filled_qty
    assert sum(r[1] for r in book.values()) == alloc.filled_notional


def test_amend_dropping_an_account_gives_back_all_it_had():
    alloc = BlockAllocator(["A", "B"], [1, 1], block_id="B-8")
    _fill(alloc, 10)

    deltas = alloc.amend([1], ["A"])

    assert ("B", -5, -5 * PX) in deltas and ("A", 5, 5 * PX) in deltas
    alloc.validate()


def test_cancel_returns_everything_then_fills_stay_in_the_block_until_amend():
    alloc = BlockAllocator(["A", "B", "C"], [2, 1, 1], block_id="B-9")
    _fill(alloc, 7)

    deltas = alloc.cancel()
    assert sum(q for _, q, _ in deltas) == -7 and sum(x for _, _, x in deltas) == -7 * PX
    assert _fill(alloc, 5) == []
    alloc.validate()

    deltas = alloc.amend([2, 1, 1])
    assert sum(q for _, q, _ in deltas) == 12 and sum(x for _, _, x in deltas) == 12 * PX
    assert _split(alloc) == {"A": 6, "B": 3, "C": 3}
    alloc.validate()


def test_amend_to_caps_below_what_is_filled_is_refused_and_changes_nothing():
    alloc = BlockAllocator(["A", "B"], [500, 500], block_id="B-10", capped=True)
    _fill(alloc, 800)
    before = alloc.state_hash()

    with pytest.raises(ValueError, match="total 700 but 800 is already filled"):
        alloc.amend([400, 300])

    assert alloc.state_hash() == before


# -- SNAPSHOTS ----------------------------------------------------------------------------------


def test_dump_then_load_keeps_state_hash_and_continues_identically():
    alloc = BlockAllocator([f"A{k}" for k in range(9)], [k + 1 for k in range(9)], lot=10,
                           block_id="B-11")
    for qty in (30, 70, 10):
        _fill(alloc, qty)

    copy = BlockAllocator.load(alloc.dump())

    assert copy.state_hash() == alloc.state_hash()
    assert copy.on_fill(50, 50 * PX) == alloc.on_fill(50, 50 * PX)
    assert copy.state_hash() == alloc.state_hash()


# -- THE KERNELS AGAINST THE EXACT RULE ---------------------------------------------------------


def _run(weights, fills, amend_at, monkeypatch=None):
    alloc = BlockAllocator([f"A{k}" for k in range(len(weights))], weights, block_id="K")
    out = []
    for step, (qty, px) in enumerate(fills):
        out.append(alloc.on_fill(qty, qty * px))
        if step == amend_at:
            out.append(alloc.amend(weights[::-1]))
    alloc.validate()
    return out, alloc.state_hash()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=40).filter(lambda w: sum(w) > 0),
       st.lists(st.tuples(st.integers(1, 500), st.integers(-100, 20_000)), min_size=1,
                max_size=20),
       st.integers(0, 20))
def test_numba_kernels_give_the_same_allocations_as_the_exact_python_rule(weights, fills, at):
    fast = _run(weights, fills, at)
    limit = kernels.KERNEL_LIMIT
    kernels.KERNEL_LIMIT = 0  # every call takes the Python-int path
    try:
        exact = _run(weights, fills, at)
    finally:
        kernels.KERNEL_LIMIT = limit
    assert fast == exact
