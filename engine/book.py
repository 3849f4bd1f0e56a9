"""The numba limit order book: price-time priority matching for many instruments.

State lives in a handful of preallocated int64 arrays; all logic is in ``@njit(cache=True)``
plain functions that never raise, never allocate per command and report through int status codes
and event rows. ``NumbaBook`` is the thin Python wrapper: configuration, the per-command (latency)
path, the batch (throughput) path, queries and the invariant checker.

The semantics are specified in ``docs/book.md`` and shared, event for event, with
``engine.refbook.ReferenceBook`` (the oracle).

State arrays (views of ONE flat int64 buffer, ``state``, so that a per-command call unboxes two
arrays — ``state`` and ``events`` — instead of six; the entry points rebuild the 2-D views from
offsets kept in ``meta``, see ``_views``):

- ``meta[M_*]``          counters, free-list heads, capacities, the offsets of the arrays below.
- ``orders[slot, O_*]``  the order pool; free slots are chained through ``O_NEXT``.
- ``levels[lvl, L_*]``   the price-level pool (price, total leaves, count, FIFO head and tail);
  free levels are chained through ``L_HEAD``.
- ``inst[instr, I_*]``   per instrument: last trade price, level counts, the pending-stop list,
  then two sorted ladders of level slots (bids ascending, asks descending: the best is at the
  END, so the touch is O(1) and inserts/removals near it are short moves).
- ``index``              rows ``[0, hcap)``: the oid -> slot hash map (open addressing, linear
  probing, backward-shift deletion; ``[key, slot]``, key -1 = empty); rows ``[hcap, ...)``: the GTD
  expiry binary heap of ``[expire_ts, oid]`` with lazy deletion.
- ``events[row, EV_*]``  the event buffer (separate: it grows).

The wrapper calls the compiled entry point of ``_cmd_submit`` / ``_cmd_cancel`` /
``_cmd_modify`` directly once the dispatcher has compiled (or loaded) it, skipping numba's
per-call argument typing; it falls back to the dispatcher if that entry point cannot be found.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
from numba import njit

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
    CANCEL,
    CANCEL_REJECT,
    EV_NCOLS,
    EXPIRE,
    MODIFY_REJECT,
    OP_CANCEL,
    OP_END_OF_DAY,
    OP_EXPIRE,
    OP_MASS_CANCEL,
    OP_MODIFY,
    OP_SUBMIT,
    PENDING_STOP,
    REJECT,
    REPLACE,
    REST,
    TRADE,
    TRIGGER,
    OrderView,
    worst_case_rows,
)
from engine.constants import (
    BUY,
    DAY,
    FOK,
    GTD,
    IOC,
    MARKET,
    R_BOOK_FULL,
    R_CANCEL_REQUESTED,
    R_DUPLICATE_BOOK_ORDER,
    R_END_OF_DAY,
    R_FOK_NOT_FILLABLE,
    R_GTD_EXPIRED,
    R_IOC_REMAINDER,
    R_MASS_CANCEL,
    R_MATCH_LIMIT_REACHED,
    R_NO_LIQUIDITY,
    R_POST_ONLY_WOULD_CROSS,
    R_PRICE_LEVELS_FULL,
    R_SELF_TRADE_PREVENTED,
    R_UNKNOWN_BOOK_INSTRUMENT,
    R_UNKNOWN_BOOK_ORDER,
    SELL,
    STOP,
    STOP_LIMIT,
    STP_CANCEL_BOTH,
    STP_CANCEL_INCOMING,
    STP_CANCEL_RESTING,
    STP_NONE,
)

# -- ORDER COLUMNS (hot ones first: they share the row's first cache line) -----------------------

O_OID = 0
O_LEAVES = 1
O_VISIBLE = 2
O_ACCOUNT = 3
O_NEXT = 4  # FIFO / pending-stop list / free list
O_PREV = 5
O_LEVEL = 6
O_PRICE = 7
O_DISPLAY = 8
O_STATE = 9
O_SIDE = 10
O_INSTR = 11
O_OTYPE = 12
O_TIF = 13
O_STOP_PRICE = 14
O_EXPIRE_TS = 15
O_POST_ONLY = 16
O_STP = 17
O_MARK = 18  # scratch stamp used while compacting the expiry heap
O_NCOLS = 19

ST_FREE = 0
ST_RESTING = 1
ST_PENDING = 2  # an un-triggered stop
ST_TAKING = 3  # a triggered stop while it matches

# -- LEVEL COLUMNS -------------------------------------------------------------------------------

L_PRICE = 0
L_QTY = 1  # total leaves, hidden iceberg quantity included
L_COUNT = 2
L_HEAD = 3  # also the free-list link of a free level
L_TAIL = 4
L_NCOLS = 5

# -- INSTRUMENT COLUMNS --------------------------------------------------------------------------

I_LAST = 0  # last trade price, 0 = none yet
I_NLEV = 1  # + side: number of levels on that side (I_NLEV + BUY, I_NLEV + SELL)
I_STOP_HEAD = 3
I_STOP_TAIL = 4
I_NSTOP = 5
I_LADDER = 8  # + side * max_levels + k: level slot, sorted, best at the end

# -- META ----------------------------------------------------------------------------------------

M_FREE_ORDER = 0
M_FREE_LEVEL = 1
M_NLIVE = 2  # orders holding a slot (resting + pending stops)
M_NEV = 3  # event rows written
M_CASC = 4  # instrument whose stop cascade is in progress, -1 = none
M_NEED = 5  # event rows a paused mass operation needs
M_MAX_ORDERS = 6
M_MAX_LEVELS = 7
M_MAX_FILLS = 8
M_NINSTR = 9
M_HMASK = 10
M_HSHIFT = 11
M_HEAP_BASE = 12
M_HEAP_N = 13
M_HEAP_CAP = 14
M_WORST = 15
M_NRESTING = 16
M_NTRADES = 17
M_TRADED_QTY = 18
M_STAMP = 19
M_OFF_ORDERS = 20  # offsets of the arrays inside the one flat state buffer (see _views)
M_OFF_LEVELS = 21
M_OFF_INST = 22
M_OFF_INDEX = 23
M_NCOLS = 24

# -- MODES of _take ------------------------------------------------------------------------------

MODE_NEW = 0  # a fresh order (holds no slot yet)
MODE_NEW_TRIGGER = 1  # a fresh stop whose condition already holds
MODE_TRIGGERED = 2  # a pending stop that just triggered (holds its slot)

_EMPTY = -1

# Kernels never allocate, so they run without numba's reference-counting runtime: with it, every
# call between jitted functions increfs/decrefs each array argument (~100 ns per command).

def _make_kernel(**extra):
    """njit(cache=True, _nrt=False, **extra); plain njit(cache=True, **extra) if this numba
    rejects the private ``_nrt`` option (the kernels never allocate, so both behave the same)."""
    try:
        deco = njit(cache=True, _nrt=False, **extra)
        deco(_probe_nrt)()  # options are checked at compile time: compile a trivial function
        return deco
    except Exception:  # noqa: BLE001 - any rejection means: run with the NRT
        return njit(cache=True, **extra)


def _probe_nrt():
    return 0


# error_model="numpy": integer division by zero does not raise (there is none to guard anyway).
_kernel = _make_kernel(error_model="numpy")
# Everything on the submit / cancel / fill path is inlined into its caller at the numba IR level
# (the batch loop and the per-command entry points become one function each): a call between
# jitted functions passes every array as ~9 machine words and blocks LLVM's optimisation across
# it. Cold paths (mass operations, expiry, the stop cascade, FOK dry run, modify) stay calls.
_inline = _make_kernel(error_model="numpy", inline="always")
_SCAN = 8  # ladder positions scanned linearly from the touch before binary search

# ================================================================================================
# jitted kernels
# ================================================================================================


@_inline
def _emit(events, meta, etype, oid, other, price, qty, leaves, other_leaves, reason):
    n = meta[M_NEV]
    events[n, 0] = etype
    events[n, 1] = oid
    events[n, 2] = other
    events[n, 3] = price
    events[n, 4] = qty
    events[n, 5] = leaves
    events[n, 6] = other_leaves
    events[n, 7] = reason
    meta[M_NEV] = n + 1


# -- hash map: oid -> slot -----------------------------------------------------------------------


@_inline
def _h_find(index, meta, oid):
    mask = meta[M_HMASK]
    i = (oid ^ (oid >> meta[M_HSHIFT])) & mask
    while True:
        k = index[i, 0]
        if k == oid:
            return index[i, 1]
        if k == _EMPTY:
            return -1
        i = (i + 1) & mask


@_inline
def _h_insert(index, meta, oid, slot):
    mask = meta[M_HMASK]
    i = (oid ^ (oid >> meta[M_HSHIFT])) & mask
    while index[i, 0] != _EMPTY:
        i = (i + 1) & mask
    index[i, 0] = oid
    index[i, 1] = slot


@_inline
def _h_delete(index, meta, oid):
    mask = meta[M_HMASK]
    shift = meta[M_HSHIFT]
    i = (oid ^ (oid >> shift)) & mask
    while True:
        k = index[i, 0]
        if k == oid:
            break
        if k == _EMPTY:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        k = index[j, 0]
        if k == _EMPTY:
            break
        home = (k ^ (k >> shift)) & mask
        if i <= j:
            stays = i < home <= j
        else:
            stays = home > i or home <= j
        if not stays:
            index[i, 0] = k
            index[i, 1] = index[j, 1]
            i = j
    index[i, 0] = _EMPTY
    index[i, 1] = 0


# -- order slots ---------------------------------------------------------------------------------


@_inline
def _alloc_order(orders, index, meta, oid):
    s = meta[M_FREE_ORDER]
    meta[M_FREE_ORDER] = orders[s, O_NEXT]
    meta[M_NLIVE] += 1
    _h_insert(index, meta, oid, s)
    return s


@_inline
def _free_order(orders, index, meta, slot):
    _h_delete(index, meta, orders[slot, O_OID])
    orders[slot, O_STATE] = ST_FREE
    orders[slot, O_NEXT] = meta[M_FREE_ORDER]
    meta[M_FREE_ORDER] = slot
    meta[M_NLIVE] -= 1


@_inline
def _fill_order(
    orders,
    slot,
    oid,
    instr,
    account,
    side,
    otype,
    tif,
    price,
    leaves,
    display,
    stop_price,
    expire_ts,
    post_only,
    stp,
):
    orders[slot, O_OID] = oid
    orders[slot, O_INSTR] = instr
    orders[slot, O_ACCOUNT] = account
    orders[slot, O_SIDE] = side
    orders[slot, O_OTYPE] = otype
    orders[slot, O_TIF] = tif
    orders[slot, O_PRICE] = price
    orders[slot, O_LEAVES] = leaves
    orders[slot, O_VISIBLE] = display if 0 < display < leaves else leaves
    orders[slot, O_DISPLAY] = display
    orders[slot, O_STOP_PRICE] = stop_price
    orders[slot, O_EXPIRE_TS] = expire_ts
    orders[slot, O_POST_ONLY] = post_only
    orders[slot, O_STP] = stp


# -- ladders and levels --------------------------------------------------------------------------


@_inline
def _ladder_search(levels, inst, instr, side, price, max_levels):
    """(position, found) of ``price`` in the side's ladder; linear from the touch, then binary."""
    base = I_LADDER + side * max_levels
    n = inst[instr, I_NLEV + side]
    kp = price if side == BUY else -price
    j = n - 1
    stop = n - _SCAN
    while j >= 0 and j >= stop:
        p = levels[inst[instr, base + j], L_PRICE]
        k = p if side == BUY else -p
        if k == kp:
            return j, True
        if k < kp:
            return j + 1, False
        j -= 1
    if j < 0:
        return 0, False
    lo = 0
    hi = j + 1
    while lo < hi:
        mid = (lo + hi) >> 1
        p = levels[inst[instr, base + mid], L_PRICE]
        k = p if side == BUY else -p
        if k < kp:
            lo = mid + 1
        else:
            hi = mid
    if lo <= j:
        p = levels[inst[instr, base + lo], L_PRICE]
        k = p if side == BUY else -p
        if k == kp:
            return lo, True
    return lo, False


@_inline
def _level_room(levels, inst, meta, instr, side, price):
    """True if an order could rest at ``price`` (its level exists or the side has room)."""
    max_levels = meta[M_MAX_LEVELS]
    if inst[instr, I_NLEV + side] < max_levels:
        return True
    _, found = _ladder_search(levels, inst, instr, side, price, max_levels)
    return found


@_inline
def _drop_level(levels, inst, meta, instr, side, lvl):
    """Remove an empty level from its ladder and free it. O(1) at the touch, else O(log L + d)."""
    max_levels = meta[M_MAX_LEVELS]
    base = I_LADDER + side * max_levels
    n = inst[instr, I_NLEV + side]
    if inst[instr, base + n - 1] == lvl:
        pos = n - 1
    else:
        pos, _ = _ladder_search(levels, inst, instr, side, levels[lvl, L_PRICE], max_levels)
        for j in range(pos, n - 1):
            inst[instr, base + j] = inst[instr, base + j + 1]
    inst[instr, I_NLEV + side] = n - 1
    levels[lvl, L_HEAD] = meta[M_FREE_LEVEL]
    meta[M_FREE_LEVEL] = lvl


@_inline
def _rest(orders, levels, inst, meta, slot, instr, side, price):
    """Append the order in ``slot`` to the tail of its price level, creating the level."""
    max_levels = meta[M_MAX_LEVELS]
    pos, found = _ladder_search(levels, inst, instr, side, price, max_levels)
    base = I_LADDER + side * max_levels
    if found:
        lvl = inst[instr, base + pos]
    else:
        lvl = meta[M_FREE_LEVEL]
        meta[M_FREE_LEVEL] = levels[lvl, L_HEAD]
        levels[lvl, L_PRICE] = price
        levels[lvl, L_QTY] = 0
        levels[lvl, L_COUNT] = 0
        levels[lvl, L_HEAD] = -1
        levels[lvl, L_TAIL] = -1
        n = inst[instr, I_NLEV + side]
        j = n
        while j > pos:
            inst[instr, base + j] = inst[instr, base + j - 1]
            j -= 1
        inst[instr, base + pos] = lvl
        inst[instr, I_NLEV + side] = n + 1
    tail = levels[lvl, L_TAIL]
    orders[slot, O_PREV] = tail
    orders[slot, O_NEXT] = -1
    orders[slot, O_LEVEL] = lvl
    orders[slot, O_STATE] = ST_RESTING
    if tail >= 0:
        orders[tail, O_NEXT] = slot
    else:
        levels[lvl, L_HEAD] = slot
    levels[lvl, L_TAIL] = slot
    levels[lvl, L_COUNT] += 1
    levels[lvl, L_QTY] += orders[slot, O_LEAVES]
    meta[M_NRESTING] += 1


@_inline
def _detach(orders, levels, inst, meta, slot):
    """Unlink a resting order from its level (dropping the level if it empties). O(1) if not."""
    lvl = orders[slot, O_LEVEL]
    p = orders[slot, O_PREV]
    nx = orders[slot, O_NEXT]
    if p >= 0:
        orders[p, O_NEXT] = nx
    else:
        levels[lvl, L_HEAD] = nx
    if nx >= 0:
        orders[nx, O_PREV] = p
    else:
        levels[lvl, L_TAIL] = p
    levels[lvl, L_QTY] -= orders[slot, O_LEAVES]
    c = levels[lvl, L_COUNT] - 1
    levels[lvl, L_COUNT] = c
    meta[M_NRESTING] -= 1
    if c == 0:
        _drop_level(levels, inst, meta, orders[slot, O_INSTR], orders[slot, O_SIDE], lvl)


@_inline
def _crosses(levels, inst, meta, instr, side, price, is_market):
    opp = 1 - side
    n = inst[instr, I_NLEV + opp]
    if n == 0:
        return False
    if is_market:
        return True
    best = levels[inst[instr, I_LADDER + opp * meta[M_MAX_LEVELS] + n - 1], L_PRICE]
    if side == BUY:
        return best <= price
    return best >= price


# -- pending stops -------------------------------------------------------------------------------


@_inline
def _stop_append(orders, inst, instr, slot):
    tail = inst[instr, I_STOP_TAIL]
    orders[slot, O_PREV] = tail
    orders[slot, O_NEXT] = -1
    if tail >= 0:
        orders[tail, O_NEXT] = slot
    else:
        inst[instr, I_STOP_HEAD] = slot
    inst[instr, I_STOP_TAIL] = slot
    inst[instr, I_NSTOP] += 1


@_inline
def _stop_unlink(orders, inst, instr, slot):
    p = orders[slot, O_PREV]
    nx = orders[slot, O_NEXT]
    if p >= 0:
        orders[p, O_NEXT] = nx
    else:
        inst[instr, I_STOP_HEAD] = nx
    if nx >= 0:
        orders[nx, O_PREV] = p
    else:
        inst[instr, I_STOP_TAIL] = p
    inst[instr, I_NSTOP] -= 1


@_kernel
def _first_qualifying_stop(orders, inst, instr):
    last = inst[instr, I_LAST]
    s = inst[instr, I_STOP_HEAD]
    while s >= 0:
        sp = orders[s, O_STOP_PRICE]
        if orders[s, O_SIDE] == BUY:
            if last >= sp:
                return s
        elif last <= sp:
            return s
        s = orders[s, O_NEXT]
    return -1


# -- expiry heap ---------------------------------------------------------------------------------


@_kernel
def _heap_valid(orders, index, meta, ts, oid):
    """The slot of the live GTD order this heap entry stands for, or -1 if it is stale."""
    slot = _h_find(index, meta, oid)
    if slot >= 0 and orders[slot, O_TIF] == GTD and orders[slot, O_EXPIRE_TS] == ts:
        return slot
    return -1


@_kernel
def _heap_sift_down(index, base, n, i):
    ts = index[base + i, 0]
    oid = index[base + i, 1]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        r = c + 1
        if r < n:
            rt = index[base + r, 0]
            ct = index[base + c, 0]
            if rt < ct or (rt == ct and index[base + r, 1] < index[base + c, 1]):
                c = r
        ct = index[base + c, 0]
        co = index[base + c, 1]
        if ct < ts or (ct == ts and co < oid):
            index[base + i, 0] = ct
            index[base + i, 1] = co
            i = c
        else:
            break
    index[base + i, 0] = ts
    index[base + i, 1] = oid


@_kernel
def _heap_compact(orders, index, meta):
    """Drop stale (and duplicate) entries, then re-heapify. O(h)."""
    base = meta[M_HEAP_BASE]
    n = meta[M_HEAP_N]
    stamp = meta[M_STAMP] + 1
    meta[M_STAMP] = stamp
    m = 0
    for i in range(n):
        ts = index[base + i, 0]
        oid = index[base + i, 1]
        slot = _heap_valid(orders, index, meta, ts, oid)
        if slot >= 0 and orders[slot, O_MARK] != stamp:
            orders[slot, O_MARK] = stamp
            index[base + m, 0] = ts
            index[base + m, 1] = oid
            m += 1
    meta[M_HEAP_N] = m
    i = m // 2 - 1
    while i >= 0:
        _heap_sift_down(index, base, m, i)
        i -= 1


@_kernel
def _heap_push(orders, index, meta, ts, oid):
    if meta[M_HEAP_N] >= meta[M_HEAP_CAP]:
        _heap_compact(orders, index, meta)
    base = meta[M_HEAP_BASE]
    i = meta[M_HEAP_N]
    meta[M_HEAP_N] = i + 1
    while i > 0:
        p = (i - 1) >> 1
        pt = index[base + p, 0]
        if pt > ts or (pt == ts and index[base + p, 1] > oid):
            index[base + i, 0] = pt
            index[base + i, 1] = index[base + p, 1]
            i = p
        else:
            break
    index[base + i, 0] = ts
    index[base + i, 1] = oid


@_kernel
def _heap_pop(index, meta):
    base = meta[M_HEAP_BASE]
    n = meta[M_HEAP_N] - 1
    meta[M_HEAP_N] = n
    if n > 0:
        index[base, 0] = index[base + n, 0]
        index[base, 1] = index[base + n, 1]
        _heap_sift_down(index, base, n, 0)


# -- matching ------------------------------------------------------------------------------------


@_inline
def _pop_head(orders, levels, inst, index, meta, instr, side, lvl, m):
    """Remove maker ``m`` (the head of the best level ``lvl``); True if the level vanished."""
    nx = orders[m, O_NEXT]
    levels[lvl, L_HEAD] = nx
    if nx >= 0:
        orders[nx, O_PREV] = -1
    else:
        levels[lvl, L_TAIL] = -1
    levels[lvl, L_QTY] -= orders[m, O_LEAVES]
    c = levels[lvl, L_COUNT] - 1
    levels[lvl, L_COUNT] = c
    meta[M_NRESTING] -= 1
    _free_order(orders, index, meta, m)
    if c == 0:
        inst[instr, I_NLEV + side] -= 1
        levels[lvl, L_HEAD] = meta[M_FREE_LEVEL]
        meta[M_FREE_LEVEL] = lvl
        return True
    return False


@_inline
def _match(
    orders,
    levels,
    inst,
    index,
    meta,
    events,
    instr,
    side,
    oid,
    account,
    price,
    is_market,
    leaves,
    stp,
):
    """Walk the opposite side while it crosses. Returns (leaves, stop reason or 0)."""
    opp = 1 - side
    base = I_LADDER + opp * meta[M_MAX_LEVELS]
    ncol = I_NLEV + opp
    max_fills = meta[M_MAX_FILLS]
    touches = 0
    while leaves > 0:
        n = inst[instr, ncol]
        if n == 0:
            break
        lvl = inst[instr, base + n - 1]
        lp = levels[lvl, L_PRICE]
        if not is_market:
            if side == BUY:
                if lp > price:
                    break
            elif lp < price:
                break
        while leaves > 0:
            if touches >= max_fills:
                return leaves, R_MATCH_LIMIT_REACHED
            touches += 1
            m = levels[lvl, L_HEAD]
            if stp != STP_NONE and orders[m, O_ACCOUNT] == account:
                if stp == STP_CANCEL_INCOMING:
                    return leaves, R_SELF_TRADE_PREVENTED
                _emit(
                    events,
                    meta,
                    CANCEL,
                    orders[m, O_OID],
                    0,
                    lp,
                    orders[m, O_LEAVES],
                    0,
                    0,
                    R_SELF_TRADE_PREVENTED,
                )
                gone = _pop_head(orders, levels, inst, index, meta, instr, opp, lvl, m)
                if stp == STP_CANCEL_BOTH:
                    return leaves, R_SELF_TRADE_PREVENTED
                if gone:
                    break
                continue
            vis = orders[m, O_VISIBLE]
            q = leaves if leaves < vis else vis
            leaves -= q
            ml = orders[m, O_LEAVES] - q
            vis -= q
            orders[m, O_LEAVES] = ml
            levels[lvl, L_QTY] -= q
            inst[instr, I_LAST] = lp
            meta[M_NTRADES] += 1
            meta[M_TRADED_QTY] += q
            _emit(events, meta, TRADE, oid, orders[m, O_OID], lp, q, leaves, ml, 0)
            if ml == 0:
                if _pop_head(orders, levels, inst, index, meta, instr, opp, lvl, m):
                    break
            elif vis > 0:
                orders[m, O_VISIBLE] = vis
            else:
                # iceberg refresh: a new peak, at the back of the queue
                d = orders[m, O_DISPLAY]
                orders[m, O_VISIBLE] = d if d < ml else ml
                nx = orders[m, O_NEXT]
                if nx >= 0:
                    levels[lvl, L_HEAD] = nx
                    orders[nx, O_PREV] = -1
                    tail = levels[lvl, L_TAIL]
                    orders[tail, O_NEXT] = m
                    orders[m, O_PREV] = tail
                    orders[m, O_NEXT] = -1
                    levels[lvl, L_TAIL] = m
    return leaves, 0


@_kernel
def _fok_fillable(orders, levels, inst, meta, instr, side, account, price, is_market, qty, stp):
    """Dry run: can ``qty`` be filled now (STP and the match limit honoured)? Touches nothing."""
    opp = 1 - side
    base = I_LADDER + opp * meta[M_MAX_LEVELS]
    max_fills = meta[M_MAX_FILLS]
    avail = 0
    counted = 0
    j = inst[instr, I_NLEV + opp] - 1
    while j >= 0:
        lvl = inst[instr, base + j]
        lp = levels[lvl, L_PRICE]
        if not is_market:
            if side == BUY:
                if lp > price:
                    return False
            elif lp < price:
                return False
        m = levels[lvl, L_HEAD]
        while m >= 0:
            if counted >= max_fills:
                return False
            counted += 1
            if stp != STP_NONE and orders[m, O_ACCOUNT] == account:
                if stp != STP_CANCEL_RESTING:
                    return False
            else:
                avail += orders[m, O_LEAVES]
                if avail >= qty:
                    return True
            m = orders[m, O_NEXT]
        j -= 1
    return False


@_inline
def _take(
    orders,
    levels,
    inst,
    index,
    meta,
    events,
    slot,
    mode,
    oid,
    instr,
    account,
    side,
    otype,
    tif,
    price,
    qty,
    display,
    stop_price,
    expire_ts,
    post_only,
    stp,
):
    """Process an order as a taker: checks, FOK dry run, matching, then rest or cancel."""
    is_market = otype == MARKET or otype == STOP
    can_rest = (not is_market) and tif != IOC and tif != FOK
    crosses = _crosses(levels, inst, meta, instr, side, price, is_market)
    reason = 0
    if can_rest and slot < 0 and meta[M_FREE_ORDER] < 0:
        reason = R_BOOK_FULL
    elif post_only != 0 and crosses and not is_market:
        reason = R_POST_ONLY_WOULD_CROSS
    elif can_rest and not _level_room(levels, inst, meta, instr, side, price):
        reason = R_PRICE_LEVELS_FULL
    if reason != 0:
        if mode == MODE_TRIGGERED:
            _emit(events, meta, CANCEL, oid, 0, price, qty, 0, 0, reason)
            _free_order(orders, index, meta, slot)
        else:
            _emit(events, meta, REJECT, oid, 0, price, qty, 0, 0, reason)
        return
    if mode == MODE_NEW_TRIGGER:
        _emit(events, meta, TRIGGER, oid, 0, inst[instr, I_LAST], qty, qty, 0, 0)
    if tif == FOK and not _fok_fillable(
        orders, levels, inst, meta, instr, side, account, price, is_market, qty, stp
    ):
        _emit(events, meta, CANCEL, oid, 0, price, qty, 0, 0, R_FOK_NOT_FILLABLE)
        if slot >= 0:
            _free_order(orders, index, meta, slot)
        return
    leaves = qty
    why = 0
    if crosses:
        t0 = meta[M_NTRADES]
        leaves, why = _match(
            orders,
            levels,
            inst,
            index,
            meta,
            events,
            instr,
            side,
            oid,
            account,
            price,
            is_market,
            qty,
            stp,
        )
        if meta[M_NTRADES] != t0 and inst[instr, I_NSTOP] > 0:
            meta[M_CASC] = instr
    if leaves == 0:
        if slot >= 0:
            _free_order(orders, index, meta, slot)
        return
    if why == 0:
        if is_market:
            why = R_NO_LIQUIDITY
        elif tif == IOC:
            why = R_IOC_REMAINDER
        elif tif == FOK:
            why = R_FOK_NOT_FILLABLE
    if why != 0:
        _emit(events, meta, CANCEL, oid, 0, price, leaves, 0, 0, why)
        if slot >= 0:
            _free_order(orders, index, meta, slot)
        return
    if slot < 0:
        slot = _alloc_order(orders, index, meta, oid)
        _fill_order(
            orders,
            slot,
            oid,
            instr,
            account,
            side,
            otype,
            tif,
            price,
            leaves,
            display,
            stop_price,
            expire_ts,
            post_only,
            stp,
        )
        if tif == GTD:
            _heap_push(orders, index, meta, expire_ts, oid)
    else:
        orders[slot, O_LEAVES] = leaves
        orders[slot, O_VISIBLE] = display if 0 < display < leaves else leaves
    _rest(orders, levels, inst, meta, slot, instr, side, price)
    _emit(events, meta, REST, oid, 0, price, leaves, leaves, 0, 0)


# -- commands ------------------------------------------------------------------------------------


@_inline
def _submit(
    orders,
    levels,
    inst,
    index,
    meta,
    events,
    oid,
    instr,
    account,
    side,
    otype,
    tif,
    price,
    qty,
    display,
    stop_price,
    expire_ts,
    post_only,
    stp,
):
    if instr < 0 or instr >= meta[M_NINSTR]:
        _emit(events, meta, REJECT, oid, 0, price, qty, 0, 0, R_UNKNOWN_BOOK_INSTRUMENT)
        return
    if oid < 0:
        _emit(events, meta, REJECT, oid, 0, price, qty, 0, 0, R_UNKNOWN_BOOK_ORDER)
        return
    if _h_find(index, meta, oid) >= 0:
        _emit(events, meta, REJECT, oid, 0, price, qty, 0, 0, R_DUPLICATE_BOOK_ORDER)
        return
    mode = MODE_NEW
    if otype == STOP or otype == STOP_LIMIT:
        last = inst[instr, I_LAST]
        if last > 0 and (
            (side == BUY and last >= stop_price) or (side == SELL and last <= stop_price)
        ):
            mode = MODE_NEW_TRIGGER
        elif meta[M_FREE_ORDER] < 0:
            _emit(events, meta, REJECT, oid, 0, price, qty, 0, 0, R_BOOK_FULL)
            return
        else:
            slot = _alloc_order(orders, index, meta, oid)
            _fill_order(
                orders,
                slot,
                oid,
                instr,
                account,
                side,
                otype,
                tif,
                price,
                qty,
                display,
                stop_price,
                expire_ts,
                post_only,
                stp,
            )
            orders[slot, O_STATE] = ST_PENDING
            _stop_append(orders, inst, instr, slot)
            if tif == GTD:
                _heap_push(orders, index, meta, expire_ts, oid)
            _emit(events, meta, PENDING_STOP, oid, 0, stop_price, qty, qty, 0, 0)
            return
    _take(
        orders,
        levels,
        inst,
        index,
        meta,
        events,
        -1,
        mode,
        oid,
        instr,
        account,
        side,
        otype,
        tif,
        price,
        qty,
        display,
        stop_price,
        expire_ts,
        post_only,
        stp,
    )


@_inline
def _remove_live(orders, levels, inst, index, meta, events, slot, etype, reason):
    """Take a resting order or pending stop out of the book with one event."""
    leaves = orders[slot, O_LEAVES]
    if orders[slot, O_STATE] == ST_PENDING:
        _stop_unlink(orders, inst, orders[slot, O_INSTR], slot)
    else:
        _detach(orders, levels, inst, meta, slot)
    _emit(events, meta, etype, orders[slot, O_OID], 0, orders[slot, O_PRICE], leaves, 0, 0, reason)
    _free_order(orders, index, meta, slot)


@_inline
def _cancel(orders, levels, inst, index, meta, events, oid):
    slot = _h_find(index, meta, oid) if oid >= 0 else -1
    if slot < 0:
        _emit(events, meta, CANCEL_REJECT, oid, 0, 0, 0, 0, 0, R_UNKNOWN_BOOK_ORDER)
        return
    _remove_live(orders, levels, inst, index, meta, events, slot, CANCEL, R_CANCEL_REQUESTED)


@_kernel
def _modify(orders, levels, inst, index, meta, events, oid, new_price, new_leaves):
    slot = _h_find(index, meta, oid) if oid >= 0 else -1
    if slot < 0:
        _emit(
            events, meta, MODIFY_REJECT, oid, 0, new_price, new_leaves, 0, 0, R_UNKNOWN_BOOK_ORDER
        )
        return
    display = orders[slot, O_DISPLAY]
    if orders[slot, O_STATE] == ST_PENDING:
        orders[slot, O_PRICE] = new_price
        orders[slot, O_LEAVES] = new_leaves
        orders[slot, O_VISIBLE] = display if 0 < display < new_leaves else new_leaves
        _emit(events, meta, REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 1)
        return
    price = orders[slot, O_PRICE]
    leaves = orders[slot, O_LEAVES]
    instr = orders[slot, O_INSTR]
    side = orders[slot, O_SIDE]
    if new_price == price and new_leaves <= leaves:
        levels[orders[slot, O_LEVEL], L_QTY] -= leaves - new_leaves
        orders[slot, O_LEAVES] = new_leaves
        if orders[slot, O_VISIBLE] > new_leaves:
            orders[slot, O_VISIBLE] = new_leaves
        _emit(events, meta, REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 1)
        return
    crosses = _crosses(levels, inst, meta, instr, side, new_price, False)
    if crosses and orders[slot, O_POST_ONLY] != 0:
        _emit(
            events,
            meta,
            MODIFY_REJECT,
            oid,
            0,
            new_price,
            new_leaves,
            0,
            0,
            R_POST_ONLY_WOULD_CROSS,
        )
        return
    if (
        new_price != price
        and levels[orders[slot, O_LEVEL], L_COUNT] > 1
        and not _level_room(levels, inst, meta, instr, side, new_price)
    ):
        _emit(events, meta, MODIFY_REJECT, oid, 0, new_price, new_leaves, 0, 0, R_PRICE_LEVELS_FULL)
        return
    _detach(orders, levels, inst, meta, slot)
    orders[slot, O_PRICE] = new_price
    orders[slot, O_LEAVES] = new_leaves
    orders[slot, O_VISIBLE] = display if 0 < display < new_leaves else new_leaves
    _emit(events, meta, REPLACE, oid, 0, new_price, new_leaves, new_leaves, 0, 0)
    if not crosses:
        _rest(orders, levels, inst, meta, slot, instr, side, new_price)
        return
    orders[slot, O_STATE] = ST_TAKING
    t0 = meta[M_NTRADES]
    left, why = _match(
        orders,
        levels,
        inst,
        index,
        meta,
        events,
        instr,
        side,
        oid,
        orders[slot, O_ACCOUNT],
        new_price,
        False,
        new_leaves,
        orders[slot, O_STP],
    )
    if meta[M_NTRADES] != t0 and inst[instr, I_NSTOP] > 0:
        meta[M_CASC] = instr
    if left == 0:
        _free_order(orders, index, meta, slot)
        return
    if why != 0:
        _emit(events, meta, CANCEL, oid, 0, new_price, left, 0, 0, why)
        _free_order(orders, index, meta, slot)
        return
    orders[slot, O_LEAVES] = left
    orders[slot, O_VISIBLE] = display if 0 < display < left else left
    _rest(orders, levels, inst, meta, slot, instr, side, new_price)
    _emit(events, meta, REST, oid, 0, new_price, left, left, 0, 0)


@_kernel
def _trigger(orders, levels, inst, index, meta, events, slot):
    instr = orders[slot, O_INSTR]
    _stop_unlink(orders, inst, instr, slot)
    orders[slot, O_STATE] = ST_TAKING
    oid = orders[slot, O_OID]
    leaves = orders[slot, O_LEAVES]
    _emit(events, meta, TRIGGER, oid, 0, inst[instr, I_LAST], leaves, leaves, 0, 0)
    _take(
        orders,
        levels,
        inst,
        index,
        meta,
        events,
        slot,
        MODE_TRIGGERED,
        oid,
        instr,
        orders[slot, O_ACCOUNT],
        orders[slot, O_SIDE],
        orders[slot, O_OTYPE],
        orders[slot, O_TIF],
        orders[slot, O_PRICE],
        leaves,
        orders[slot, O_DISPLAY],
        orders[slot, O_STOP_PRICE],
        orders[slot, O_EXPIRE_TS],
        orders[slot, O_POST_ONLY],
        orders[slot, O_STP],
    )


@_kernel
def _cascade(orders, levels, inst, index, meta, events):
    """Trigger qualifying stops of meta[M_CASC] until none is left; False = paused for space."""
    instr = meta[M_CASC]
    worst = meta[M_WORST]
    cap = events.shape[0]
    while True:
        s = _first_qualifying_stop(orders, inst, instr)
        if s < 0:
            meta[M_CASC] = -1
            return True
        if cap - meta[M_NEV] < worst:
            return False
        _trigger(orders, levels, inst, index, meta, events, s)


@_kernel
def _sift(a, start, end):
    root = start
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and a[child] < a[child + 1]:
            child += 1
        if a[root] < a[child]:
            a[root], a[child] = a[child], a[root]
            root = child
        else:
            return


@_kernel
def _heapsort(a, n):
    """Sort a[:n] ascending in place (numba's sort needs the NRT). O(n log n)."""
    start = n // 2 - 1
    while start >= 0:
        _sift(a, start, n)
        start -= 1
    end = n - 1
    while end > 0:
        a[0], a[end] = a[end], a[0]
        _sift(a, 0, end)
        end -= 1


@_kernel
def _collect(orders, levels, inst, meta, scratch, instr, account, side, tif):
    """Oids of live orders matching the filters (-1 = any) into scratch[:n], sorted. O(n log n)."""
    n = 0
    if instr >= 0:
        if instr >= meta[M_NINSTR]:
            return 0
        max_levels = meta[M_MAX_LEVELS]
        for sd in range(2):
            if side >= 0 and sd != side:
                continue
            base = I_LADDER + sd * max_levels
            for j in range(inst[instr, I_NLEV + sd]):
                m = levels[inst[instr, base + j], L_HEAD]
                while m >= 0:
                    if (account < 0 or orders[m, O_ACCOUNT] == account) and (
                        tif < 0 or orders[m, O_TIF] == tif
                    ):
                        scratch[n] = orders[m, O_OID]
                        n += 1
                    m = orders[m, O_NEXT]
        m = inst[instr, I_STOP_HEAD]
        while m >= 0:
            if (
                (side < 0 or orders[m, O_SIDE] == side)
                and (account < 0 or orders[m, O_ACCOUNT] == account)
                and (tif < 0 or orders[m, O_TIF] == tif)
            ):
                scratch[n] = orders[m, O_OID]
                n += 1
            m = orders[m, O_NEXT]
    else:
        for s in range(meta[M_MAX_ORDERS]):
            if orders[s, O_STATE] == ST_FREE:
                continue
            if (
                (side < 0 or orders[s, O_SIDE] == side)
                and (account < 0 or orders[s, O_ACCOUNT] == account)
                and (tif < 0 or orders[s, O_TIF] == tif)
            ):
                scratch[n] = orders[s, O_OID]
                n += 1
    _heapsort(scratch, n)
    return n


@_kernel
def _mass_remove(
    orders, levels, inst, index, meta, events, scratch, instr, account, side, tif, etype, reason
):
    """Mass cancel / end of day. False (book untouched, M_NEED set) if the buffer is too small."""
    n = _collect(orders, levels, inst, meta, scratch, instr, account, side, tif)
    if events.shape[0] - meta[M_NEV] < n:
        meta[M_NEED] = n
        return False
    for i in range(n):
        slot = _h_find(index, meta, scratch[i])
        _remove_live(orders, levels, inst, index, meta, events, slot, etype, reason)
    return True


@_kernel
def _expire(orders, levels, inst, index, meta, events, now):
    """Expire GTD orders with expire_ts <= now in (expire_ts, oid) order; False = need space."""
    base = meta[M_HEAP_BASE]
    n = 0
    for i in range(meta[M_HEAP_N]):
        if index[base + i, 0] <= now:
            n += 1
    if events.shape[0] - meta[M_NEV] < n:
        meta[M_NEED] = n
        return False
    while meta[M_HEAP_N] > 0 and index[base, 0] <= now:
        ts = index[base, 0]
        oid = index[base, 1]
        _heap_pop(index, meta)
        slot = _heap_valid(orders, index, meta, ts, oid)
        if slot >= 0:
            _remove_live(orders, levels, inst, index, meta, events, slot, EXPIRE, R_GTD_EXPIRED)
    return True


@_kernel
def _next_expiry(orders, index, meta):
    base = meta[M_HEAP_BASE]
    while meta[M_HEAP_N] > 0:
        ts = index[base, 0]
        if _heap_valid(orders, index, meta, ts, index[base, 1]) >= 0:
            return ts
        _heap_pop(index, meta)
    return 0


# -- entry points (one jitted call per public method) ----------------------------------------------


@_inline
def _views(state):
    """The 2-D arrays of the flat state buffer (views; meta is its head). O(1)."""
    meta = state[:M_NCOLS]
    max_orders = meta[M_MAX_ORDERS]
    o = meta[M_OFF_ORDERS]
    orders = state[o : o + max_orders * O_NCOLS].reshape((max_orders, O_NCOLS))
    o = meta[M_OFF_LEVELS]
    levels = state[o : o + max_orders * L_NCOLS].reshape((max_orders, L_NCOLS))
    o = meta[M_OFF_INST]
    width = I_LADDER + 2 * meta[M_MAX_LEVELS]
    inst = state[o : o + meta[M_NINSTR] * width].reshape((meta[M_NINSTR], width))
    o = meta[M_OFF_INDEX]
    rows = meta[M_HEAP_BASE] + meta[M_HEAP_CAP]
    index = state[o : o + rows * 2].reshape((rows, 2))
    return orders, levels, inst, index, meta


# The per-command entry points take the flat state buffer and the event buffer (two arrays, not
# six: numba unboxes every array argument on every call) and the command's scalars.


@_kernel
def _cmd_submit(
    state,
    events,
    oid,
    instr,
    account,
    side,
    otype,
    tif,
    price,
    qty,
    display,
    stop_price,
    expire_ts,
    post_only,
    stp,
):
    orders, levels, inst, index, meta = _views(state)
    meta[M_NEV] = 0
    _submit(
        orders,
        levels,
        inst,
        index,
        meta,
        events,
        oid,
        instr,
        account,
        side,
        otype,
        tif,
        price,
        qty,
        display,
        stop_price,
        expire_ts,
        post_only,
        stp,
    )
    if meta[M_CASC] >= 0 and not _cascade(orders, levels, inst, index, meta, events):
        return -1
    return meta[M_NEV]


@_kernel
def _cmd_cancel(state, events, oid):
    orders, levels, inst, index, meta = _views(state)
    meta[M_NEV] = 0
    _cancel(orders, levels, inst, index, meta, events, oid)
    return meta[M_NEV]


@_kernel
def _cmd_modify(state, events, oid, new_price, new_leaves):
    orders, levels, inst, index, meta = _views(state)
    meta[M_NEV] = 0
    _modify(orders, levels, inst, index, meta, events, oid, new_price, new_leaves)
    if meta[M_CASC] >= 0 and not _cascade(orders, levels, inst, index, meta, events):
        return -1
    return meta[M_NEV]


@_kernel
def _cmd_resume(orders, levels, inst, index, meta, events):
    if meta[M_CASC] >= 0 and not _cascade(orders, levels, inst, index, meta, events):
        return -1
    return meta[M_NEV]


@_kernel
def _cmd_mass(orders, levels, inst, index, meta, events, scratch, op, instr, account, side, now):
    meta[M_NEV] = 0
    if op == OP_MASS_CANCEL:
        ok = _mass_remove(
            orders,
            levels,
            inst,
            index,
            meta,
            events,
            scratch,
            instr,
            account,
            side,
            -1,
            CANCEL,
            R_MASS_CANCEL,
        )
    elif op == OP_END_OF_DAY:
        ok = _mass_remove(
            orders,
            levels,
            inst,
            index,
            meta,
            events,
            scratch,
            -1,
            -1,
            -1,
            DAY,
            EXPIRE,
            R_END_OF_DAY,
        )
    else:
        ok = _expire(orders, levels, inst, index, meta, events, now)
    return meta[M_NEV] if ok else -2


@_kernel
def _run_batch(orders, levels, inst, index, meta, events, scratch, cmds, start, starts, base):
    """Process cmds[start:]; returns the index of the first command not (fully) processed.

    Pauses (returns early) when fewer than M_WORST event rows are free, or when a mass operation
    needs more rows than are free (M_NEED). A stop cascade in progress (M_CASC >= 0) belongs to the
    command at the returned index and is resumed first on the next call. ``starts[k]`` receives
    the row (counted from the whole batch's first event, ``base`` rows flushed before this call)
    where command k's events begin.
    """
    n = cmds.shape[0]
    worst = meta[M_WORST]
    cap = events.shape[0]
    k = start
    while k < n:
        if meta[M_CASC] < 0:
            if cap - meta[M_NEV] < worst:
                return k
            starts[k] = base + meta[M_NEV]
            op = cmds[k, C_OP]
            if op == OP_SUBMIT:
                _submit(
                    orders,
                    levels,
                    inst,
                    index,
                    meta,
                    events,
                    cmds[k, C_OID],
                    cmds[k, C_INSTR],
                    cmds[k, C_ACCOUNT],
                    cmds[k, C_SIDE],
                    cmds[k, C_OTYPE],
                    cmds[k, C_TIF],
                    cmds[k, C_PRICE],
                    cmds[k, C_QTY],
                    cmds[k, C_DISPLAY],
                    cmds[k, C_STOP_PRICE],
                    cmds[k, C_EXPIRE_TS],
                    cmds[k, C_POST_ONLY],
                    cmds[k, C_STP],
                )
            elif op == OP_CANCEL:
                _cancel(orders, levels, inst, index, meta, events, cmds[k, C_OID])
            elif op == OP_MODIFY:
                _modify(
                    orders,
                    levels,
                    inst,
                    index,
                    meta,
                    events,
                    cmds[k, C_OID],
                    cmds[k, C_PRICE],
                    cmds[k, C_QTY],
                )
            elif op == OP_MASS_CANCEL:
                if not _mass_remove(
                    orders,
                    levels,
                    inst,
                    index,
                    meta,
                    events,
                    scratch,
                    cmds[k, C_INSTR],
                    cmds[k, C_ACCOUNT],
                    cmds[k, C_SIDE],
                    -1,
                    CANCEL,
                    R_MASS_CANCEL,
                ):
                    return k
            elif op == OP_END_OF_DAY:
                if not _mass_remove(
                    orders,
                    levels,
                    inst,
                    index,
                    meta,
                    events,
                    scratch,
                    -1,
                    -1,
                    -1,
                    DAY,
                    EXPIRE,
                    R_END_OF_DAY,
                ):
                    return k
            elif op == OP_EXPIRE:
                if not _expire(orders, levels, inst, index, meta, events, cmds[k, C_EXPIRE_TS]):
                    return k
        if meta[M_CASC] >= 0 and not _cascade(orders, levels, inst, index, meta, events):
            return k
        k += 1
    return n


@njit(cache=True)  # allocates its output: needs the NRT
def _canonical(orders, levels, inst, meta):
    """The canonical live state as one int64 vector (see ReferenceBook._canonical)."""
    n_instr = meta[M_NINSTR]
    max_levels = meta[M_MAX_LEVELS]
    total = n_instr * 5
    for i in range(n_instr):
        total += 3 * (inst[i, I_NLEV + BUY] + inst[i, I_NLEV + SELL])
    total += 13 * meta[M_NLIVE]
    out = np.empty(total, dtype=np.int64)
    w = 0
    for i in range(n_instr):
        out[w] = i
        out[w + 1] = inst[i, I_LAST]
        out[w + 2] = inst[i, I_NLEV + BUY]
        out[w + 3] = inst[i, I_NLEV + SELL]
        out[w + 4] = inst[i, I_NSTOP]
        w += 5
        for sd in range(2):
            base = I_LADDER + sd * max_levels
            j = inst[i, I_NLEV + sd] - 1
            while j >= 0:
                lvl = inst[i, base + j]
                out[w] = levels[lvl, L_PRICE]
                out[w + 1] = levels[lvl, L_QTY]
                out[w + 2] = levels[lvl, L_COUNT]
                w += 3
                m = levels[lvl, L_HEAD]
                while m >= 0:
                    w = _canonical_order(orders, m, out, w)
                    m = orders[m, O_NEXT]
                j -= 1
        m = inst[i, I_STOP_HEAD]
        while m >= 0:
            w = _canonical_order(orders, m, out, w)
            m = orders[m, O_NEXT]
    return out[:w]


@_kernel
def _canonical_order(orders, m, out, w):
    out[w] = orders[m, O_OID]
    out[w + 1] = orders[m, O_ACCOUNT]
    out[w + 2] = orders[m, O_SIDE]
    out[w + 3] = orders[m, O_PRICE]
    out[w + 4] = orders[m, O_LEAVES]
    out[w + 5] = orders[m, O_VISIBLE]
    out[w + 6] = orders[m, O_DISPLAY]
    out[w + 7] = orders[m, O_OTYPE]
    out[w + 8] = orders[m, O_TIF]
    out[w + 9] = orders[m, O_STOP_PRICE]
    out[w + 10] = orders[m, O_EXPIRE_TS]
    out[w + 11] = orders[m, O_POST_ONLY]
    out[w + 12] = orders[m, O_STP]
    return w + 13


# -- snapshots -----------------------------------------------------------------------------------

_CANON_ORDER = 13  # ints per order in the canonical vector (see _canonical_order)


@_kernel
def _load_order(orders, index, meta, vec, w, instr):
    """Take a slot for the canonical order at ``vec[w:w+13]``; returns the slot."""
    oid = vec[w]
    slot = _alloc_order(orders, index, meta, oid)
    _fill_order(orders, slot, oid, instr, vec[w + 1], vec[w + 2], vec[w + 7], vec[w + 8],
                vec[w + 3], vec[w + 4], vec[w + 6], vec[w + 9], vec[w + 10], vec[w + 11],
                vec[w + 12])
    orders[slot, O_VISIBLE] = vec[w + 5]
    if vec[w + 8] == GTD:
        _heap_push(orders, index, meta, vec[w + 10], oid)
    return slot


@_kernel
def _load_canonical(orders, levels, inst, index, meta, vec):
    """Rebuild an empty book from a canonical vector. Returns the ints consumed, or -1 if the
    vector does not fit this book (too many orders, levels or instruments)."""
    w = 0
    n = vec.shape[0]
    max_levels = meta[M_MAX_LEVELS]
    while w < n:
        instr = vec[w]
        if instr < 0 or instr >= meta[M_NINSTR]:
            return -1
        inst[instr, I_LAST] = vec[w + 1]
        nstop = vec[w + 4]
        if vec[w + 2] > max_levels or vec[w + 3] > max_levels:
            return -1
        nlev = (vec[w + 2], vec[w + 3])
        w += 5
        for sd in range(2):
            for _ in range(nlev[sd]):
                price = vec[w + 0]
                count = vec[w + 2]
                w += 3
                for _ in range(count):
                    if meta[M_NLIVE] >= meta[M_MAX_ORDERS]:
                        return -1
                    visible = vec[w + 5]
                    slot = _load_order(orders, index, meta, vec, w, instr)
                    _rest(orders, levels, inst, meta, slot, instr, sd, price)
                    orders[slot, O_VISIBLE] = visible
                    w += _CANON_ORDER
        for _ in range(nstop):
            if meta[M_NLIVE] >= meta[M_MAX_ORDERS]:
                return -1
            slot = _load_order(orders, index, meta, vec, w, instr)
            orders[slot, O_STATE] = ST_PENDING
            _stop_append(orders, inst, instr, slot)
            w += _CANON_ORDER
    return w


# ================================================================================================
# the Python wrapper
# ================================================================================================


# One large batch output buffer kept for reuse: process_batch returns a view of it, and takes it
# again for a later batch only once nothing references it any more (the caller dropped that
# result and every view of it). A fresh 100 MB array costs tens of ms of page faults (the kernel
# zeroes each page on first touch); a recycled one costs none. At most one buffer of at most
# _SPARE_MAX_BYTES is kept.
_SPARE_MAX_BYTES = 1 << 28
_spare: list = [None]


def _spare_refs(holder: list) -> int:
    buf = holder[0]
    return sys.getrefcount(buf)


# the count _spare_refs reports for a buffer nothing but the holder references (calibrated here,
# not assumed: it depends on the Python version)
_FREE_REFS = _spare_refs([np.empty(1)])


def _batch_buffer(rows: int) -> np.ndarray:
    """A (>= rows, 8) int64 event buffer: the spare one if it is free and big enough."""
    if _spare[0] is not None and _spare[0].shape[0] >= rows and _spare_refs(_spare) == _FREE_REFS:
        buf = _spare[0]
        _spare[0] = None
        return buf
    return np.empty((rows, EV_NCOLS), dtype=np.int64)


def _recycle(buf: np.ndarray) -> None:
    if buf.nbytes <= _SPARE_MAX_BYTES:
        _spare[0] = buf


def _hash_home(oid: int, shift: int, mask: int) -> int:
    return (oid ^ (oid >> shift)) & mask


def _hash_capacity(max_orders: int) -> int:
    cap = 8
    while cap < 2 * max_orders:
        cap *= 2
    return cap


_HEADS = 16  # event-buffer views kept ready for per-command results of fewer rows


def _entry_point(dispatcher, n_scalars):
    """The compiled CPython entry of ``dispatcher`` for (int64[::1], int64[:, ::1], n int64
    scalars), or None. Calling it skips the dispatcher's argument typing and overload lookup
    (about half of a per-command call); the book falls back to the dispatcher when it is None."""
    try:
        from numba import types as nt

        want = (nt.int64[::1], nt.int64[:, ::1]) + (nt.int64,) * n_scalars
        for sig, cres in dispatcher.overloads.items():
            if tuple(sig) == want:
                return cres.entry_point
    except Exception:  # noqa: BLE001 - a numba without these internals: use the dispatcher
        pass
    return None


def _bootstrap(name: str, dispatcher, n_scalars: int):
    """A stand-in for module global ``name``: its first call goes through ``dispatcher``
    (compiling or loading from the cache), then rebinds ``name`` to the entry point."""

    def first_call(*args):
        r = dispatcher(*args)
        ep = _entry_point(dispatcher, n_scalars)
        globals()[name] = dispatcher if ep is None else ep
        return r

    return first_call


_SUBMIT = _bootstrap("_SUBMIT", _cmd_submit, 13)
_CANCEL = _bootstrap("_CANCEL", _cmd_cancel, 1)
_MODIFY = _bootstrap("_MODIFY", _cmd_modify, 3)


class NumbaBook:
    """A multi-instrument price-time priority book in preallocated numpy arrays.

    Every mutating method is one jitted call and returns a read-only (n, 8) int64 view of the
    event buffer (``engine.book_events.EV_*``), valid until the next call.
    """

    # event buffer rows process_batch starts with; None = sized from the batch (1.5 rows per
    # command, grown if short). Tests set a small value to force mid-batch drains.
    batch_event_rows: int | None = None

    def __init__(
        self,
        n_instruments: int,
        max_orders: int,
        max_levels_per_side: int = 1024,
        max_fills_per_order: int = 10_000,
    ) -> None:
        if (
            n_instruments < 1
            or max_orders < 1
            or max_levels_per_side < 1
            or max_fills_per_order < 1
        ):
            raise ValueError(
                "n_instruments, max_orders, max_levels_per_side and max_fills_per_order must be "
                f">= 1, got {n_instruments}, {max_orders}, {max_levels_per_side}, "
                f"{max_fills_per_order}"
            )
        self.n_instruments = n_instruments
        self.max_orders = max_orders
        self.max_levels = max_levels_per_side
        self.max_fills = max_fills_per_order
        self._worst = worst_case_rows(max_fills_per_order)

        hcap = _hash_capacity(max_orders)
        width = I_LADDER + 2 * max_levels_per_side
        # one flat int64 buffer holds meta, orders, levels, inst and index (the per-command
        # entry points unbox two arrays instead of six); the attributes below are views of it
        sizes = (
            M_NCOLS,
            max_orders * O_NCOLS,
            max_orders * L_NCOLS,
            n_instruments * width,
            (hcap + max_orders + 1) * 2,
        )
        offs = np.concatenate(([0], np.cumsum(sizes))).tolist()
        state = np.zeros(offs[-1], dtype=np.int64)
        meta = state[: offs[1]]
        orders = state[offs[1] : offs[2]].reshape(max_orders, O_NCOLS)
        levels = state[offs[2] : offs[3]].reshape(max_orders, L_NCOLS)
        inst = state[offs[3] : offs[4]].reshape(n_instruments, width)
        index = state[offs[4] : offs[5]].reshape(hcap + max_orders + 1, 2)
        orders[:, O_NEXT] = np.arange(1, max_orders + 1)
        orders[-1, O_NEXT] = -1
        levels[:, L_HEAD] = np.arange(1, max_orders + 1)
        levels[-1, L_HEAD] = -1
        inst[:, I_STOP_HEAD] = -1
        inst[:, I_STOP_TAIL] = -1
        index[:hcap, 0] = _EMPTY
        meta[M_OFF_ORDERS] = offs[1]
        meta[M_OFF_LEVELS] = offs[2]
        meta[M_OFF_INST] = offs[3]
        meta[M_OFF_INDEX] = offs[4]
        meta[M_FREE_ORDER] = 0
        meta[M_FREE_LEVEL] = 0
        meta[M_CASC] = -1
        meta[M_MAX_ORDERS] = max_orders
        meta[M_MAX_LEVELS] = max_levels_per_side
        meta[M_MAX_FILLS] = max_fills_per_order
        meta[M_NINSTR] = n_instruments
        meta[M_HMASK] = hcap - 1
        meta[M_HSHIFT] = hcap.bit_length() - 1
        meta[M_HEAP_BASE] = hcap
        meta[M_HEAP_CAP] = max_orders + 1
        meta[M_WORST] = self._worst
        self._state = state
        self._orders = orders
        self._levels = levels
        self._inst = inst
        self._index = index
        self._meta = meta
        self._scratch = np.zeros(max_orders, dtype=np.int64)
        self._set_events(np.zeros((2 * self._worst, EV_NCOLS), dtype=np.int64))

    @staticmethod
    def footprint(
        n_instruments: int,
        max_orders: int,
        max_levels_per_side: int = 1024,
        max_fills_per_order: int = 10_000,
    ) -> int:
        """Bytes of state a book of this size allocates (without allocating it). O(1)."""
        hcap = _hash_capacity(max_orders)
        words = (
            max_orders * O_NCOLS
            + max_orders * L_NCOLS
            + n_instruments * (I_LADDER + 2 * max_levels_per_side)
            + (hcap + max_orders + 1) * 2
            + M_NCOLS
            + max_orders
            + 2 * worst_case_rows(max_fills_per_order) * EV_NCOLS
        )
        return 8 * words

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays and the event buffer. O(1)."""
        return self._state.nbytes + self._scratch.nbytes + self._events.nbytes

    def _set_events(self, events: np.ndarray) -> None:
        self._events = events
        view = events.view()
        view.flags.writeable = False
        self._ro_events = view
        # the results of most per-command calls (a few rows), sliced once: indexing a list is
        # cheaper than slicing an array on every call
        self._ro_heads = [view[:r] for r in range(_HEADS)]

    def _grow_events(self, rows: int) -> None:
        cap = self._events.shape[0]
        if rows <= cap:
            return
        new = np.zeros((max(rows, 2 * cap), EV_NCOLS), dtype=np.int64)
        n = int(self._meta[M_NEV])
        new[:n] = self._events[:n]
        self._set_events(new)

    def _finish(self, r: int) -> np.ndarray:
        """Complete a call that paused for buffer space (rare: long stop cascades)."""
        while r < 0:
            self._grow_events(int(self._meta[M_NEV]) + 2 * self._worst)
            r = _cmd_resume(
                self._orders, self._levels, self._inst, self._index, self._meta, self._events
            )
        return self._ro_events[:r]

    # -- COMMANDS --------------------------------------------------------------------------------

    def submit(
        self,
        oid: int,
        instr: int,
        account: int,
        side: int,
        otype: int,
        tif: int,
        price: int,
        qty: int,
        display: int = 0,
        stop_price: int = 0,
        expire_ts: int = 0,
        post_only: bool = False,
        stp: int = STP_NONE,
    ) -> np.ndarray:
        """Submit a new order. O(log L) to rest + O(1) per fill; stops O(1) to park."""
        r = _SUBMIT(
            self._state,
            self._events,
            oid,
            instr,
            account,
            side,
            otype,
            tif,
            price,
            qty,
            display,
            stop_price,
            expire_ts,
            1 if post_only else 0,
            stp,
        )
        if r < 0:
            return self._finish(r)
        if r < _HEADS:
            return self._ro_heads[r]
        return self._ro_events[:r]

    def cancel(self, oid: int) -> np.ndarray:
        """Cancel a resting order or pending stop. O(1) unless its level empties (O(log L))."""
        r = _CANCEL(self._state, self._events, oid)
        if r < _HEADS:
            return self._ro_heads[r]
        return self._ro_events[:r]

    def modify(self, oid: int, new_price: int, new_leaves: int) -> np.ndarray:
        """Cancel/replace (new_leaves = new remaining qty). O(1) in place, else as cancel+submit."""
        r = _MODIFY(self._state, self._events, oid, new_price, new_leaves)
        if r < 0:
            return self._finish(r)
        if r < _HEADS:
            return self._ro_heads[r]
        return self._ro_events[:r]

    def _mass(self, op: int, instr: int, account: int, side: int, now: int) -> np.ndarray:
        while True:
            r = _cmd_mass(
                self._orders,
                self._levels,
                self._inst,
                self._index,
                self._meta,
                self._events,
                self._scratch,
                op,
                instr,
                account,
                side,
                now,
            )
            if r >= 0:
                return self._ro_events[:r]
            self._grow_events(int(self._meta[M_NEED]) + self._worst)

    def mass_cancel(self, instr: int = -1, account: int = -1, side: int = -1) -> np.ndarray:
        """Cancel resting orders and pending stops matching the filters, ascending oid.

        O(k log k) for k matches within one instrument; O(max_orders) scan if instr is -1.
        """
        return self._mass(OP_MASS_CANCEL, instr, account, side, 0)

    def end_of_day(self) -> np.ndarray:
        """Expire every DAY order (resting and pending stops), ascending oid. O(max_orders)."""
        return self._mass(OP_END_OF_DAY, -1, -1, -1, 0)

    def expire(self, now: int) -> np.ndarray:
        """Expire GTD orders with expire_ts <= now, in (expire_ts, oid) order. O(h + k log h)."""
        return self._mass(OP_EXPIRE, -1, -1, -1, now)

    def process_batch(self, cmds: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """Run a (n, 14) int64 command array (``C_*`` columns) in one jitted loop; all events.

        O(sum of the commands' costs). Returns a new read-only (m, 8) array. If ``starts`` (an
        int64 array of n) is given, ``starts[k]`` is set to the row where command k's events
        begin, so a caller can tell each command's events apart.
        """
        cmds = np.ascontiguousarray(cmds, dtype=np.int64)
        if cmds.ndim != 2 or cmds.shape[1] != C_NCOLS:
            raise ValueError(f"cmds must have shape (n, {C_NCOLS}), got {cmds.shape}")
        n = cmds.shape[0]
        if starts is None:
            starts = np.empty(n, dtype=np.int64)
        worst = self._worst
        fixed = self.batch_event_rows
        # Small batches (or a forced buffer size) run in the book's own buffer and are copied
        # out; large ones write straight into a fresh output array sized from an estimate
        # (1.5 rows per command), so the events are never copied unless the estimate is short.
        estimate = n + (n >> 1) + worst
        own = fixed is not None or estimate <= self._events.shape[0]
        if own:
            if fixed is not None:
                self._grow_events(fixed)
            buf = self._events
        else:
            buf = _batch_buffer(estimate)
        meta = self._meta
        meta[M_NEV] = 0
        chunks = []
        base = 0
        k = 0
        while True:
            k = _run_batch(
                self._orders,
                self._levels,
                self._inst,
                self._index,
                meta,
                buf,
                self._scratch,
                cmds,
                k,
                starts,
                base,
            )
            if k >= n:
                break
            nev = int(meta[M_NEV])
            chunks.append(buf[:nev].copy() if own else buf[:nev])
            base += nev
            meta[M_NEV] = 0
            need = int(meta[M_NEED]) + worst
            meta[M_NEED] = 0
            if own:
                self._grow_events(need)
                buf = self._events
            else:
                rest = n - k
                buf = np.empty((max(need, rest + (rest >> 1) + worst), EV_NCOLS), dtype=np.int64)
        nev = int(meta[M_NEV])
        meta[M_NEV] = 0
        if chunks:
            chunks.append(buf[:nev])
            out = np.concatenate(chunks)
        elif own or 2 * nev + 4096 < buf.shape[0]:
            out = buf[:nev].copy()  # do not pin a mostly unused buffer
        else:
            out = buf[:nev]
            _recycle(buf)
        out.flags.writeable = False
        return out

    # -- QUERIES ---------------------------------------------------------------------------------

    def _best(self, instr: int, side: int) -> int:
        n = int(self._inst[instr, I_NLEV + side])
        if n == 0:
            return 0
        lvl = self._inst[instr, I_LADDER + side * self.max_levels + n - 1]
        return int(self._levels[lvl, L_PRICE])

    def best_bid(self, instr: int) -> int:
        """Best bid price, 0 if none. O(1)."""
        return self._best(instr, BUY)

    def best_ask(self, instr: int) -> int:
        """Best ask price, 0 if none. O(1)."""
        return self._best(instr, SELL)

    def depth(self, instr: int, side: int, n: int) -> list[tuple[int, int, int]]:
        """Up to n levels, best first: (price, total leaves incl. hidden, order count). O(n)."""
        count = int(self._inst[instr, I_NLEV + side])
        base = I_LADDER + side * self.max_levels
        out = []
        for j in range(count - 1, max(count - n, 0) - 1, -1):
            lvl = self._inst[instr, base + j]
            row = self._levels[lvl]
            out.append((int(row[L_PRICE]), int(row[L_QTY]), int(row[L_COUNT])))
        return out

    def order(self, oid: int) -> OrderView | None:
        """The live order (resting or pending stop) with this oid, or None. O(1)."""
        if oid < 0:
            return None
        slot = _h_find(self._index, self._meta, oid)
        if slot < 0:
            return None
        o = self._orders[slot]
        return OrderView(
            instr=int(o[O_INSTR]),
            account=int(o[O_ACCOUNT]),
            side=int(o[O_SIDE]),
            price=int(o[O_PRICE]),
            leaves=int(o[O_LEAVES]),
            visible=int(o[O_VISIBLE]),
            display=int(o[O_DISPLAY]),
            otype=int(o[O_OTYPE]),
            tif=int(o[O_TIF]),
            is_pending_stop=bool(o[O_STATE] == ST_PENDING),
            stop_price=int(o[O_STOP_PRICE]),
            expire_ts=int(o[O_EXPIRE_TS]),
        )

    def resting_orders(self) -> int:
        """Orders working in price levels (pending stops excluded). O(1)."""
        return int(self._meta[M_NRESTING])

    def pending_stops(self) -> int:
        """Un-triggered stop orders. O(1)."""
        return int(self._meta[M_NLIVE] - self._meta[M_NRESTING])

    def last_price(self, instr: int) -> int:
        """Last trade price, 0 if none yet. O(1)."""
        return int(self._inst[instr, I_LAST])

    def next_expiry(self) -> int:
        """Earliest expire_ts of a live GTD order, 0 if none. O(1) amortised."""
        return int(_next_expiry(self._orders, self._index, self._meta))

    def stats(self) -> dict[str, int]:
        """Cumulative trade count and traded quantity since construction. O(1)."""
        return {"trades": int(self._meta[M_NTRADES]), "traded_qty": int(self._meta[M_TRADED_QTY])}

    # -- SNAPSHOTS -------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The logical state as bytes: the canonical vector and the trade counters. O(N).

        Slot layout is not kept (it is not observable), so a dump is as small as the live state
        and loads into either book (``ReferenceBook.load`` reads the same format).
        """
        vec = _canonical(self._orders, self._levels, self._inst, self._meta)
        return encode_dump(vec, int(self._meta[M_NTRADES]), int(self._meta[M_TRADED_QTY]))

    def load(self, data: bytes) -> None:
        """Rebuild this book, which must be empty, from ``dump()`` output. O(N log L)."""
        if self._meta[M_NLIVE] != 0:
            raise ValueError("load() needs an empty book")
        vec, trades, traded = decode_dump(data)
        if _load_canonical(self._orders, self._levels, self._inst, self._index, self._meta, vec) != len(vec):
            raise ValueError(
                f"the snapshot does not fit this book ({self.n_instruments} instruments, "
                f"{self.max_orders} orders, {self.max_levels} levels per side)"
            )
        self._meta[M_NTRADES] = trades
        self._meta[M_TRADED_QTY] = traded

    def state_hash(self) -> str:
        """blake2b hex digest of the canonical live state (same as ReferenceBook's). O(N)."""
        vec = _canonical(self._orders, self._levels, self._inst, self._meta)
        return hashlib.blake2b(vec.astype("<i8").tobytes(), digest_size=16).hexdigest()

    def validate(self) -> None:
        """Check every invariant; raises AssertionError saying which and where. O(max_orders)."""
        _validate(self)


_DUMP_MAGIC = b"KILATBK1"


def encode_dump(vec: np.ndarray, trades: int, traded_qty: int) -> bytes:
    """The book dump format: magic, trade count, traded quantity, canonical int64 vector (LE)."""
    head = np.array([trades, traded_qty], dtype="<i8").tobytes()
    return _DUMP_MAGIC + head + np.ascontiguousarray(vec, dtype="<i8").tobytes()


def decode_dump(data: bytes) -> tuple[np.ndarray, int, int]:
    if data[:8] != _DUMP_MAGIC or (len(data) - 8) % 8:
        raise ValueError(f"not a Kilat book dump (expected magic {_DUMP_MAGIC!r} and int64 words)")
    words = np.frombuffer(data, dtype="<i8", offset=8).astype(np.int64)
    return words[2:], int(words[0]), int(words[1])


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def _validate(book: NumbaBook) -> None:
    orders, levels, inst, index, meta = (
        book._orders,
        book._levels,
        book._inst,
        book._index,
        book._meta,
    )
    ml = book.max_levels
    _check(meta[M_CASC] == -1, f"stop cascade left open on instrument {meta[M_CASC]}")
    seen_slots: set[int] = set()
    seen_levels: set[int] = set()
    resting = 0
    for i in range(book.n_instruments):
        best = {}
        for side in (BUY, SELL):
            n = int(inst[i, I_NLEV + side])
            _check(0 <= n <= ml, f"instr {i} side {side}: level count {n} outside [0, {ml}]")
            ladder = inst[i, I_LADDER + side * ml : I_LADDER + side * ml + n]
            prices = levels[ladder, L_PRICE]
            keys = prices if side == BUY else -prices
            _check(
                bool(np.all(np.diff(keys) > 0)),
                f"instr {i} side {side}: ladder not strictly sorted best-last: {prices.tolist()}",
            )
            best[side] = int(prices[-1]) if n else 0
            for lvl in ladder.tolist():
                _check(lvl not in seen_levels, f"level slot {lvl} used twice")
                seen_levels.add(lvl)
                total, count, prev = 0, 0, -1
                m = int(levels[lvl, L_HEAD])
                while m >= 0:
                    _check(m not in seen_slots, f"order slot {m} linked twice (level {lvl})")
                    seen_slots.add(m)
                    o = orders[m]
                    where = f"oid {o[O_OID]} (slot {m}) at instr {i} side {side} px {prices[0]}"
                    _check(o[O_STATE] == ST_RESTING, f"{where}: state {o[O_STATE]} != RESTING")
                    _check(o[O_PREV] == prev, f"{where}: prev {o[O_PREV]} != {prev}")
                    _check(o[O_LEVEL] == lvl, f"{where}: level {o[O_LEVEL]} != {lvl}")
                    _check(
                        o[O_INSTR] == i and o[O_SIDE] == side, f"{where}: wrong instr/side field"
                    )
                    _check(
                        o[O_PRICE] == levels[lvl, L_PRICE],
                        f"{where}: price {o[O_PRICE]} != level price {levels[lvl, L_PRICE]}",
                    )
                    _check(o[O_LEAVES] > 0, f"{where}: leaves {o[O_LEAVES]} <= 0")
                    want_vis = min(o[O_DISPLAY], o[O_LEAVES]) if o[O_DISPLAY] > 0 else o[O_LEAVES]
                    _check(
                        0 < o[O_VISIBLE] <= want_vis,
                        f"{where}: visible {o[O_VISIBLE]} not in (0, {want_vis}]",
                    )
                    total += int(o[O_LEAVES])
                    count += 1
                    prev = m
                    m = int(o[O_NEXT])
                _check(levels[lvl, L_TAIL] == prev, f"level {lvl}: tail != last order")
                _check(count > 0, f"instr {i} side {side}: empty level {lvl} kept")
                _check(
                    levels[lvl, L_COUNT] == count,
                    f"level {lvl}: count {levels[lvl, L_COUNT]} != {count} linked orders",
                )
                _check(
                    levels[lvl, L_QTY] == total,
                    f"level {lvl}: total {levels[lvl, L_QTY]} != sum of leaves {total}",
                )
                resting += count
        _check(
            not (best[BUY] and best[SELL] and best[BUY] >= best[SELL]),
            f"instr {i}: crossed book, bid {best[BUY]} >= ask {best[SELL]}",
        )
        nstop, prev = 0, -1
        m = int(inst[i, I_STOP_HEAD])
        while m >= 0:
            _check(m not in seen_slots, f"order slot {m} linked twice (stops of {i})")
            seen_slots.add(m)
            o = orders[m]
            _check(o[O_STATE] == ST_PENDING, f"stop oid {o[O_OID]}: state {o[O_STATE]}")
            _check(o[O_PREV] == prev, f"stop oid {o[O_OID]}: prev link broken")
            _check(o[O_INSTR] == i, f"stop oid {o[O_OID]}: instr {o[O_INSTR]} != {i}")
            _check(o[O_OTYPE] in (STOP, STOP_LIMIT), f"stop oid {o[O_OID]}: otype {o[O_OTYPE]}")
            nstop += 1
            prev = m
            m = int(o[O_NEXT])
        _check(inst[i, I_STOP_TAIL] == prev, f"instr {i}: stop tail broken")
        _check(inst[i, I_NSTOP] == nstop, f"instr {i}: stop count {inst[i, I_NSTOP]} != {nstop}")
    _check(meta[M_NRESTING] == resting, f"resting count {meta[M_NRESTING]} != {resting}")
    _check(meta[M_NLIVE] == len(seen_slots), f"live count {meta[M_NLIVE]} != {len(seen_slots)}")
    live = np.flatnonzero(orders[:, O_STATE] != ST_FREE)
    _check(
        set(live.tolist()) == seen_slots, "slots marked live differ from slots linked in the book"
    )
    # free lists
    free, s = 0, int(meta[M_FREE_ORDER])
    while s >= 0:
        _check(orders[s, O_STATE] == ST_FREE, f"free list holds live slot {s}")
        free += 1
        _check(free <= book.max_orders, "order free list has a cycle")
        s = int(orders[s, O_NEXT])
    _check(free + len(seen_slots) == book.max_orders, "order slots leaked from the free list")
    free, s = 0, int(meta[M_FREE_LEVEL])
    while s >= 0:
        _check(s not in seen_levels, f"free list holds live level {s}")
        free += 1
        _check(free <= book.max_orders, "level free list has a cycle")
        s = int(levels[s, L_HEAD])
    _check(free + len(seen_levels) == book.max_orders, "level slots leaked from the free list")
    # hash map
    hcap = int(meta[M_HEAP_BASE])
    mask, shift = int(meta[M_HMASK]), int(meta[M_HSHIFT])
    keys = index[:hcap, 0]
    occupied = np.flatnonzero(keys != _EMPTY)
    _check(
        len(occupied) == len(seen_slots), f"hash holds {len(occupied)} keys, {len(seen_slots)} live"
    )
    for pos in occupied.tolist():
        oid, slot = int(index[pos, 0]), int(index[pos, 1])
        _check(slot in seen_slots and orders[slot, O_OID] == oid, f"hash {oid} -> bad slot {slot}")
        j = _hash_home(oid, shift, mask)
        while j != pos:
            _check(keys[j] != _EMPTY, f"hash key {oid} unreachable: empty bucket {j} on its probe")
            j = (j + 1) & mask
    # expiry heap: ordered, and every live GTD order has an entry
    base, hn = hcap, int(meta[M_HEAP_N])
    _check(0 <= hn <= meta[M_HEAP_CAP], f"heap size {hn} outside capacity")
    heap = [(int(index[base + k, 0]), int(index[base + k, 1])) for k in range(hn)]
    for k in range(1, hn):
        _check(heap[(k - 1) // 2] <= heap[k], f"expiry heap order broken at {k}")
    entries = set(heap)
    for slot in seen_slots:
        if orders[slot, O_TIF] == GTD:
            key = (int(orders[slot, O_EXPIRE_TS]), int(orders[slot, O_OID]))
            _check(key in entries, f"GTD oid {key[1]} has no expiry heap entry")
