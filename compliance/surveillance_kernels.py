"""Trade surveillance kernels: every detector over a batch of event rows in one jitted call.

Everything here is a plain ``@njit(cache=True)`` function over preallocated int64 arrays; the
layouts are named by module-level int constants (numba reads globals as constants). The Python
wrapper (``compliance.surveillance.Surveillance``) owns the arrays, the configuration and I/O.

Inputs
------
``rows``    (n, R_NCOLS) int64 event rows (``R_*`` columns, ``K_*`` kinds), in time order.
``params``  (P_NCOLS,) int64: the detectors' parameters in ns / lots / ticks / percent.
``closes``  sorted session-close instants (ns) covering the batch (marking the close).

State (all capacities fixed; running out is a counter in ``glob``, never a crash)
-----
``pkeys`` / ``pairs``  open-addressed table keyed by (owner, instrument): wash, spoofing, layering
``wring``  (pairs, WR, W_NF) the last ``WR`` fills of each (owner, instrument)   (wash trades)
``lring``  (pairs, L_NF, LR) the last ``LR`` orders of each (owner, instrument)  (layering)
``akeys`` / ``accts``  table keyed by (account, instrument): order-to-trade, marking the close
``instr``  (instruments, IS_NCOLS) traded volume in the current close window
``blocks`` (instruments, MAXB, B_NF) working client block orders                 (front running)
``pending`` account slots with taker volume in the current close window
``glob``   (G_NCOLS,) cursor, close window, counters

Output: ``found`` (cap, F_NCOLS) finding rows. ``run`` returns ST_OK when every row was
consumed, or ST_FULL when ``found`` could not take another row's findings; ``glob[G_NEXT]`` is
then the row to resume from (the caller drains ``found`` and calls again).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.constants import R_CANCEL_REQUESTED, R_MASS_CANCEL

# -- ROW COLUMNS -----------------------------------------------------------------------------------

R_KIND = 0
R_TS = 1  # ns since the epoch
R_ACCOUNT = 2  # ReferenceData.account_index
R_OWNER = 3  # dense index of the beneficial owner
R_INSTR = 4  # Instrument.index
R_SIDE = 5  # 0 buy, 1 sell
R_OID = 6
R_EXEC = 7  # exec id of a FILL, else 0
R_QTY = 8  # NEW: qty; FILL: last qty; CANCEL / EXPIRE: qty taken off; REPLACE: new total qty
R_PRICE = 9  # NEW / CANCEL / EXPIRE / REPLACE: the order's price; FILL: the execution price
R_MAKER = 10  # FILL: 1 maker (resting), 0 taker (aggressive)
R_ORDER_QTY = 11  # the order's total qty: as entered for NEW, after any replace later
R_LEAVES = 12  # the order's leaves qty after the event (0 once it is done)
R_ORDER_TS = 13  # when the order arrived (its NEW row's ts)
R_CODE = 14  # CANCEL / EXPIRE: the RejectCode; REPLACE: 1 if time priority kept
R_NCOLS = 15

# -- ROW KINDS -------------------------------------------------------------------------------------

K_NEW = 0
K_FILL = 1
K_CANCEL = 2
K_REPLACE = 3
K_EXPIRE = 4
N_KINDS = 5

# -- DETECTORS (bit i of P_ENABLED enables detector i) ----------------------------------------------

D_WASH = 0
D_SPOOF = 1
D_LAYER = 2
D_CLOSE = 3
D_OTR = 4
D_FRONT = 5
N_DETECTORS = 6

# -- PARAMETERS ------------------------------------------------------------------------------------

P_N_ACCOUNTS = 0
P_N_OWNERS = 1
P_N_INSTR = 2
P_ENABLED = 3
P_WASH_WINDOW = 4  # ns
P_WASH_TICKS = 5  # max price difference of the two fills
P_SPOOF_QTY = 6  # min canceled qty
P_SPOOF_WINDOW = 7  # ns from the opposite fill to the cancel
P_LAYER_ORDERS = 8  # min stacked orders
P_LAYER_LEVELS = 9  # min distinct prices among them
P_LAYER_STACK_WINDOW = 10  # ns: stacked orders arrived at most this long before the fill
P_LAYER_CANCEL_WINDOW = 11  # ns after the fill in which they must be canceled
P_LAYER_CANCEL_PCT = 12  # min share of the stacked orders canceled, percent
P_CLOSE_WINDOW = 13  # ns before the close
P_CLOSE_SHARE_PCT = 14  # min share of the instrument's window volume, percent (0 = off)
P_CLOSE_COUNT = 15  # min aggressive executions (0 = off)
P_CLOSE_QTY = 16  # min aggressive qty
P_OTR_BUCKET = 17  # ns per bucket (window / OTR_BUCKETS)
P_OTR_MIN = 18  # min order messages in the window
P_OTR_RATIO = 19  # fires when messages > ratio * executions
P_FRONT_QTY = 20  # block size (lots)
P_NCOLS = 21

# -- STATUS CODES ----------------------------------------------------------------------------------

ST_OK = 0
ST_FULL = 1  # ``found`` is full: drain it and call again from glob[G_NEXT]

# -- SENTINELS AND CAPACITIES ----------------------------------------------------------------------

TS_LIMIT = 2**61  # rows' ts must lie in [0, TS_LIMIT): up to the year 2043
NEVER = -TS_LIMIT  # "no such time": far enough back that ts - NEVER never overflows
EMPTY = -1  # a free key in a hash table
NO_ID = -1
WR = 8  # fills remembered per (owner, instrument) for wash trades
LR = 32  # orders remembered per (owner, instrument) for layering
OTR_BUCKETS = 10  # the order-to-trade window is this many buckets
EVID = 8  # evidence ids kept per account slot
MAXB = 4  # working client blocks tracked per instrument
MAXREP = 8  # suspects reported per block
F_EVID = 16  # order ids and exec ids carried by one finding
MAX_PER_ROW = 2 + MAXB + 2  # the most findings one row can raise (wash, spoof/layer, front, otr)

# -- (owner, instrument) SLOT COLUMNS ----------------------------------------------------------------

PS_WASH_LAST = 0  # ts of the last wash match (the episode runs while matches keep coming)
PS_WRING_HEAD = 1
PS_LAST_FILL = 2  # [ts, oid, exec] of the last fill of side 0 at 2..4, of side 1 at 5..7
PS_SPOOF_EXEC = 8  # the fill whose spoofing episode was reported
PS_LRING_HEAD = 9
PS_LAYER_ARMED = 10
PS_LAYER_SIDE = 11  # the stacked side
PS_LAYER_FILL_TS = 12
PS_LAYER_FILL_OID = 13
PS_LAYER_FILL_EXEC = 14
PS_LAYER_STACKED = 15
PS_LAYER_CANCELED = 16
PS_NCOLS = 17

W_USED = 0
W_TS = 1
W_SIDE = 2
W_OID = 3
W_EXEC = 4
W_PRICE = 5
W_ACCOUNT = 6
W_QTY = 7
W_NF = 8

L_STATE = 0  # 0 free, 1 working, 2 done
L_OID = 1
L_TS = 2
L_SIDE = 3
L_PRICE = 4
L_STACKED = 5
L_CANCELED = 6
L_NF = 7

LIVE = 1
DONE = 2

# -- (account, instrument) SLOT COLUMNS --------------------------------------------------------------

AS_ACCOUNT = 0
AS_OWNER = 1
AS_INSTR = 2
AS_OTR_BID = 3  # bucket numbers, OTR_BUCKETS columns
AS_OTR_MSG = AS_OTR_BID + OTR_BUCKETS  # order messages per bucket
AS_OTR_TRD = AS_OTR_MSG + OTR_BUCKETS  # executions per bucket
AS_OTR_LAST_FIRE = AS_OTR_TRD + OTR_BUCKETS
AS_OTR_HEAD = AS_OTR_LAST_FIRE + 1
AS_OTR_OIDS = AS_OTR_HEAD + 1  # the last EVID new orders' ids (ring)
AS_MC_CLOSE = AS_OTR_OIDS + EVID  # the close the accumulation below belongs to
AS_MC_QTY = AS_MC_CLOSE + 1
AS_MC_COUNT = AS_MC_QTY + 1
AS_MC_OIDS = AS_MC_COUNT + 1  # the first EVID aggressive executions: order ids
AS_MC_EXECS = AS_MC_OIDS + EVID  # and exec ids
AS_NCOLS = AS_MC_EXECS + EVID

IS_VOL_CLOSE = 0
IS_VOL_QTY = 1
IS_NCOLS = 2

B_ACTIVE = 0
B_OID = 1
B_OWNER = 2
B_ACCOUNT = 3
B_SIDE = 4
B_ARRIVAL = 5
B_QTY = 6
B_NREP = 7
B_REP = 8  # accounts already reported against this block, MAXREP columns
B_NF = B_REP + MAXREP

# -- GLOBALS -----------------------------------------------------------------------------------------

G_NEXT = 0  # the row to resume from
G_NFOUND = 1  # findings written by this call
G_CUR_CLOSE = 2  # the close whose window ``pending`` belongs to
G_NPENDING = 3
G_PAIRS_USED = 4
G_ACCTS_USED = 5
G_ROWS = 6  # rows consumed, ever
G_BAD_ROWS = 7  # rows outside the column domains (skipped)
G_PAIRS_FULL = 8  # rows whose (owner, instrument) found no slot
G_ACCTS_FULL = 9  # rows whose (account, instrument) found no slot
G_BLOCKS_FULL = 10  # client blocks not tracked: MAXB already working in the instrument
G_REPORTS_FULL = 11  # front-running suspects not reported: MAXREP already reported
G_NCOLS = 12

# -- FINDING COLUMNS ---------------------------------------------------------------------------------

F_DET = 0
F_TS = 1
F_ACCOUNT = 2
F_OWNER = 3
F_INSTR = 4
F_A = 5  # F_A..F_F: the detector's figures (see compliance.surveillance for each)
F_B = 6
F_C = 7
F_D = 8
F_E = 9
F_F = 10
F_NOIDS = 11
F_NEXECS = 12
F_OIDS = 13
F_EXECS = F_OIDS + F_EVID
F_NCOLS = F_EXECS + F_EVID


# -- TABLES ------------------------------------------------------------------------------------------


@njit(cache=True)
def _slot(keys, key, glob, used_col):
    """The slot of ``key``, claimed if new; -1 when the table is full. O(1) expected."""
    cap = keys.shape[0]
    mask = cap - 1
    h = (key * 2654435761) & mask
    for _ in range(cap):
        k = keys[h]
        if k == key:
            return h
        if k == EMPTY:
            keys[h] = key
            glob[used_col] += 1
            return h
        h = (h + 1) & mask
    return -1


@njit(cache=True)
def _emit(found, glob, det, ts, account, owner, instr, a, b, c, d, e, f):
    """Start a finding row; returns its index (the caller adds the evidence ids)."""
    k = glob[G_NFOUND]
    glob[G_NFOUND] = k + 1
    found[k, :] = 0
    found[k, F_DET] = det
    found[k, F_TS] = ts
    found[k, F_ACCOUNT] = account
    found[k, F_OWNER] = owner
    found[k, F_INSTR] = instr
    found[k, F_A] = a
    found[k, F_B] = b
    found[k, F_C] = c
    found[k, F_D] = d
    found[k, F_E] = e
    found[k, F_F] = f
    return k


@njit(cache=True)
def _add_oid(found, k, oid):
    n = found[k, F_NOIDS]
    if n < F_EVID:
        found[k, F_OIDS + n] = oid
        found[k, F_NOIDS] = n + 1


@njit(cache=True)
def _add_exec(found, k, exec_id):
    n = found[k, F_NEXECS]
    if n < F_EVID:
        found[k, F_EXECS + n] = exec_id
        found[k, F_NEXECS] = n + 1


@njit(cache=True)
def _valid(rows, i, params):
    kind = rows[i, R_KIND]
    side = rows[i, R_SIDE]
    return (
        0 <= kind < N_KINDS
        and 0 <= rows[i, R_TS] < TS_LIMIT
        and 0 <= side <= 1
        and 0 <= rows[i, R_ACCOUNT] < params[P_N_ACCOUNTS]
        and 0 <= rows[i, R_OWNER] < params[P_N_OWNERS]
        and 0 <= rows[i, R_INSTR] < params[P_N_INSTR]
    )


# -- 1 WASH TRADES -----------------------------------------------------------------------------------


@njit(cache=True)
def _wash(rows, i, params, p, pairs, wring, found, glob):
    """A fill of the owner opposite a fill of the same owner within the window and price band.
    The episode lasts while such matches keep coming within the window of the last one."""
    ts = rows[i, R_TS]
    side = rows[i, R_SIDE]
    price = rows[i, R_PRICE]
    window = params[P_WASH_WINDOW]
    match = -1
    head = pairs[p, PS_WRING_HEAD]
    for j in range(WR):  # newest first
        e = (head - 1 - j) % WR
        if wring[p, e, W_USED] == 0 or wring[p, e, W_SIDE] == side:
            continue
        if wring[p, e, W_OID] == rows[i, R_OID]:
            continue
        dt = ts - wring[p, e, W_TS]
        if dt < 0 or dt > window or abs(price - wring[p, e, W_PRICE]) > params[P_WASH_TICKS]:
            continue
        match = e
        break
    if match >= 0:
        last = pairs[p, PS_WASH_LAST]
        if not (0 <= ts - last <= window):
            k = _emit(found, glob, D_WASH, ts, rows[i, R_ACCOUNT], rows[i, R_OWNER], rows[i, R_INSTR],
                      wring[p, match, W_ACCOUNT], rows[i, R_QTY], wring[p, match, W_QTY], price,
                      wring[p, match, W_PRICE], ts - wring[p, match, W_TS])
            _add_oid(found, k, wring[p, match, W_OID])
            _add_oid(found, k, rows[i, R_OID])
            _add_exec(found, k, wring[p, match, W_EXEC])
            _add_exec(found, k, rows[i, R_EXEC])
        pairs[p, PS_WASH_LAST] = ts
    e = head % WR
    wring[p, e, W_USED] = 1
    wring[p, e, W_TS] = ts
    wring[p, e, W_SIDE] = side
    wring[p, e, W_OID] = rows[i, R_OID]
    wring[p, e, W_EXEC] = rows[i, R_EXEC]
    wring[p, e, W_PRICE] = price
    wring[p, e, W_ACCOUNT] = rows[i, R_ACCOUNT]
    wring[p, e, W_QTY] = rows[i, R_QTY]
    pairs[p, PS_WRING_HEAD] = (head + 1) % WR


# -- 2 SPOOFING --------------------------------------------------------------------------------------


@njit(cache=True)
def _note_fill(rows, i, p, pairs):
    base = PS_LAST_FILL + 3 * rows[i, R_SIDE]
    pairs[p, base] = rows[i, R_TS]
    pairs[p, base + 1] = rows[i, R_OID]
    pairs[p, base + 2] = rows[i, R_EXEC]


@njit(cache=True)
def _spoof(rows, i, params, p, pairs, found, glob):
    """A voluntary cancel of >= min qty, of an order that was working before an opposite-side
    fill of the same owner, within the window after that fill. Once per fill."""
    if rows[i, R_QTY] < params[P_SPOOF_QTY]:
        return
    base = PS_LAST_FILL + 3 * (1 - rows[i, R_SIDE])
    fill_ts = pairs[p, base]
    exec_id = pairs[p, base + 2]
    ts = rows[i, R_TS]
    if not (0 <= ts - fill_ts <= params[P_SPOOF_WINDOW]) or rows[i, R_ORDER_TS] > fill_ts:
        return
    if pairs[p, PS_SPOOF_EXEC] == exec_id:
        return
    pairs[p, PS_SPOOF_EXEC] = exec_id
    k = _emit(found, glob, D_SPOOF, ts, rows[i, R_ACCOUNT], rows[i, R_OWNER], rows[i, R_INSTR],
              rows[i, R_QTY], rows[i, R_ORDER_QTY], rows[i, R_PRICE], ts - fill_ts,
              ts - rows[i, R_ORDER_TS], rows[i, R_SIDE])
    _add_oid(found, k, rows[i, R_OID])
    _add_oid(found, k, pairs[p, base + 1])
    _add_exec(found, k, exec_id)


# -- 3 LAYERING --------------------------------------------------------------------------------------


@njit(cache=True)
def _layer_find(lring, p, oid):
    for j in range(LR):
        if lring[p, L_OID, j] == oid and lring[p, L_STATE, j] != 0:
            return j
    return -1


@njit(cache=True)
def _layer_disarm(pairs, lring, p):
    pairs[p, PS_LAYER_ARMED] = 0
    for j in range(LR):
        lring[p, L_STACKED, j] = 0
        lring[p, L_CANCELED, j] = 0


@njit(cache=True)
def _layer_new(rows, i, p, pairs, lring):
    head = pairs[p, PS_LRING_HEAD]
    e = head % LR
    lring[p, L_STATE, e] = LIVE
    lring[p, L_OID, e] = rows[i, R_OID]
    lring[p, L_TS, e] = rows[i, R_TS]
    lring[p, L_SIDE, e] = rows[i, R_SIDE]
    lring[p, L_PRICE, e] = rows[i, R_PRICE]
    lring[p, L_STACKED, e] = 0
    lring[p, L_CANCELED, e] = 0
    pairs[p, PS_LRING_HEAD] = (head + 1) % LR


@njit(cache=True)
def _layer_fill(rows, i, params, p, pairs, lring):
    """Arm when the side opposite this fill holds >= min orders at >= min levels that arrived
    within the stack window, and the fill's own side does not (a two-sided quoter is no layerer)."""
    ts = rows[i, R_TS]
    oid = rows[i, R_OID]
    j = _layer_find(lring, p, oid)
    if j >= 0 and rows[i, R_LEAVES] <= 0:
        lring[p, L_STATE, j] = DONE
    if pairs[p, PS_LAYER_ARMED] == 1:
        if 0 <= ts - pairs[p, PS_LAYER_FILL_TS] <= params[P_LAYER_CANCEL_WINDOW]:
            return  # an episode is under way
        _layer_disarm(pairs, lring, p)
    stacked_side = 1 - rows[i, R_SIDE]
    window = params[P_LAYER_STACK_WINDOW]
    need = params[P_LAYER_ORDERS]
    n_stack = 0
    n_own = 0
    for j in range(LR):
        if lring[p, L_STATE, j] != LIVE or not (0 <= ts - lring[p, L_TS, j] <= window):
            continue
        if lring[p, L_SIDE, j] == stacked_side:
            n_stack += 1
        elif lring[p, L_OID, j] != oid:
            n_own += 1
    if n_stack < need or n_own >= need:
        return
    n_levels = 0
    for j in range(LR):  # distinct prices among the stacked orders, O(LR^2) only when armed
        if (lring[p, L_STATE, j] != LIVE or lring[p, L_SIDE, j] != stacked_side
                or not (0 <= ts - lring[p, L_TS, j] <= window)):
            continue
        new_level = True
        for q in range(j):
            if (lring[p, L_STATE, q] == LIVE and lring[p, L_SIDE, q] == stacked_side
                    and 0 <= ts - lring[p, L_TS, q] <= window
                    and lring[p, L_PRICE, q] == lring[p, L_PRICE, j]):
                new_level = False
                break
        if new_level:
            n_levels += 1
    if n_levels < params[P_LAYER_LEVELS]:
        return
    for j in range(LR):
        lring[p, L_CANCELED, j] = 0
        lring[p, L_STACKED, j] = 1 if (
            lring[p, L_STATE, j] == LIVE and lring[p, L_SIDE, j] == stacked_side
            and 0 <= ts - lring[p, L_TS, j] <= window) else 0
    pairs[p, PS_LAYER_ARMED] = 1
    pairs[p, PS_LAYER_SIDE] = stacked_side
    pairs[p, PS_LAYER_FILL_TS] = ts
    pairs[p, PS_LAYER_FILL_OID] = oid
    pairs[p, PS_LAYER_FILL_EXEC] = rows[i, R_EXEC]
    pairs[p, PS_LAYER_STACKED] = n_stack
    pairs[p, PS_LAYER_CANCELED] = 0


@njit(cache=True)
def _layer_gone(rows, i, params, p, pairs, lring, voluntary, found, glob):
    """An order left the book; a voluntary cancel of a stacked order within the cancel window
    counts, and the episode fires once the canceled share reaches the threshold."""
    j = _layer_find(lring, p, rows[i, R_OID])
    if j < 0:
        return
    lring[p, L_STATE, j] = DONE
    if pairs[p, PS_LAYER_ARMED] != 1 or lring[p, L_STACKED, j] != 1 or not voluntary:
        return
    ts = rows[i, R_TS]
    if not (0 <= ts - pairs[p, PS_LAYER_FILL_TS] <= params[P_LAYER_CANCEL_WINDOW]):
        _layer_disarm(pairs, lring, p)
        return
    lring[p, L_CANCELED, j] = 1
    canceled = pairs[p, PS_LAYER_CANCELED] + 1
    pairs[p, PS_LAYER_CANCELED] = canceled
    stacked = pairs[p, PS_LAYER_STACKED]
    if canceled * 100 < params[P_LAYER_CANCEL_PCT] * stacked:
        return
    k = _emit(found, glob, D_LAYER, ts, rows[i, R_ACCOUNT], rows[i, R_OWNER], rows[i, R_INSTR],
              stacked, canceled, pairs[p, PS_LAYER_SIDE], ts - pairs[p, PS_LAYER_FILL_TS], 0, 0)
    _add_oid(found, k, pairs[p, PS_LAYER_FILL_OID])
    _add_exec(found, k, pairs[p, PS_LAYER_FILL_EXEC])
    for q in range(LR):
        if lring[p, L_CANCELED, q] == 1:
            _add_oid(found, k, lring[p, L_OID, q])
    _layer_disarm(pairs, lring, p)


# -- 4 MARKING THE CLOSE -----------------------------------------------------------------------------


@njit(cache=True)
def _close_of(closes, ts, window):
    """The close whose window [close - window, close) holds ts, or NEVER. O(log closes)."""
    j = np.searchsorted(closes, ts, side="right")
    if j < closes.shape[0] and closes[j] - window <= ts:
        return closes[j]
    return NEVER


@njit(cache=True)
def _close_add(rows, i, a, close, accts, instr, pending, glob):
    ins = rows[i, R_INSTR]
    qty = rows[i, R_QTY]
    if instr[ins, IS_VOL_CLOSE] != close:
        instr[ins, IS_VOL_CLOSE] = close
        instr[ins, IS_VOL_QTY] = 0
    instr[ins, IS_VOL_QTY] += qty
    if a < 0:
        return
    if accts[a, AS_MC_CLOSE] != close:
        accts[a, AS_MC_CLOSE] = close
        accts[a, AS_MC_QTY] = 0
        accts[a, AS_MC_COUNT] = 0
        n = glob[G_NPENDING]
        if n < pending.shape[0]:
            pending[n] = a
            glob[G_NPENDING] = n + 1
    count = accts[a, AS_MC_COUNT]
    if count < EVID:
        accts[a, AS_MC_OIDS + count] = rows[i, R_OID]
        accts[a, AS_MC_EXECS + count] = rows[i, R_EXEC]
    accts[a, AS_MC_QTY] += qty
    accts[a, AS_MC_COUNT] = count + 1


@njit(cache=True)
def _close_evaluate(params, accts, instr, pending, glob, found):
    """Judge every account with aggressive volume in the window that has ended. Returns False
    when ``found`` filled up first (the rest stay pending)."""
    close = glob[G_CUR_CLOSE]
    share_pct = params[P_CLOSE_SHARE_PCT]
    min_count = params[P_CLOSE_COUNT]
    while glob[G_NPENDING] > 0:
        if glob[G_NFOUND] >= found.shape[0]:
            return False
        n = glob[G_NPENDING] - 1
        glob[G_NPENDING] = n
        a = pending[n]
        if accts[a, AS_MC_CLOSE] != close:
            continue
        ins = accts[a, AS_INSTR]
        qty = accts[a, AS_MC_QTY]
        count = accts[a, AS_MC_COUNT]
        vol = instr[ins, IS_VOL_QTY] if instr[ins, IS_VOL_CLOSE] == close else qty
        by_share = share_pct > 0 and qty * 100 >= share_pct * vol
        by_count = min_count > 0 and count >= min_count
        if qty < params[P_CLOSE_QTY] or not (by_share or by_count):
            continue
        bps = qty * 10_000 // vol if vol > 0 else 0
        k = _emit(found, glob, D_CLOSE, close, accts[a, AS_ACCOUNT], accts[a, AS_OWNER], ins,
                  qty, vol, count, bps, params[P_CLOSE_WINDOW], 0)
        for q in range(min(count, EVID)):
            _add_oid(found, k, accts[a, AS_MC_OIDS + q])
            _add_exec(found, k, accts[a, AS_MC_EXECS + q])
    return True


# -- 5 ORDER-TO-TRADE RATIO --------------------------------------------------------------------------


@njit(cache=True)
def _otr_add(ts, a, accts, params, messages, trades):
    width = params[P_OTR_BUCKET]
    b = ts // width
    j = b % OTR_BUCKETS
    if accts[a, AS_OTR_BID + j] != b:
        accts[a, AS_OTR_BID + j] = b
        accts[a, AS_OTR_MSG + j] = 0
        accts[a, AS_OTR_TRD + j] = 0
    accts[a, AS_OTR_MSG + j] += messages
    accts[a, AS_OTR_TRD + j] += trades
    return b


@njit(cache=True)
def _otr_check(rows, i, a, b, accts, params, found, glob):
    """Messages (new, replace, voluntary cancel) against executions over the last OTR_BUCKETS
    buckets; fires when messages >= min and messages > ratio * executions, once per window."""
    msgs = 0
    trades = 0
    for j in range(OTR_BUCKETS):
        age = b - accts[a, AS_OTR_BID + j]
        if 0 <= age < OTR_BUCKETS:
            msgs += accts[a, AS_OTR_MSG + j]
            trades += accts[a, AS_OTR_TRD + j]
    if msgs < params[P_OTR_MIN] or msgs <= params[P_OTR_RATIO] * trades:
        return
    ts = rows[i, R_TS]
    window = params[P_OTR_BUCKET] * OTR_BUCKETS
    if 0 <= ts - accts[a, AS_OTR_LAST_FIRE] < window:
        return
    accts[a, AS_OTR_LAST_FIRE] = ts
    k = _emit(found, glob, D_OTR, ts, rows[i, R_ACCOUNT], rows[i, R_OWNER], rows[i, R_INSTR],
              msgs, trades, window, 0, 0, 0)
    head = accts[a, AS_OTR_HEAD]
    for q in range(EVID):
        oid = accts[a, AS_OTR_OIDS + (head + q) % EVID]
        if oid != 0:
            _add_oid(found, k, oid)


# -- 6 FRONT RUNNING ---------------------------------------------------------------------------------


@njit(cache=True)
def _front_new(rows, i, params, is_client, blocks, glob):
    if is_client[rows[i, R_ACCOUNT]] == 0 or rows[i, R_QTY] < params[P_FRONT_QTY]:
        return
    ins = rows[i, R_INSTR]
    for s in range(MAXB):
        if blocks[ins, s, B_ACTIVE] == 0:
            blocks[ins, s, :] = 0
            blocks[ins, s, B_ACTIVE] = 1
            blocks[ins, s, B_OID] = rows[i, R_OID]
            blocks[ins, s, B_OWNER] = rows[i, R_OWNER]
            blocks[ins, s, B_ACCOUNT] = rows[i, R_ACCOUNT]
            blocks[ins, s, B_SIDE] = rows[i, R_SIDE]
            blocks[ins, s, B_ARRIVAL] = rows[i, R_TS]
            blocks[ins, s, B_QTY] = rows[i, R_QTY]
            return
    glob[G_BLOCKS_FULL] += 1


@njit(cache=True)
def _front_gone(rows, i, blocks):
    ins = rows[i, R_INSTR]
    for s in range(MAXB):
        if blocks[ins, s, B_ACTIVE] == 1 and blocks[ins, s, B_OID] == rows[i, R_OID]:
            blocks[ins, s, B_ACTIVE] = 0


@njit(cache=True)
def _front_fill(rows, i, is_client, blocks, found, glob):
    """A non-client account of another owner executes on the block's side, with an order that
    arrived after the block, while the block works (up to its last execution)."""
    ins = rows[i, R_INSTR]
    oid = rows[i, R_OID]
    for s in range(MAXB):
        if blocks[ins, s, B_ACTIVE] == 1 and blocks[ins, s, B_OID] == oid:
            if rows[i, R_LEAVES] <= 0:
                blocks[ins, s, B_ACTIVE] = 0  # its last execution
            return
    account = rows[i, R_ACCOUNT]
    if is_client[account] != 0:
        return
    ts = rows[i, R_TS]
    for s in range(MAXB):
        if (blocks[ins, s, B_ACTIVE] != 1 or blocks[ins, s, B_SIDE] != rows[i, R_SIDE]
                or blocks[ins, s, B_OWNER] == rows[i, R_OWNER]
                or rows[i, R_ORDER_TS] < blocks[ins, s, B_ARRIVAL] or ts < blocks[ins, s, B_ARRIVAL]):
            continue
        nrep = blocks[ins, s, B_NREP]
        seen = False
        for q in range(nrep):
            if blocks[ins, s, B_REP + q] == account:
                seen = True
        if seen:
            continue
        if nrep >= MAXREP:
            glob[G_REPORTS_FULL] += 1
            continue
        blocks[ins, s, B_REP + nrep] = account
        blocks[ins, s, B_NREP] = nrep + 1
        k = _emit(found, glob, D_FRONT, ts, account, rows[i, R_OWNER], ins,
                  blocks[ins, s, B_ACCOUNT], blocks[ins, s, B_QTY], rows[i, R_QTY], rows[i, R_PRICE],
                  ts - blocks[ins, s, B_ARRIVAL], rows[i, R_SIDE])
        _add_oid(found, k, blocks[ins, s, B_OID])
        _add_oid(found, k, oid)
        _add_exec(found, k, rows[i, R_EXEC])


# -- THE BATCH ---------------------------------------------------------------------------------------


@njit(cache=True)
def run(rows, now, params, closes, is_client, pkeys, pairs, wring, lring, akeys, accts, instr,
        blocks, pending, glob, found):
    """Run every enabled detector over rows[glob[G_NEXT]:], then close any session window that
    ``now`` has passed. O(rows · (WR + LR + MAXB)). Returns ST_OK or ST_FULL (see module doc)."""
    glob[G_NFOUND] = 0
    enabled = params[P_ENABLED]
    on_wash = (enabled >> D_WASH) & 1
    on_spoof = (enabled >> D_SPOOF) & 1
    on_layer = (enabled >> D_LAYER) & 1
    on_close = (enabled >> D_CLOSE) & 1
    on_otr = (enabled >> D_OTR) & 1
    on_front = (enabled >> D_FRONT) & 1
    n_instr = params[P_N_INSTR]
    cap = found.shape[0] - MAX_PER_ROW
    n = rows.shape[0]
    i = glob[G_NEXT]
    while i < n:
        if not _valid(rows, i, params):
            glob[G_ROWS] += 1
            glob[G_BAD_ROWS] += 1
            i += 1
            continue
        ts = rows[i, R_TS]
        if glob[G_NPENDING] > 0 and ts >= glob[G_CUR_CLOSE]:
            if not _close_evaluate(params, accts, instr, pending, glob, found):
                glob[G_NEXT] = i
                return ST_FULL
        if glob[G_NFOUND] > cap:
            glob[G_NEXT] = i
            return ST_FULL
        glob[G_ROWS] += 1
        kind = rows[i, R_KIND]
        ins = rows[i, R_INSTR]
        p = _slot(pkeys, rows[i, R_OWNER] * n_instr + ins, glob, G_PAIRS_USED)
        a = _slot(akeys, rows[i, R_ACCOUNT] * n_instr + ins, glob, G_ACCTS_USED)
        if p < 0:
            glob[G_PAIRS_FULL] += 1
        if a < 0:
            glob[G_ACCTS_FULL] += 1
        else:
            accts[a, AS_ACCOUNT] = rows[i, R_ACCOUNT]
            accts[a, AS_OWNER] = rows[i, R_OWNER]
            accts[a, AS_INSTR] = ins
        voluntary = rows[i, R_CODE] == R_CANCEL_REQUESTED or rows[i, R_CODE] == R_MASS_CANCEL
        if kind == K_NEW:
            if on_layer and p >= 0:
                _layer_new(rows, i, p, pairs, lring)
            if on_front:
                _front_new(rows, i, params, is_client, blocks, glob)
            if on_otr and a >= 0:
                head = accts[a, AS_OTR_HEAD]
                accts[a, AS_OTR_OIDS + head] = rows[i, R_OID]
                accts[a, AS_OTR_HEAD] = (head + 1) % EVID
                b = _otr_add(ts, a, accts, params, 1, 0)
                _otr_check(rows, i, a, b, accts, params, found, glob)
        elif kind == K_FILL:
            if p >= 0:
                if on_wash:
                    _wash(rows, i, params, p, pairs, wring, found, glob)
                if on_spoof:
                    _note_fill(rows, i, p, pairs)
                if on_layer:
                    _layer_fill(rows, i, params, p, pairs, lring)
            if on_otr and a >= 0:
                _otr_add(ts, a, accts, params, 0, 1)
            if on_close and rows[i, R_MAKER] == 0:
                close = _close_of(closes, ts, params[P_CLOSE_WINDOW])
                # A later close than the current one means ts passed the current close, so its
                # window was judged at the top of the loop; an earlier one means time went back.
                if close != NEVER and close > glob[G_CUR_CLOSE]:
                    glob[G_CUR_CLOSE] = close
                if close != NEVER and close == glob[G_CUR_CLOSE]:
                    _close_add(rows, i, a, close, accts, instr, pending, glob)
            if on_front:
                _front_fill(rows, i, is_client, blocks, found, glob)
        elif kind == K_CANCEL or kind == K_EXPIRE:
            if p >= 0:
                if on_spoof and kind == K_CANCEL and voluntary:
                    _spoof(rows, i, params, p, pairs, found, glob)
                if on_layer:
                    _layer_gone(rows, i, params, p, pairs, lring, voluntary and kind == K_CANCEL,
                                found, glob)
            if on_otr and a >= 0 and kind == K_CANCEL and voluntary:
                b = _otr_add(ts, a, accts, params, 1, 0)
                _otr_check(rows, i, a, b, accts, params, found, glob)
            if on_front:
                _front_gone(rows, i, blocks)
        else:  # K_REPLACE
            if on_layer and p >= 0:
                j = _layer_find(lring, p, rows[i, R_OID])
                if j >= 0:
                    lring[p, L_PRICE, j] = rows[i, R_PRICE]
            if on_otr and a >= 0:
                b = _otr_add(ts, a, accts, params, 1, 0)
                _otr_check(rows, i, a, b, accts, params, found, glob)
        i += 1
    glob[G_NEXT] = n
    if glob[G_NPENDING] > 0 and now >= glob[G_CUR_CLOSE]:
        if not _close_evaluate(params, accts, instr, pending, glob, found):
            return ST_FULL
    return ST_OK

