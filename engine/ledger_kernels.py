"""The jitted positions ledger: cells, FIFO lots and fill history in preallocated int64 arrays.

Every array sits in one ``LedgerState`` structref, so a kernel call unboxes one argument.
Functions here never raise and never allocate; they return an int code (``OK`` or an ``R_*``
value, mirrored by ``engine.ledger.LedgerCode``) and validate before they mutate: a refused call
leaves every array as it was.

Units: prices in ticks, quantities in lots, cost / realised / unrealised in tick·lots.

A **cell** is one (account, instrument): position, signed cost of the open position (long > 0,
short < 0), realised P&L, its P&L method, its FIFO lot queue and its booking history. A booking is
a signed quantity ``dq`` and an exact cash value ``v`` > 0 (price × qty for a fill, the notional
for a transfer). Against an opposite position it first reduces (up to the position), then opens
the rest at the remaining value (a fill through zero closes and opens at the fill price).

Rounding (all exact integer arithmetic, ``muldiv(a, b, d) = floor(a·b / d)``):

- the value of the reducing part of a booking of q lots is ``floor(v · r / q)``; the opening part
  gets the rest (for a fill ``v = price × q``, so both parts are exact);
- average cost: reducing r of |P| lots removes ``floor(|C| · r / |P|)`` of the cost magnitude; the
  remainder stays in the basis, so closing the position removes exactly what is left and a round
  trip realises exactly Σ sells − Σ buys;
- FIFO: lots are consumed oldest first; a partly consumed lot gives up ``floor(cost · take / qty)``
  and keeps the rest; the reducing value is spread over the consumed chunks by cumulative floors
  (``floor(v·done/r)`` differences), which telescope to exactly the reducing value.

**History and the end of day.** A cell's history is its bookings of the trading day, oldest
first; replaying its live rows onto its opening state (``C_BASE_REALISED`` and its *carried*
rows) rebuilds it exactly (``bust`` / ``correct``). ``end_of_day`` rewrites the whole history as
carried rows that reproduce each open cell's state as it stands — position, location split, cost,
FIFO lots in order — and moves every cell's realised P&L into ``C_BASE_REALISED``; cells flat at
every location get no rows. Carried rows book no P&L:

- ``K_OPEN_LOT`` adds ``H_QTY`` lots at ``H_LOC`` and ``H_VALUE`` (signed) to the cost; on a FIFO
  cell it also appends the lot ``(H_QTY, H_VALUE)`` as it was, never joined to the one before
  (one row per lot). An average-cost cell gets one row per location holding a position, the cost
  on the first.
- ``K_OPEN_LOC`` adds ``H_QTY`` lots at ``H_LOC`` and nothing else: it moves a FIFO cell's lots,
  carried at one location, to the split they had, or gives a flat cell its split (long at one
  location, short at another); the moves of a cell sum to zero.

So the history holds at most (open FIFO lots + open cells × locations) rows after the end of
day, whatever the number of bookings ever made (a cell is open here when it holds a position at
some location).

Exact while every |position| ≤ ``MAX_LOTS`` lots, price ≤ ``MAX_PRICE`` ticks and |cost| ≤
``MAX_COST`` (checked on every fill / transfer / correction; the products in ``muldiv`` then stay
below 2**62).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.experimental import structref

from engine.constants import BUY, SELL

# -- CODES (mirror engine.ledger.LedgerCode) ------------------------------------------------------

OK = 0
R_INVALID_QUANTITY = 7001
R_INVALID_PRICE = 7002
R_INVALID_SIDE = 7003
R_UNKNOWN_ACCOUNT = 7004
R_UNKNOWN_INSTRUMENT = 7005
R_UNKNOWN_LOCATION = 7006
R_SAME_ACCOUNT = 7007
R_INVALID_NOTIONAL = 7008
R_TOO_LARGE = 7009
R_DUPLICATE_ID = 7101
R_UNKNOWN_ID = 7102
R_ALREADY_BUSTED = 7103
R_NOT_A_FILL = 7104
R_CELLS_FULL = 7201
R_LOTS_FULL = 7202
R_HISTORY_FULL = 7203

# -- METHODS, KINDS -------------------------------------------------------------------------------

AVERAGE = 0
FIFO = 1

K_FILL = 0
K_TRANSFER = 1
K_OPEN_LOT = 2  # carried over an end of day: a lot (FIFO) or a location's part (average)
K_OPEN_LOC = 3  # carried over an end of day: a move between locations

# -- LIMITS (keep every muldiv product below 2**62) -----------------------------------------------

MAX_LOTS = 1 << 31
MAX_PRICE = 1 << 31
MAX_COST = 1 << 62

# -- CELL COLUMNS (cells[c, ...]) ------------------------------------------------------------------

C_ACCOUNT = 0
C_INSTRUMENT = 1
C_METHOD = 2
C_POS = 3  # lots, signed
C_COST = 4  # tick·lots, signed like C_POS (0 when flat)
C_REALISED = 5  # tick·lots
C_LOT_HEAD = 6  # oldest FIFO lot, -1 none
C_LOT_TAIL = 7
C_NLOTS = 8
C_HIST_HEAD = 9  # first history row of the cell, -1 none
C_HIST_TAIL = 10
C_OPEN_SLOT = 11  # index in the open list, -1 when flat
C_BASE_REALISED = 12  # realised before the first history row (carried over the end of day)
N_CELL_COLS = 13

# -- LOT COLUMNS (lots[k, ...]) --------------------------------------------------------------------

L_QTY = 0  # signed like the position
L_COST = 1  # signed like L_QTY
L_NEXT = 2  # next lot of the queue, or of the free list; -1 none
N_LOT_COLS = 3

# -- HISTORY COLUMNS (hist[h, ...]) ----------------------------------------------------------------

H_CELL = 0
H_LOC = 1
H_QTY = 2  # signed lots
H_VALUE = 3  # tick·lots, > 0 (carried rows: signed cost, may be 0)
H_PRICE = 4  # ticks (fills; 0 for transfers)
H_KIND = 5
H_ALIVE = 6  # 0 once busted
H_NEXT = 7  # next row of the same cell, -1 none
H_PEER = 8  # a transfer's other row, -1 none
N_HIST_COLS = 9

# -- META (meta[...]) ------------------------------------------------------------------------------

M_CELLS = 0  # cells in use
M_OPEN = 1  # entries in the open list
M_FREE_LOT = 2  # head of the free lot list, -1 none
M_FREE_LOTS = 3  # free lots
M_HIST = 4  # history rows in use
M_LOCATIONS = 5  # locations registered (≤ locpos.shape[1])
N_META = 6

# -- REVALUATION ROWS (rv[..., k], k < number of open cells; column-major so each is contiguous) ---

RV_ACCOUNT = 0
RV_INSTRUMENT = 1
RV_POSITION = 2
RV_UNREALISED = 3  # tick·lots; UNKNOWN when the instrument has no mark
RV_KNOWN = 4  # 1 = valued, 0 = no mark
N_RV_ROWS = 5
UNKNOWN = np.iinfo(np.int64).min

_FIELDS = ["cell_of", "method", "cells", "locpos", "lots", "hist", "openl", "meta", "rv"]


@structref.register
class LedgerStateType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class LedgerState(structref.StructRefProxy):
    """The arrays of one ledger, as one jitted argument. Build with ``make_state``."""


structref.define_proxy(LedgerState, LedgerStateType, _FIELDS)


def make_state(**arrays) -> LedgerState:
    for name in _FIELDS:
        a = arrays[name]
        if a.dtype != np.int64 or not a.flags.c_contiguous:
            raise ValueError(f"ledger state array {name} must be C-contiguous int64, got {a.dtype}")
    return LedgerState(*(arrays[name] for name in _FIELDS))


# -- HELPERS ---------------------------------------------------------------------------------------


@njit(cache=True)
def muldiv(a, b, d):
    """floor(a · b / d) for 0 ≤ a, 0 ≤ b ≤ d, 0 < d ≤ MAX_LOTS, without overflow."""
    return (a // d) * b + ((a % d) * b) // d


@njit(cache=True)
def _mergeable(lots, k, q, v):
    """A new lot of q lots worth v has exactly the price of lot k (so it can join it)."""
    lq = abs(lots[k, L_QTY])
    lc = abs(lots[k, L_COST])
    return lc % lq == 0 and v % q == 0 and lc // lq == v // q


@njit(cache=True)
def _needs_lot(st, c, method, dq, v):
    """Whether booking (dq, v) on cell c (-1: a new cell) takes a lot from the free list that no
    consumed lot of the same booking gives back."""
    if method != FIFO:
        return False
    if c < 0:
        return True
    p = st.cells[c, C_POS]
    if p != 0 and (p > 0) != (dq > 0):
        return False  # reduces only, or crosses zero after freeing every lot
    tail = st.cells[c, C_LOT_TAIL]
    return not (tail >= 0 and _mergeable(st.lots, tail, abs(dq), v))


@njit(cache=True)
def _fits(st, c, dq, v):
    """The cell stays within the exact range after booking (dq, v)."""
    if c < 0:
        return abs(dq) <= MAX_LOTS and v <= MAX_COST
    return (abs(st.cells[c, C_POS]) + abs(dq) <= MAX_LOTS
            and abs(st.cells[c, C_COST]) + v <= MAX_COST)


@njit(cache=True)
def _new_cell(st, a, i):
    c = st.meta[M_CELLS]
    row = st.cells[c]
    row[:] = 0
    row[C_ACCOUNT] = a
    row[C_INSTRUMENT] = i
    row[C_METHOD] = st.method[a]
    row[C_LOT_HEAD] = -1
    row[C_LOT_TAIL] = -1
    row[C_HIST_HEAD] = -1
    row[C_HIST_TAIL] = -1
    row[C_OPEN_SLOT] = -1
    st.locpos[c, :] = 0
    st.cell_of[a, i] = c
    st.meta[M_CELLS] = c + 1
    return c


@njit(cache=True)
def _append_row(st, c, loc, dq, v, price, kind, peer):
    h = st.meta[M_HIST]
    r = st.hist[h]
    r[H_CELL] = c
    r[H_LOC] = loc
    r[H_QTY] = dq
    r[H_VALUE] = v
    r[H_PRICE] = price
    r[H_KIND] = kind
    r[H_ALIVE] = 1
    r[H_NEXT] = -1
    r[H_PEER] = peer
    tail = st.cells[c, C_HIST_TAIL]
    if tail >= 0:
        st.hist[tail, H_NEXT] = h
    else:
        st.cells[c, C_HIST_HEAD] = h
    st.cells[c, C_HIST_TAIL] = h
    st.meta[M_HIST] = h + 1
    return h


@njit(cache=True)
def _free_lot(st, k):
    st.lots[k, L_QTY] = 0
    st.lots[k, L_COST] = 0
    st.lots[k, L_NEXT] = st.meta[M_FREE_LOT]
    st.meta[M_FREE_LOT] = k
    st.meta[M_FREE_LOTS] += 1


@njit(cache=True)
def _push_lot(st, c, dq, dv):
    """Append a lot of dq lots costing dv (both signed alike) to cell c's queue, or join the
    newest lot when the price is the same. Capacity was checked by ``_needs_lot``."""
    lots = st.lots
    tail = st.cells[c, C_LOT_TAIL]
    if tail >= 0 and _mergeable(lots, tail, abs(dq), abs(dv)):
        lots[tail, L_QTY] += dq
        lots[tail, L_COST] += dv
        return
    _link_lot(st, c, dq, dv)


@njit(cache=True)
def _link_lot(st, c, dq, dv):
    """Append a new lot of dq lots costing dv to cell c's queue (never joined)."""
    cells, lots = st.cells, st.lots
    tail = cells[c, C_LOT_TAIL]
    k = st.meta[M_FREE_LOT]
    st.meta[M_FREE_LOT] = lots[k, L_NEXT]
    st.meta[M_FREE_LOTS] -= 1
    lots[k, L_QTY] = dq
    lots[k, L_COST] = dv
    lots[k, L_NEXT] = -1
    if tail >= 0:
        lots[tail, L_NEXT] = k
    else:
        cells[c, C_LOT_HEAD] = k
    cells[c, C_LOT_TAIL] = k
    cells[c, C_NLOTS] += 1


@njit(cache=True)
def _consume(st, c, r, vr, long):
    """Take r lots oldest first from cell c's queue against a reducing value vr; add the P&L to
    realised; return the cost magnitude removed."""
    cells, lots = st.cells, st.lots
    s = 1 if long else -1
    done = 0
    paid = 0
    removed = 0
    gain = 0
    while done < r:
        k = cells[c, C_LOT_HEAD]
        lq = abs(lots[k, L_QTY])
        lc = abs(lots[k, L_COST])
        take = min(lq, r - done)
        if take == lq:
            rem = lc
            nxt = lots[k, L_NEXT]
            cells[c, C_LOT_HEAD] = nxt
            if nxt < 0:
                cells[c, C_LOT_TAIL] = -1
            cells[c, C_NLOTS] -= 1
            _free_lot(st, k)
        else:
            rem = muldiv(lc, take, lq)
            lots[k, L_QTY] -= s * take
            lots[k, L_COST] -= s * rem
        done += take
        cum = vr if done == r else muldiv(vr, done, r)
        chunk = cum - paid
        paid = cum
        gain += (chunk - rem) if long else (rem - chunk)
        removed += rem
    cells[c, C_REALISED] += gain
    return removed


@njit(cache=True)
def _touch_open(st, c):
    cells, openl = st.cells, st.openl
    slot = cells[c, C_OPEN_SLOT]
    if cells[c, C_POS] != 0:
        if slot < 0:
            n = st.meta[M_OPEN]
            openl[n] = c
            cells[c, C_OPEN_SLOT] = n
            st.meta[M_OPEN] = n + 1
    elif slot >= 0:
        n = st.meta[M_OPEN] - 1
        last = openl[n]
        openl[slot] = last
        cells[last, C_OPEN_SLOT] = slot
        openl[n] = 0
        cells[c, C_OPEN_SLOT] = -1
        st.meta[M_OPEN] = n


@njit(cache=True)
def _apply(st, c, loc, dq, v):
    """Book dq lots (signed) worth v tick·lots on cell c at location loc. O(1) for average cost,
    O(lots consumed) for FIFO."""
    cells = st.cells
    st.locpos[c, loc] += dq
    p = cells[c, C_POS]
    q = abs(dq)
    s = 1 if dq > 0 else -1
    if p != 0 and (p > 0) != (dq > 0):
        ap = abs(p)
        r = min(q, ap)
        vr = v if r == q else muldiv(v, r, q)
        long = p > 0
        if cells[c, C_METHOD] == FIFO:
            removed = _consume(st, c, r, vr, long)
        else:
            ac = abs(cells[c, C_COST])
            removed = ac if r == ap else muldiv(ac, r, ap)
            cells[c, C_REALISED] += (vr - removed) if long else (removed - vr)
        cells[c, C_COST] += -removed if long else removed
        cells[c, C_POS] += s * r
        q -= r
        v -= vr
    if q > 0:
        cells[c, C_POS] += s * q
        cells[c, C_COST] += s * v
        if cells[c, C_METHOD] == FIFO:
            _push_lot(st, c, s * q, s * v)
    _touch_open(st, c)


@njit(cache=True)
def _carry(st, c, h):
    """Replay carried row h onto cell c (no P&L; see the module docstring)."""
    q = st.hist[h, H_QTY]
    st.locpos[c, st.hist[h, H_LOC]] += q
    if st.hist[h, H_KIND] != K_OPEN_LOT:
        return
    v = st.hist[h, H_VALUE]
    st.cells[c, C_POS] += q
    st.cells[c, C_COST] += v
    if st.cells[c, C_METHOD] == FIFO:
        _link_lot(st, c, q, v)


@njit(cache=True)
def _recompute(st, c):
    """Rebuild cell c from its opening state and live history rows, oldest first. O(rows of the
    cell)."""
    cells = st.cells
    k = cells[c, C_LOT_HEAD]
    while k >= 0:
        nxt = st.lots[k, L_NEXT]
        _free_lot(st, k)
        k = nxt
    cells[c, C_LOT_HEAD] = -1
    cells[c, C_LOT_TAIL] = -1
    cells[c, C_NLOTS] = 0
    cells[c, C_POS] = 0
    cells[c, C_COST] = 0
    cells[c, C_REALISED] = cells[c, C_BASE_REALISED]
    st.locpos[c, :] = 0
    h = cells[c, C_HIST_HEAD]
    while h >= 0:
        if st.hist[h, H_KIND] >= K_OPEN_LOT:
            _carry(st, c, h)
        elif st.hist[h, H_ALIVE]:
            _apply(st, c, st.hist[h, H_LOC], st.hist[h, H_QTY], st.hist[h, H_VALUE])
        h = st.hist[h, H_NEXT]
    _touch_open(st, c)


@njit(cache=True)
def _live_rows(st, c):
    n = 0
    h = st.cells[c, C_HIST_HEAD]
    while h >= 0:
        n += st.hist[h, H_ALIVE]
        h = st.hist[h, H_NEXT]
    return n


@njit(cache=True)
def _replay_fits(st, c, rows_after):
    """A replay of cell c from ``rows_after`` live rows cannot run out of lots: each row takes at
    most one lot, and the cell's own lots are freed first (a conservative bound)."""
    if st.cells[c, C_METHOD] != FIFO:
        return True
    return rows_after <= st.meta[M_FREE_LOTS] + st.cells[c, C_NLOTS]


# -- COMMANDS --------------------------------------------------------------------------------------


@njit(cache=True)
def fill(st, a, i, loc, side, qty, price):
    """Book one execution. O(1) (FIFO: O(lots consumed))."""
    if qty <= 0:
        return R_INVALID_QUANTITY
    if price <= 0:
        return R_INVALID_PRICE
    if side != BUY and side != SELL:
        return R_INVALID_SIDE
    if a < 0 or a >= st.cell_of.shape[0]:
        return R_UNKNOWN_ACCOUNT
    if i < 0 or i >= st.cell_of.shape[1]:
        return R_UNKNOWN_INSTRUMENT
    if loc < 0 or loc >= st.meta[M_LOCATIONS]:
        return R_UNKNOWN_LOCATION
    if qty > MAX_LOTS or price > MAX_PRICE:
        return R_TOO_LARGE
    if st.meta[M_HIST] >= st.hist.shape[0]:
        return R_HISTORY_FULL
    c = st.cell_of[a, i]
    if c < 0 and st.meta[M_CELLS] >= st.cells.shape[0]:
        return R_CELLS_FULL
    dq = qty if side == BUY else -qty
    v = price * qty
    if not _fits(st, c, dq, v):
        return R_TOO_LARGE
    if st.meta[M_FREE_LOTS] == 0 and _needs_lot(st, c, st.method[a], dq, v):
        return R_LOTS_FULL
    if c < 0:
        c = _new_cell(st, a, i)
    _append_row(st, c, loc, dq, v, price, K_FILL, -1)
    _apply(st, c, loc, dq, v)
    return OK


@njit(cache=True)
def transfer(st, fa, ta, i, loc, qty, notional):
    """Move qty lots (signed: < 0 moves a short) worth ``notional`` tick·lots from account fa to
    account ta. O(1) (FIFO: O(lots consumed))."""
    if qty == 0:
        return R_INVALID_QUANTITY
    if notional <= 0:
        return R_INVALID_NOTIONAL
    n_a = st.cell_of.shape[0]
    if fa < 0 or fa >= n_a or ta < 0 or ta >= n_a:
        return R_UNKNOWN_ACCOUNT
    if fa == ta:
        return R_SAME_ACCOUNT
    if i < 0 or i >= st.cell_of.shape[1]:
        return R_UNKNOWN_INSTRUMENT
    if loc < 0 or loc >= st.meta[M_LOCATIONS]:
        return R_UNKNOWN_LOCATION
    if abs(qty) > MAX_LOTS or notional > MAX_COST:
        return R_TOO_LARGE
    if st.meta[M_HIST] + 2 > st.hist.shape[0]:
        return R_HISTORY_FULL
    cf = st.cell_of[fa, i]
    ct = st.cell_of[ta, i]
    new = (cf < 0) + (ct < 0)
    if st.meta[M_CELLS] + new > st.cells.shape[0]:
        return R_CELLS_FULL
    if not _fits(st, cf, -qty, notional) or not _fits(st, ct, qty, notional):
        return R_TOO_LARGE
    need = _needs_lot(st, cf, st.method[fa], -qty, notional) + _needs_lot(st, ct, st.method[ta], qty, notional)
    if need > st.meta[M_FREE_LOTS]:
        return R_LOTS_FULL
    if cf < 0:
        cf = _new_cell(st, fa, i)
    if ct < 0:
        ct = _new_cell(st, ta, i)
    h = st.meta[M_HIST]
    _append_row(st, cf, loc, -qty, notional, 0, K_TRANSFER, h + 1)
    _append_row(st, ct, loc, qty, notional, 0, K_TRANSFER, h)
    _apply(st, cf, loc, -qty, notional)
    _apply(st, ct, loc, qty, notional)
    return OK


@njit(cache=True)
def bust(st, h):
    """Reverse history row h (and a transfer's other row): the cells become what they would be
    had it never been booked. O(rows of the cells touched)."""
    if h < 0 or h >= st.meta[M_HIST] or st.hist[h, H_KIND] >= K_OPEN_LOT:
        return R_UNKNOWN_ID
    if st.hist[h, H_ALIVE] == 0:
        return R_ALREADY_BUSTED
    c = st.hist[h, H_CELL]
    peer = st.hist[h, H_PEER]
    if peer < 0:
        if not _replay_fits(st, c, _live_rows(st, c) - 1):
            return R_LOTS_FULL
    else:
        c2 = st.hist[peer, H_CELL]
        extra = 0
        for cc in (c, c2):
            if st.cells[cc, C_METHOD] == FIFO:
                extra += _live_rows(st, cc) - 1 - st.cells[cc, C_NLOTS]
        if extra > st.meta[M_FREE_LOTS]:
            return R_LOTS_FULL
    st.hist[h, H_ALIVE] = 0
    _recompute(st, c)
    if peer >= 0:
        st.hist[peer, H_ALIVE] = 0
        _recompute(st, st.hist[peer, H_CELL])
    return OK


@njit(cache=True)
def correct(st, h, qty, price):
    """Replace fill row h's quantity and price (its side, place in the history and location
    stay): the cell becomes what it would be had the fill carried these figures. O(rows of the
    cell)."""
    if h < 0 or h >= st.meta[M_HIST] or st.hist[h, H_KIND] >= K_OPEN_LOT:
        return R_UNKNOWN_ID
    if st.hist[h, H_KIND] != K_FILL:
        return R_NOT_A_FILL
    if st.hist[h, H_ALIVE] == 0:
        return R_ALREADY_BUSTED
    if qty <= 0:
        return R_INVALID_QUANTITY
    if price <= 0:
        return R_INVALID_PRICE
    if qty > MAX_LOTS or price > MAX_PRICE:
        return R_TOO_LARGE
    c = st.hist[h, H_CELL]
    if not _replay_fits(st, c, _live_rows(st, c)):
        return R_LOTS_FULL
    st.hist[h, H_QTY] = qty if st.hist[h, H_QTY] > 0 else -qty
    st.hist[h, H_VALUE] = qty * price
    st.hist[h, H_PRICE] = price
    _recompute(st, c)
    return OK


@njit(cache=True)
def retransfer(st, rows, qtys, values, cells):
    """Re-figure live transfers in one go: pair ``rows[j]`` (its from-side row) now moves
    ``qtys[j]`` lots (signed, as booked by ``transfer``) worth ``values[j]`` tick·lots, in its
    place in the history; then ``cells`` (every cell the pairs touch, each once) are rebuilt.
    A block allocation re-averaged by a later fill is one call. Everything is checked before
    anything changes. O(rows of the cells touched)."""
    n = rows.shape[0]
    for j in range(n):
        h = rows[j]
        if h < 0 or h >= st.meta[M_HIST] or st.hist[h, H_KIND] != K_TRANSFER:
            return R_UNKNOWN_ID
        if st.hist[h, H_ALIVE] == 0:
            return R_ALREADY_BUSTED
        if qtys[j] == 0:
            return R_INVALID_QUANTITY
        if values[j] <= 0:
            return R_INVALID_NOTIONAL
        if abs(qtys[j]) > MAX_LOTS or values[j] > MAX_COST:
            return R_TOO_LARGE
    extra = 0
    for c in cells:
        if st.cells[c, C_METHOD] == FIFO:
            extra += _live_rows(st, c) - st.cells[c, C_NLOTS]
    if extra > st.meta[M_FREE_LOTS]:
        return R_LOTS_FULL
    for j in range(n):
        h = rows[j]
        peer = st.hist[h, H_PEER]
        st.hist[h, H_QTY] = -qtys[j]
        st.hist[h, H_VALUE] = values[j]
        st.hist[peer, H_QTY] = qtys[j]
        st.hist[peer, H_VALUE] = values[j]
    for c in cells:
        _recompute(st, c)
    return OK


@njit(cache=True)
def _home(st, c):
    """The location a FIFO cell's carried lots are booked at: one holding the whole position if
    any (then no moves are needed), else the first holding a part."""
    p = st.cells[c, C_POS]
    first = -1
    for j in range(st.meta[M_LOCATIONS]):
        x = st.locpos[c, j]
        if x == p:
            return j
        if x != 0 and first < 0:
            first = j
    return first


@njit(cache=True)
def _carried_rows(st, c):
    """How many carried rows reproduce cell c (0 when flat at every location)."""
    p = st.cells[c, C_POS]
    n = 0
    h = _home(st, c) if st.cells[c, C_METHOD] == FIFO and p != 0 else -1
    for j in range(st.meta[M_LOCATIONS]):
        x = st.locpos[c, j]
        if j == h:
            n += x != p
        else:
            n += x != 0
    return n + (st.cells[c, C_NLOTS] if h >= 0 else 0)


@njit(cache=True)
def _write_carried(st, c):
    """Append cell c's carried rows (its history was emptied)."""
    cells, locpos = st.cells, st.locpos
    n_loc = st.meta[M_LOCATIONS]
    p = cells[c, C_POS]
    if p == 0:  # flat, though it may be long at one location and short at another
        for j in range(n_loc):
            if locpos[c, j] != 0:
                _append_row(st, c, j, locpos[c, j], 0, 0, K_OPEN_LOC, -1)
        return
    if cells[c, C_METHOD] != FIFO:
        v = cells[c, C_COST]
        for j in range(n_loc):
            if locpos[c, j] != 0:
                _append_row(st, c, j, locpos[c, j], v, 0, K_OPEN_LOT, -1)
                v = 0
        return
    home = _home(st, c)
    k = cells[c, C_LOT_HEAD]
    while k >= 0:
        _append_row(st, c, home, st.lots[k, L_QTY], st.lots[k, L_COST], 0, K_OPEN_LOT, -1)
        k = st.lots[k, L_NEXT]
    for j in range(n_loc):
        move = locpos[c, j] - (p if j == home else 0)
        if move != 0:
            _append_row(st, c, j, move, 0, 0, K_OPEN_LOC, -1)


@njit(cache=True)
def end_of_day(st):
    """Forget the day's bookings: rewrite the history as carried rows that reproduce every open
    cell (a position at some location) exactly, and move each cell's realised P&L into its
    opening state. Cell states do not change. R_HISTORY_FULL (nothing changed) when the carried
    rows exceed the capacity. O(cells × locations + open lots + history rows)."""
    n_cells = st.meta[M_CELLS]
    need = 0
    for c in range(n_cells):
        need += _carried_rows(st, c)
    if need > st.hist.shape[0]:
        return R_HISTORY_FULL
    old = st.meta[M_HIST]
    st.meta[M_HIST] = 0
    cells = st.cells
    for c in range(n_cells):
        cells[c, C_HIST_HEAD] = -1
        cells[c, C_HIST_TAIL] = -1
        cells[c, C_BASE_REALISED] = cells[c, C_REALISED]
        _write_carried(st, c)
    st.hist[st.meta[M_HIST]:old, :] = 0
    return OK


# -- VALUATION -------------------------------------------------------------------------------------


@njit(cache=True)
def revalue(st, marks):
    """Unrealised P&L of every open cell at ``marks`` (ticks per instrument, 0 = none) into
    ``st.rv[:, :n]``; returns n. O(open cells)."""
    n = st.meta[M_OPEN]
    cells, openl, rv = st.cells, st.openl, st.rv
    for k in range(n):
        c = openl[k]
        i = cells[c, C_INSTRUMENT]
        p = cells[c, C_POS]
        m = marks[i]
        rv[RV_ACCOUNT, k] = cells[c, C_ACCOUNT]
        rv[RV_INSTRUMENT, k] = i
        rv[RV_POSITION, k] = p
        if m > 0:
            rv[RV_UNREALISED, k] = p * m - cells[c, C_COST]
            rv[RV_KNOWN, k] = 1
        else:
            rv[RV_UNREALISED, k] = UNKNOWN
            rv[RV_KNOWN, k] = 0
    return n
