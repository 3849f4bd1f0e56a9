"""Seeded book workloads: generation, the .npz file format, and a verified replay.

Two shapes of workload exist:

- a **command array** (n, 14) int64 with the ``engine.book_events.C_*`` columns, which
  ``NumbaBook.process_batch`` and ``ReferenceBook.process_batch`` run directly;
- a **workload file** (.npz) of five equal-length integer arrays for one instrument, the format
  ``kilat bench book --workload FILE.npz`` reads:

  ======= ==================================================================================
  array   meaning
  ======= ==================================================================================
  op      0 or 1 = GTC limit, 2 = IOC limit, 3 = market, 4 = cancel
  side    0 buy, 1 sell
  price   int ticks (> 0 for a limit; ignored, conventionally 0, for a market or a cancel)
  qty     int lots (> 0 for a new order; ignored, conventionally 0, for a cancel)
  oid     a new order's unique id, or the id a cancel targets (>= 0)
  ======= ==================================================================================

  A cancel of an unknown or finished oid is valid: the book answers CANCEL_REJECT. Other arrays
  in the file are ignored.
"""

from __future__ import annotations

import os
import time
from statistics import median

import numpy as np

from engine.book import NumbaBook
from engine.book_events import (
    C_ACCOUNT,
    C_DISPLAY,
    C_EXPIRE_TS,
    C_INSTR,
    C_NCOLS,
    C_OID,
    C_OP,
    C_OTYPE,
    C_POST_ONLY,
    C_PRICE,
    C_QTY,
    C_SIDE,
    C_STOP_PRICE,
    C_STP,
    C_TIF,
    EV_QTY,
    EV_TYPE,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_EXPIRE,
    OP_MASS_CANCEL,
    OP_MODIFY,
    OP_SUBMIT,
    TRADE,
)
from engine.constants import BUY, DAY, FOK, GTC, GTD, IOC, LIMIT, MARKET, SELL, STOP, STOP_LIMIT
from engine.refbook import ReferenceBook

WORKLOAD_ARRAYS = ("op", "side", "price", "qty", "oid")
W_GTC_LIMIT_0 = 0
W_GTC_LIMIT = 1
W_IOC_LIMIT = 2
W_MARKET = 3
W_CANCEL = 4


class WorkloadError(ValueError):
    """A workload file or array set is not what ``load_workload`` expects."""


class BookMismatchError(AssertionError):
    """The numba book and the reference book disagreed on a replay."""


# -- GENERATION ----------------------------------------------------------------------------------


def generate_workload(
    n: int,
    seed: int,
    n_instruments: int = 1,
    *,
    features: bool = False,
    n_accounts: int = 1,
    start_price: int = 10_000,
    first_oid: int = 1,
) -> np.ndarray:
    """A seeded (n, 14) command array. O(n).

    The default mix is exchange-core's: ~50% passive GTC limits near the touch, ~10% aggressive
    GTC limits, ~5% IOC limits or market orders, ~35% cancels of orders submitted earlier, around a
    random-walk mid per instrument. ``features=True`` mixes in everything the book supports:
    icebergs, DAY/GTD/FOK, post-only, STP modes across ``n_accounts`` accounts, stops and
    stop-limits, modifies, GTD expiry sweeps, end of day and mass cancels.
    """
    rng = np.random.default_rng(seed)
    cmds = np.zeros((n, C_NCOLS), dtype=np.int64)
    u = rng.random(n)
    u2 = rng.random(n)
    walk = rng.integers(-1, 2, size=n)
    offsets = np.minimum(rng.geometric(0.25, size=n), 40)
    qtys = rng.integers(1, 101, size=n)
    sides = rng.integers(0, 2, size=n)
    instrs = rng.integers(0, n_instruments, size=n)
    picks = rng.random(n)
    mids = [start_price] * n_instruments
    live: list[int] = []  # oids of submitted limits, possibly already filled
    info: dict[int, tuple[int, int, int]] = {}  # oid -> (instr, side, price)
    oid = first_oid
    for k in range(n):
        row = cmds[k]
        i = int(instrs[k])
        if u2[k] < 0.2:
            mids[i] = max(mids[i] + int(walk[k]), 100)
        mid = mids[i]
        side = int(sides[k])
        qty = int(qtys[k])
        off = int(offsets[k])
        r = u[k]
        sign = 1 if side == BUY else -1
        if features:
            _feature_command(row, k, r, u2[k], picks[k], rng, i, side, qty, off, mid, live, info)
            if row[C_OP] == OP_SUBMIT:
                row[C_OID] = oid
                row[C_ACCOUNT] = int(picks[k] * 997) % n_accounts
                if row[C_OTYPE] in (LIMIT, STOP_LIMIT) and row[C_TIF] not in (IOC, FOK):
                    live.append(oid)
                    info[oid] = (i, side, int(row[C_PRICE]))
                oid += 1
            continue
        if r < 0.35 and live:
            j = int(picks[k] * len(live))
            victim = live[j]
            live[j] = live[-1]
            live.pop()
            row[C_OP] = OP_CANCEL
            row[C_OID] = victim
            continue
        row[C_OP] = OP_SUBMIT
        row[C_OID] = oid
        row[C_INSTR] = i
        row[C_SIDE] = side
        row[C_QTY] = qty
        row[C_OTYPE] = LIMIT
        row[C_TIF] = GTC
        if r < 0.85:  # passive, near the touch
            row[C_PRICE] = mid - sign * off
            live.append(oid)
        elif r < 0.95:  # aggressive limit
            row[C_PRICE] = mid + sign * (off % 4)
            live.append(oid)
        elif r < 0.975:  # IOC
            row[C_TIF] = IOC
            row[C_PRICE] = mid + sign * (off % 4)
        else:  # market
            row[C_OTYPE] = MARKET
            row[C_TIF] = IOC
            row[C_PRICE] = 0
        oid += 1
    return cmds


def _feature_command(row, k, r, r2, pick, rng, instr, side, qty, off, mid, live, info) -> None:
    """Fill one command of the all-features mix (the oid and account are set by the caller)."""
    now = k * 1_000
    sign = 1 if side == BUY else -1
    if k % 5_000 == 4_999:
        row[C_OP] = OP_END_OF_DAY
        return
    if k % 2_000 == 1_999:
        row[C_OP] = OP_MASS_CANCEL
        row[C_INSTR] = instr if r2 < 0.5 else -1
        row[C_ACCOUNT] = int(r2 * 8) - 4 if r2 < 0.9 else -1  # -4..3: often "any"
        row[C_ACCOUNT] = max(row[C_ACCOUNT], -1)
        row[C_SIDE] = side if r2 < 0.7 else -1
        return
    if r < 0.30 and live:
        j = int(pick * len(live))
        victim = live[j]
        if r < 0.20:
            live[j] = live[-1]
            live.pop()
            row[C_OP] = OP_CANCEL
            row[C_OID] = victim
            return
        v_instr, v_side, v_price = info[victim]
        row[C_OP] = OP_MODIFY
        row[C_OID] = victim
        move = 0 if r2 < 0.4 else int(rng.integers(-3, 4))
        row[C_PRICE] = max(v_price + move, 1)
        row[C_QTY] = qty
        info[victim] = (v_instr, v_side, int(row[C_PRICE]))
        return
    if r < 0.32:
        row[C_OP] = OP_EXPIRE
        row[C_EXPIRE_TS] = now
        return
    row[C_OP] = OP_SUBMIT
    row[C_INSTR] = instr
    row[C_SIDE] = side
    row[C_QTY] = qty
    row[C_OTYPE] = LIMIT
    row[C_STP] = int(r2 * 4)
    tif_roll = pick
    if tif_roll < 0.55:
        row[C_TIF] = GTC
    elif tif_roll < 0.8:
        row[C_TIF] = DAY
    else:
        row[C_TIF] = GTD
        row[C_EXPIRE_TS] = now + int(rng.integers(1, 60)) * 1_000
    if r < 0.70:  # passive
        row[C_PRICE] = mid - sign * off
        if r2 < 0.15:
            row[C_DISPLAY] = 1 + qty // 4
        row[C_POST_ONLY] = 1 if 0.5 < r2 < 0.6 else 0
    elif r < 0.82:  # aggressive limit, sometimes IOC/FOK, sometimes post-only (rejected)
        row[C_PRICE] = mid + sign * (off % 5)
        row[C_QTY] = qty * 2
        if tif_roll < 0.2:
            row[C_TIF] = IOC
        elif tif_roll < 0.4:
            row[C_TIF] = FOK
        row[C_POST_ONLY] = 1 if r2 > 0.95 else 0
    elif r < 0.88:  # market
        row[C_OTYPE] = MARKET
        row[C_PRICE] = 0
        row[C_TIF] = FOK if tif_roll < 0.2 else IOC
    else:  # stop or stop-limit, on either side of the mid
        row[C_OTYPE] = STOP if r2 < 0.4 else STOP_LIMIT
        row[C_STOP_PRICE] = mid + sign * (1 + off % 6)
        if row[C_OTYPE] == STOP:
            row[C_PRICE] = 0
            row[C_TIF] = IOC if tif_roll < 0.5 else row[C_TIF]
        else:
            row[C_PRICE] = row[C_STOP_PRICE] + sign * int(rng.integers(0, 4))
        row[C_DISPLAY] = 0
        row[C_POST_ONLY] = 0


# -- THE WORKLOAD FILE ---------------------------------------------------------------------------


def validate_workload(arrays: dict) -> dict[str, np.ndarray]:
    """Check a workload array set; returns int64 copies or raises WorkloadError. O(n log n)."""
    missing = [name for name in WORKLOAD_ARRAYS if name not in arrays]
    if missing:
        raise WorkloadError(
            f"workload is missing array(s) {', '.join(missing)}; "
            f"expected {', '.join(WORKLOAD_ARRAYS)}"
        )
    out = {}
    for name in WORKLOAD_ARRAYS:
        a = np.asarray(arrays[name])
        if a.ndim != 1:
            raise WorkloadError(f"workload array '{name}' must be 1-D, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise WorkloadError(
                f"workload array '{name}' must have an integer dtype, got {a.dtype}"
            )
        out[name] = a.astype(np.int64)
    lengths = {name: len(a) for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        raise WorkloadError(f"workload arrays must have equal lengths, got {lengths}")
    op, side, price, qty, oid = (out[name] for name in WORKLOAD_ARRAYS)
    new = op != W_CANCEL
    checks = [
        ((op < 0) | (op > 4), "op must be 0..4 (0/1 GTC limit, 2 IOC, 3 market, 4 cancel)", op),
        (new & (side != 0) & (side != 1), "side must be 0 (buy) or 1 (sell)", side),
        (new & (qty <= 0), "qty must be > 0 for a new order", qty),
        ((op <= W_IOC_LIMIT) & (price <= 0), "price must be > 0 for a limit order", price),
        (oid < 0, "oid must be >= 0", oid),
    ]
    for bad, what, values in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise WorkloadError(f"{what}, got {int(values[i])} at index {i}")
    new_idx = np.flatnonzero(new)
    vals = oid[new_idx]
    order = np.argsort(vals, kind="stable")
    repeated = np.flatnonzero(vals[order][1:] == vals[order][:-1]) + 1
    if len(repeated):
        i = int(new_idx[order[repeated]].min())
        raise WorkloadError(f"duplicate new-order oid {int(oid[i])} at index {i}")
    return out


def load_workload(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check a workload .npz; int64 arrays by name, or WorkloadError. O(n log n)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise WorkloadError(f"{path}: expected an .npz archive of arrays, got one array")
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        if isinstance(exc, WorkloadError):
            raise
        raise WorkloadError(f"{path}: cannot read as an .npz workload ({exc})") from exc
    try:
        return validate_workload(arrays)
    except WorkloadError as exc:
        raise WorkloadError(f"{path}: {exc}") from None


def save_workload(path: str | os.PathLike, arrays: dict) -> None:
    """Check and write a workload .npz (uncompressed). O(n log n)."""
    np.savez(path, **validate_workload(arrays))


def to_commands(arrays: dict, instr: int = 0, account: int = 0) -> np.ndarray:
    """Workload arrays -> (n, 14) command array for ``process_batch``. O(n)."""
    op, side, price, qty, oid = (np.asarray(arrays[name]) for name in WORKLOAD_ARRAYS)
    n = len(op)
    cmds = np.zeros((n, C_NCOLS), dtype=np.int64)
    new = op != W_CANCEL
    cmds[:, C_OP] = np.where(new, OP_SUBMIT, OP_CANCEL)
    cmds[:, C_OID] = oid
    cmds[:, C_INSTR] = instr
    cmds[:, C_ACCOUNT] = account
    cmds[:, C_SIDE] = np.where(new, side, 0)
    cmds[:, C_OTYPE] = np.where(op == W_MARKET, MARKET, LIMIT)
    cmds[:, C_TIF] = np.where(new, np.where(op <= W_GTC_LIMIT, GTC, IOC), 0)
    cmds[:, C_PRICE] = np.where(new & (op != W_MARKET), price, 0)
    cmds[:, C_QTY] = np.where(new, qty, 0)
    return cmds


def to_arrays(cmds: np.ndarray) -> dict[str, np.ndarray]:
    """A single-instrument command array of plain limits/IOC/markets/cancels -> workload arrays.

    Raises WorkloadError for a command the file format cannot express. O(n).
    """
    cmds = np.asarray(cmds, dtype=np.int64)
    is_cancel = cmds[:, C_OP] == OP_CANCEL
    is_submit = cmds[:, C_OP] == OP_SUBMIT
    is_market = is_submit & (cmds[:, C_OTYPE] == MARKET)
    is_limit = is_submit & (cmds[:, C_OTYPE] == LIMIT)
    expressible = is_cancel | is_market | (is_limit & np.isin(cmds[:, C_TIF], (GTC, IOC)))
    if not expressible.all():
        i = int(np.argmax(~expressible))
        raise WorkloadError(f"command at index {i} has no workload-file encoding: {cmds[i]}")
    op = np.where(
        is_cancel,
        W_CANCEL,
        np.where(is_market, W_MARKET, np.where(cmds[:, C_TIF] == IOC, W_IOC_LIMIT, W_GTC_LIMIT)),
    )
    return {
        "op": op.astype(np.int64),
        "side": np.where(is_cancel, 0, cmds[:, C_SIDE]).astype(np.int64),
        "price": np.where(is_cancel | is_market, 0, cmds[:, C_PRICE]).astype(np.int64),
        "qty": np.where(is_cancel, 0, cmds[:, C_QTY]).astype(np.int64),
        "oid": cmds[:, C_OID].copy(),
    }


# -- REPLAY --------------------------------------------------------------------------------------


def _summary(book, events: np.ndarray) -> dict[str, int]:
    trades = events[:, EV_TYPE] == TRADE
    bids = book.depth(0, BUY, 1 << 30)
    asks = book.depth(0, SELL, 1 << 30)
    return {
        "trades": int(trades.sum()),
        "traded_qty": int(events[trades, EV_QTY].sum()),
        "best_bid": book.best_bid(0),
        "best_ask": book.best_ask(0),
        "bid_qty": sum(q for _, q, _ in bids),
        "ask_qty": sum(q for _, q, _ in asks),
        "resting_orders": book.resting_orders(),
    }


def warm_up() -> None:
    """Compile (or load from cache) the batch path on a tiny workload. O(1)."""
    book = NumbaBook(1, 64, 16, 16)
    book.process_batch(generate_workload(200, 0, features=True, n_accounts=2))


def run_workload(
    arrays: dict,
    repeats: int = 3,
    max_levels_per_side: int = 4096,
    max_fills_per_order: int = 10_000,
) -> dict:
    """Replay a workload through the numba batch path and the reference book, and check both.

    The reference book runs once (timed, per-command code); its peak of live orders sizes the
    numba book (2x, so no capacity reject can differ). The numba batch path runs ``repeats``
    times on a fresh book each (JIT compiled beforehand, construction not timed); the median
    counts. Raises BookMismatchError unless the event streams, trades, traded quantity and final
    state hashes agree. Returns the results as a dict of ints and floats.
    """
    arrays = validate_workload(arrays)
    cmds = to_commands(arrays)
    n = len(cmds)
    n_new = int((arrays["op"] != W_CANCEL).sum())

    ref = ReferenceBook(1, max(n_new, 1), max_levels_per_side, max_fills_per_order)
    t0 = time.perf_counter()
    ref_events = ref.process_batch(cmds)
    ref_seconds = time.perf_counter() - t0

    warm_up()
    max_orders = max(1024, 2 * ref.peak_live)
    seconds = []
    book = None
    events = None
    for _ in range(max(1, repeats)):
        book = NumbaBook(1, max_orders, max_levels_per_side, max_fills_per_order)
        t0 = time.perf_counter()
        events = book.process_batch(cmds)
        seconds.append(time.perf_counter() - t0)

    result = _summary(book, events)
    expected = _summary(ref, ref_events)
    if result != expected:
        raise BookMismatchError(f"numba {result} != reference {expected}")
    if not np.array_equal(events, ref_events):
        raise BookMismatchError("numba and reference event streams differ")
    if book.state_hash() != ref.state_hash():
        raise BookMismatchError("numba and reference final state hashes differ")
    med = median(seconds)
    result.update(
        commands=n,
        events=len(events),
        max_orders=max_orders,
        seconds=med,
        reference_seconds=ref_seconds,
        ops_per_s=n / med if med > 0 else float("inf"),
        reference_ops_per_s=n / ref_seconds if ref_seconds > 0 else float("inf"),
        state_hash=book.state_hash(),
    )
    result["ratio"] = result["ops_per_s"] / result["reference_ops_per_s"]
    return result


# -- real order flow: CME market-by-order (Databento MBO CSV) -------------------------------------


def workload_from_mbo_csv(path: str | os.PathLike, tick_size: str = "0.25",
                          limit: int | None = None) -> dict[str, np.ndarray]:
    """Turn a market-by-order CSV (Databento MBO columns: ts_recv, ts_event, instrument_id,
    symbol, action, side, price, size, order_id, …) into a workload. O(n).

    Adds (``A``) become GTC limits; cancels (``C``) cancel the order; modifies (``M``) cancel it
    and add it again at the new price and size (the format has no modify, so the order loses
    its place); trades (``T``, the side is the aggressor's) become IOC limits at the trade price,
    so the book re-creates the fills; fill records (``F``, the passive side of a trade), clears
    (``R``) and trades without a side are skipped. Exchange order ids map to fresh workload ids,
    since a modified order is a new order here. Refuses a row it cannot read, naming its line.
    """
    import csv
    import gzip
    from decimal import Decimal, InvalidOperation

    tick = Decimal(tick_size)
    opener = gzip.open if str(path).endswith(".gz") else open
    ops, sides, prices, qtys, oids = [], [], [], [], []
    live: dict[str, int] = {}  # exchange order id -> workload oid
    next_oid = 1

    def add(op: int, side: int, price: int, qty: int, oid: int) -> None:
        ops.append(op)
        sides.append(side)
        prices.append(price)
        qtys.append(qty)
        oids.append(oid)

    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"action", "side", "price", "size", "order_id"} - set(reader.fieldnames or ())
        if missing:
            raise WorkloadError(f"{path}: expected MBO columns, missing {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(ops) >= limit:
                break
            action, side_code = row["action"], row["side"]
            if action in ("F", "R") or side_code not in ("B", "A"):
                continue
            side = 0 if side_code == "B" else 1
            try:
                ticks, rest = divmod(Decimal(row["price"]), tick)
                size = int(row["size"])
            except (InvalidOperation, ValueError) as exc:
                raise WorkloadError(f"{path}: line {line}: unreadable price or size ({exc})") from exc
            if rest != 0:
                raise WorkloadError(f"{path}: line {line}: price {row['price']} is not a multiple of {tick}")
            price = int(ticks)
            exchange_id = row["order_id"]
            if action == "T":
                add(2, side, price, size, next_oid)
                next_oid += 1
            elif action == "A":
                live[exchange_id] = next_oid
                add(0, side, price, size, next_oid)
                next_oid += 1
            elif action in ("C", "M"):
                oid = live.pop(exchange_id, None)
                if oid is not None:
                    add(4, side, 0, 0, oid)
                if action == "M" and size > 0:
                    live[exchange_id] = next_oid
                    add(0, side, price, size, next_oid)
                    next_oid += 1
            else:
                raise WorkloadError(f"{path}: line {line}: unknown action {action!r}")
    arrays = {
        "op": np.array(ops, dtype=np.int64),
        "side": np.array(sides, dtype=np.int64),
        "price": np.array(prices, dtype=np.int64),
        "qty": np.array(qtys, dtype=np.int64),
        "oid": np.array(oids, dtype=np.int64),
    }
    return validate_workload(arrays)
