"""The jitted pre-trade checks: limit tables, throttle windows and exposure over numpy arrays.

Every array a check reads sits in one ``RiskState`` structref, so a check costs one argument to
unbox instead of twenty (numba unboxes each array argument at ~75 ns). The portfolio's arrays are
held by reference, not copied: ``Portfolio`` mutates them in place, so the checks always see the
current positions, working lots, cash and prices.

Functions here never raise and never allocate on the per-order path; they return an int code
(``OK`` or a ``RejectCode.RISK_*`` value) and leave the figures a refusal's text needs in
``state.out`` (int64; the exposure figures also in ``state.outf``, float64).

Exposure is O(1) per order: the state caches, per account, the sums the exposure check needs
(see EXPOSURE CACHE below), kept by ``touch_cell`` / ``reprice`` / ``refresh`` and read by
``exposure``, which adds only the checked order's cell delta.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.experimental import structref

from engine.constants import BUY, LIMIT, MARKET, STOP, STOP_LIMIT

# -- CODES (mirror RejectCode.RISK_*; checked in risk.engine) -------------------------------------

OK = 0
R_DENIED = 2000
R_MAX_ORDER_QTY = 2001
R_MAX_ORDER_NOTIONAL = 2002
R_PRICE_COLLAR = 2003
R_NO_REFERENCE_PRICE = 2004
R_POSITION_LIMIT = 2005
R_GROSS_EXPOSURE = 2006
R_NET_EXPOSURE = 2007
R_BUYING_POWER = 2008
R_ORDER_RATE = 2009
R_MODIFY_RATE = 2010
R_KILL_SWITCH = 2011
R_HALTED = 2012
R_REDUCE_ONLY = 2013
R_NO_LIMIT = 2014
R_NO_FX_RATE = 2015

# -- TRADING STATES (ordered: the most restrictive of the rows that apply wins) -----------------

ACTIVE = 0
REDUCING = 1
HALTED = 2

# -- LIMIT ROW COLUMNS (per account × instrument; -1 = not set at this level) ---------------------

L_MAX_QTY = 0  # lots
L_MAX_NOTIONAL = 1  # units of 10**-NOTIONAL_DIGITS of the instrument's currency
L_COLLAR_BPS = 2  # basis points off the reference price
L_MAX_POSITION = 3  # lots, absolute
N_LIMIT_COLS = 4
UNSET = -1
NOTIONAL_DIGITS = 4  # notional limits are kept at this fixed scale, whatever the currency

# -- ACCOUNT COLUMNS (resolved: the account's row, else the "*" row; -1 = none) ----------------

A_KILL = 0
A_STATE = 1
A_MAX_GROSS = 2  # minor units of the base currency
A_MAX_NET = 3
A_ORDER_RATE = 4  # commands per window
A_MODIFY_RATE = 5
A_BASE = 6  # base currency index
N_ACCOUNT_COLS = 7

# -- INSTRUMENT COLUMNS ----------------------------------------------------------------------

I_STATE = 0
I_CCY = 1
I_NUM = 2  # minor units per tick·lot = NUM / DEN (exact)
I_DEN = 3
I_NSCALE = 4  # 10 ** (NOTIONAL_DIGITS - minor digits of the currency)
N_INST_COLS = 5

# -- GLOBAL COLUMNS --------------------------------------------------------------------------

G_KILL = 0
G_STATE = 1
G_WINDOW_NS = 2
G_ALLOW_NO_REF = 3
G_USER_ORDER_RATE = 4  # the "*" user's limits, for users not registered yet
G_USER_MODIFY_RATE = 5
G_N_ACCOUNTS = 6
G_USER_CAP = 7  # rows reserved for users (windows: see entity layout)
G_CELL_CAP = 8  # the largest cached cell term (QSCALE units) that keeps every sum inside int64
N_GLOBAL_COLS = 9

# -- USER COLUMNS ----------------------------------------------------------------------------

U_KILL = 0
U_ORDER_RATE = 1
U_MODIFY_RATE = 2
N_USER_COLS = 3

# -- THROTTLE WINDOWS ------------------------------------------------------------------------
# One ring of timestamps per entity; entity rows: [0, A) account submits, [A, 2A) account
# modifies, [2A, 2A + U) user submits, [2A + U, 2A + 2U) user modifies (U = G_USER_CAP).

W_OFF = 0  # start of the entity's ring in ``ring``
W_CAP = 1  # ring length = the entity's limit (commands per window)
W_HEAD = 2  # next slot to write (the oldest entry once the ring is full)
W_COUNT = 3  # entries held, <= W_CAP
N_WINDOW_COLS = 4

# -- OUT COLUMNS (figures for the refusal text) -----------------------------------------------

O_VALUE = 0  # the projected value that broke the limit
O_LIMIT = 1
O_INSTRUMENT = 2  # which instrument lacked a price or FX rate
O_REF = 3  # reference price used
O_WHICH = 4  # which limit / entity: see risk.engine
O_GROSS = 5  # projected gross exposure in 1/O_EXPO_SCALE base minor units (saturated)
O_NET = 6  # projected net exposure, likewise
O_POSITION = 7  # the cell before the order: position, working buy and sell lots
O_WORKING_BUY = 8
O_WORKING_SELL = 9
O_EXPO_SCALE = 10  # QSCALE (the exact integer sums) or 1 (the float scan of HUGE cells)
N_OUT = 11

W_ACCOUNT = 0
W_USER = 1

K_SUBMIT = 0
K_MODIFY = 1

SATURATED = 2**62  # a notional too large for int64 arithmetic: exceeds every limit

# -- EXPOSURE CACHE ------------------------------------------------------------------------------
# Per account × instrument the lots last valued, L = position + working buys and
# S = position - working sells (``c_long``, ``c_short``); per instrument the mark they were valued
# at (``mark``: the reference price at the last reprice/refresh, 0 = none); per currency pair the
# FX rate (``cfx``: ``Portfolio.fx`` at the last refresh). Per account (``expo``) the exact
# integer sums over its held cells of each cell's terms, each term rounded to 1/QSCALE of a base
# minor unit: gross max(|L|, |S|) × v, long L × v, short S × v (v = one lot at the mark, in base
# minor units); and counts of held cells that cannot be valued (no mark, no FX) or whose term is
# too large for the sums (HUGE). Integer sums are exact, so any order of touches and reprices
# gives the very sums a full rebuild gives: no drift.

QBITS = 8
QSCALE = 1 << QBITS  # exposure sums are kept in 1/256 of a minor unit of the base currency

X_GROSS = 0
X_LONG = 1
X_SHORT = 2
X_NO_MARK = 3  # held cells whose instrument had no mark at the last reprice
X_NO_FX = 4  # held cells with no FX rate to the account's base currency
X_HUGE = 5  # held cells whose gross term exceeds G_CELL_CAP (valued by the float scan instead)
N_EXPO_COLS = 6

CS_EMPTY = -1  # cell status: nothing held (L = S = 0)
CS_OK = 0
CS_NO_MARK = 1
CS_NO_FX = 2
CS_HUGE = 3

_FIELDS = [
    "position", "working_buy", "working_sell", "cash", "held", "bid", "ask", "last", "fx",
    "lim_cell", "lim_rows", "acct", "inst", "cell_state", "glob", "users", "wmeta", "ring",
    "scale", "out", "outf", "mark", "cfx", "c_long", "c_short", "expo", "holders",
]


@structref.register
class RiskStateType(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


class RiskState(structref.StructRefProxy):
    """The arrays of one risk engine, as one jitted argument. Build with ``make_state``."""


structref.define_proxy(RiskState, RiskStateType, _FIELDS)


def make_state(**arrays) -> RiskState:
    for name in _FIELDS:
        a = arrays[name]
        if not a.flags.c_contiguous:
            raise ValueError(f"risk state array {name} must be C-contiguous")
    return RiskState(*(arrays[name] for name in _FIELDS))


# -- HELPERS ---------------------------------------------------------------------------------


@njit(cache=True)
def reference_price(st, i):
    """Last trade, else the mid of a two-sided quote, else 0 (as ``Portfolio.reference_price``)."""
    last = st.last[i]
    if last > 0:
        return last
    bid = st.bid[i]
    ask = st.ask[i]
    if bid > 0 and ask > 0:
        return (bid + ask) // 2
    return 0


@njit(cache=True)
def notional_minor(price, qty, num, den):
    """price × qty in minor units, rounded half up (as ``Portfolio.notional_minor``); SATURATED
    when the exact product would not fit int64."""
    if price <= 0 or qty <= 0:
        return 0
    if float(price) * float(qty) * float(num) * 2.0 >= 4.0e18:
        return SATURATED
    return (2 * price * qty * num + den) // (2 * den)


@njit(cache=True)
def cell_limit(st, a, i, col):
    """The most specific limit set: (account, symbol), (account, *), (*, symbol), (*, *)."""
    row = st.lim_cell[a, i]
    if row >= 0:
        v = st.lim_rows[row, col]
        if v != UNSET:
            return v
    v = st.lim_rows[a, col]
    if v != UNSET:
        return v
    n_a = st.glob[G_N_ACCOUNTS]
    v = st.lim_rows[n_a + i, col]
    if v != UNSET:
        return v
    return st.lim_rows[n_a + st.inst.shape[0], col]


@njit(cache=True)
def window_ok(st, e, limit, ts):
    """True if one more command at ``ts`` keeps entity ``e`` within ``limit`` per window: fewer
    than ``limit`` noted, or the oldest of the last ``limit`` is at or before ts - window."""
    if limit <= 0:
        return False
    if e < 0:
        return True  # a user not registered yet has noted nothing
    count = st.wmeta[e, W_COUNT]
    if count < limit:
        return True
    oldest = st.ring[st.wmeta[e, W_OFF] + st.wmeta[e, W_HEAD]]
    return oldest <= ts - st.glob[G_WINDOW_NS]


@njit(cache=True)
def note(st, e, ts):
    """Record a command at ``ts`` for entity ``e`` (overwrites the oldest). O(1)."""
    cap = st.wmeta[e, W_CAP]
    if cap <= 0:
        return
    head = st.wmeta[e, W_HEAD]
    st.ring[st.wmeta[e, W_OFF] + head] = ts
    st.wmeta[e, W_HEAD] = head + 1 if head + 1 < cap else 0
    if st.wmeta[e, W_COUNT] < cap:
        st.wmeta[e, W_COUNT] += 1


@njit(cache=True)
def user_entity(st, u, kind):
    if u < 0:
        return -1
    n_a = st.glob[G_N_ACCOUNTS]
    return 2 * n_a + kind * st.glob[G_USER_CAP] + u


@njit(cache=True)
def pricing_price(st, i, otype, price, stop):
    """The price an order is valued at: its limit; a stop's max(stop, reference); a market
    order's reference (0 if none)."""
    if otype == LIMIT or otype == STOP_LIMIT:
        return price
    ref = reference_price(st, i)
    if otype == STOP:
        return stop if stop > ref else ref
    return ref


# -- THE CHECK -------------------------------------------------------------------------------


@njit(cache=True)
def check(st, kind, a, i, u, side, otype, price, stop, qty, qty_before, leaves_before,
          leaves_after, price_before, price_changed, ts):
    """All checks on one order as it would be after the command; returns the first refusal's code.

    For a submit, ``qty_before = leaves_before = price_before = 0`` and ``leaves_after = qty``.
    Only an increase counts for a modify: order-level limits fire only if the new value exceeds
    the old, and the working lots added are ``max(0, leaves_after - leaves_before)``.
    """
    out = st.out
    for k in range(N_OUT):
        out[k] = 0
    if qty <= 0 or leaves_after <= 0:
        return R_DENIED  # validation's job; refused here too rather than trusted
    # kill switches, trading states
    if st.glob[G_KILL] != 0:
        out[O_WHICH] = 0
        return R_KILL_SWITCH
    if st.acct[a, A_KILL] != 0:
        out[O_WHICH] = 1
        return R_KILL_SWITCH
    if u >= 0 and st.users[u, U_KILL] != 0:
        out[O_WHICH] = 2
        return R_KILL_SWITCH
    state = max(max(st.glob[G_STATE], st.acct[a, A_STATE]),
                max(st.inst[i, I_STATE], np.int64(st.cell_state[a, i])))
    if state == HALTED:
        return R_HALTED
    pos = st.position[a, i]
    out[O_POSITION] = pos
    out[O_WORKING_BUY] = st.working_buy[a, i]
    out[O_WORKING_SELL] = st.working_sell[a, i]
    if side == BUY:
        working = st.working_buy[a, i] - leaves_before + leaves_after
        reducing = pos < 0 and working <= -pos
    else:
        working = st.working_sell[a, i] - leaves_before + leaves_after
        reducing = pos > 0 and working <= pos
    add = leaves_after - leaves_before
    if add < 0:
        add = 0
    if state == REDUCING and not reducing:
        if kind == K_SUBMIT or add > 0 or price_changed != 0:
            return R_REDUCE_ONLY
    # throttles (account, then user)
    if kind == K_SUBMIT:
        a_rate = st.acct[a, A_ORDER_RATE]
        u_rate = st.users[u, U_ORDER_RATE] if u >= 0 else st.glob[G_USER_ORDER_RATE]
        code = R_ORDER_RATE
        e_a = a
    else:
        a_rate = st.acct[a, A_MODIFY_RATE]
        u_rate = st.users[u, U_MODIFY_RATE] if u >= 0 else st.glob[G_USER_MODIFY_RATE]
        code = R_MODIFY_RATE
        e_a = st.glob[G_N_ACCOUNTS] + a
    if a_rate == UNSET:
        out[O_WHICH] = 10
        return R_NO_LIMIT
    if u_rate == UNSET:
        out[O_WHICH] = 11
        return R_NO_LIMIT
    if not window_ok(st, e_a, a_rate, ts):
        out[O_LIMIT] = a_rate
        out[O_WHICH] = W_ACCOUNT
        return code
    if not window_ok(st, user_entity(st, u, kind), u_rate, ts):
        out[O_LIMIT] = u_rate
        out[O_WHICH] = W_USER
        return code
    # order-level limits
    max_qty = cell_limit(st, a, i, L_MAX_QTY)
    max_notional = cell_limit(st, a, i, L_MAX_NOTIONAL)
    collar = cell_limit(st, a, i, L_COLLAR_BPS)
    if max_qty == UNSET or max_notional == UNSET or collar == UNSET:
        out[O_WHICH] = L_MAX_QTY if max_qty == UNSET else (
            L_MAX_NOTIONAL if max_notional == UNSET else L_COLLAR_BPS)
        return R_NO_LIMIT
    if qty > max_qty and qty > qty_before:
        out[O_VALUE] = qty
        out[O_LIMIT] = max_qty
        return R_MAX_ORDER_QTY
    ref = reference_price(st, i)
    out[O_REF] = ref
    if ref == 0 and (otype == MARKET or st.glob[G_ALLOW_NO_REF] == 0):
        out[O_INSTRUMENT] = i
        return R_NO_REFERENCE_PRICE
    if price_changed != 0:
        anchor = ref if otype == LIMIT else (stop if otype == STOP_LIMIT else 0)
        if anchor > 0:
            diff = price - anchor if price > anchor else anchor - price
            if diff * 10_000 > anchor * collar:
                out[O_VALUE] = price
                out[O_LIMIT] = collar
                out[O_REF] = anchor
                return R_PRICE_COLLAR
    num = st.inst[i, I_NUM]
    den = st.inst[i, I_DEN]
    px = pricing_price(st, i, otype, price, stop)
    n = notional_minor(px, qty, num, den)
    n_before = notional_minor(pricing_price(st, i, otype, price_before, stop), qty_before, num, den)
    nscale = st.inst[i, I_NSCALE]
    n_scaled = n * nscale if n < SATURATED // nscale else SATURATED
    if n_scaled > max_notional and n > n_before:
        out[O_VALUE] = n
        out[O_LIMIT] = max_notional
        return R_MAX_ORDER_NOTIONAL
    if reducing:
        return OK
    # position, exposure, buying power: orders that reduce a position skip these
    max_pos = cell_limit(st, a, i, L_MAX_POSITION)
    if max_pos == UNSET:
        out[O_WHICH] = L_MAX_POSITION
        return R_NO_LIMIT
    projected = pos + working if side == BUY else pos - working
    if abs(projected) > max_pos and add > 0:
        out[O_VALUE] = projected
        out[O_LIMIT] = max_pos
        return R_POSITION_LIMIT
    if add > 0:
        code = exposure(st, a, i, side, add, px)
        if code != OK:
            return code
    if side == BUY:
        need = notional_minor(px, leaves_after, num, den) - notional_minor(
            pricing_price(st, i, otype, price_before, stop), leaves_before, num, den)
        c = st.inst[i, I_CCY]
        avail = st.cash[a, c] - st.held[a, c]
        if need > 0 and need > avail:
            out[O_VALUE] = need
            out[O_LIMIT] = avail
            return R_BUYING_POWER
    return OK


@njit(cache=True)
def lot_value(st, j, mark, base):
    """One lot of instrument ``j`` at ``mark`` in minor units of currency ``base`` (float; NaN
    without an FX rate in ``cfx``)."""
    c = st.inst[j, I_CCY]
    return (float(mark) * float(st.inst[j, I_NUM]) / float(st.inst[j, I_DEN]) * st.cfx[c, base]
            * st.scale[c, base])


@njit(cache=True)
def _quantize(x):
    return np.int64(math.floor(x * QSCALE + 0.5))


@njit(cache=True)
def cell_terms(st, j, long_, short, mark, base):
    """(status, gross, long, short): one cell's exposure terms at ``mark`` in QSCALE units of the
    base currency's minor units; status CS_EMPTY / CS_NO_MARK / CS_NO_FX / CS_HUGE leave the
    terms 0. Deterministic: the same inputs always give the same integers. O(1)."""
    if long_ == 0 and short == 0:
        return CS_EMPTY, 0, 0, 0
    if mark <= 0:
        return CS_NO_MARK, 0, 0, 0
    if np.isnan(st.cfx[st.inst[j, I_CCY], base]):
        return CS_NO_FX, 0, 0, 0
    v = lot_value(st, j, mark, base)
    g = max(abs(long_), abs(short)) * v
    if not g * QSCALE < st.glob[G_CELL_CAP]:  # also catches inf and NaN
        return CS_HUGE, 0, 0, 0
    return CS_OK, _quantize(g), _quantize(long_ * v), _quantize(short * v)


@njit(cache=True)
def _apply_cell(st, a, j, long_, short, mark, sign):
    """Add (sign 1) or remove (sign -1) one cell's terms to its account's cached sums."""
    status, g, lo, sh = cell_terms(st, j, long_, short, mark, st.acct[a, A_BASE])
    if status == CS_EMPTY:
        return
    st.holders[j] += sign
    x = st.expo[a]
    if status == CS_OK:
        x[X_GROSS] += sign * g
        x[X_LONG] += sign * lo
        x[X_SHORT] += sign * sh
    elif status == CS_NO_MARK:
        x[X_NO_MARK] += sign
    elif status == CS_NO_FX:
        x[X_NO_FX] += sign
    else:
        x[X_HUGE] += sign


@njit(cache=True)
def touch_cell(st, a, j):
    """Revalue cell (a, j) after its position or working lots changed, at the cached mark. O(1)."""
    long_ = st.position[a, j] + st.working_buy[a, j]
    short = st.position[a, j] - st.working_sell[a, j]
    old_long = st.c_long[a, j]
    old_short = st.c_short[a, j]
    if long_ == old_long and short == old_short:
        return
    mark = st.mark[j]
    _apply_cell(st, a, j, old_long, old_short, mark, -1)
    _apply_cell(st, a, j, long_, short, mark, 1)
    st.c_long[a, j] = long_
    st.c_short[a, j] = short


@njit(cache=True)
def reprice(st, changed):
    """Move the cached mark of each instrument flagged in ``changed`` (bool per instrument) to its
    reference price now, revaluing the accounts that hold it. Returns the instruments whose mark
    moved. O(instruments + accounts × moved instruments held by anyone)."""
    n_a = st.c_long.shape[0]
    moved = 0
    for j in range(changed.shape[0]):
        if not changed[j]:
            continue
        new = reference_price(st, j)
        old = st.mark[j]
        if new == old:
            continue
        moved += 1
        if st.holders[j] == 0:
            st.mark[j] = new
            continue
        for a in range(n_a):
            long_ = st.c_long[a, j]
            short = st.c_short[a, j]
            if long_ == 0 and short == 0:
                continue
            _apply_cell(st, a, j, long_, short, old, -1)
            _apply_cell(st, a, j, long_, short, new, 1)
        st.mark[j] = new
    return moved


@njit(cache=True)
def refresh(st):
    """Rebuild the whole cache from the portfolio: marks, lots, sums (``cfx`` is set by the
    caller). O(accounts × instruments)."""
    n_a, n_i = st.c_long.shape
    st.expo[:] = 0
    st.holders[:] = 0
    for j in range(n_i):
        st.mark[j] = reference_price(st, j)
    for a in range(n_a):
        for j in range(n_i):
            long_ = st.position[a, j] + st.working_buy[a, j]
            short = st.position[a, j] - st.working_sell[a, j]
            st.c_long[a, j] = long_
            st.c_short[a, j] = short
            if long_ != 0 or short != 0:
                _apply_cell(st, a, j, long_, short, st.mark[j], 1)
    return n_a * n_i


@njit(cache=True)
def _exceeds(q, limit):
    """q (QSCALE units, >= 0) > limit (minor units, >= 0), exactly."""
    whole = q >> QBITS
    return whole > limit or (whole == limit and (q & (QSCALE - 1)) != 0)


@njit(cache=True)
def _judge(st, gross, long_, short, max_gross, max_net):
    net = max(abs(long_), abs(short))
    st.out[O_GROSS] = gross
    st.out[O_NET] = net
    st.out[O_EXPO_SCALE] = QSCALE
    st.outf[0] = gross / QSCALE
    st.outf[1] = net / QSCALE
    if _exceeds(gross, max_gross):
        st.out[O_LIMIT] = max_gross
        return R_GROSS_EXPOSURE
    if _exceeds(net, max_net):
        st.out[O_LIMIT] = max_net
        return R_NET_EXPOSURE
    return OK


@njit(cache=True)
def _order_cell(st, a, i, side, add):
    long_ = st.position[a, i] + st.working_buy[a, i]
    short = st.position[a, i] - st.working_sell[a, i]
    if side == BUY:
        long_ += add
    else:
        short -= add
    return long_, short


@njit(cache=True)
def exposure(st, a, i, side, add, own_px):
    """Projected gross and net exposure of account ``a`` with ``add`` more lots working on
    ``side`` of instrument ``i``, in minor units of the account's base currency. O(1): the
    account's cached sums with cell i replaced by its live lots plus the order's.

    Per instrument j, with v_j the value of one lot at j's cached mark in base minor units,
    L_j = position + working buys and S_j = position - working sells (this order included):
    gross = sum_j max(|L_j|, |S_j|) * v_j, net = max(|sum_j L_j v_j|, |sum_j S_j v_j|), each
    term rounded to 1/QSCALE of a minor unit. A held instrument with no mark (the order's own
    instrument is valued at ``own_px`` then, if > 0) or no FX rate denies. Accounts holding a
    cell that cannot be valued or is HUGE take ``exposure_scan`` (O(instruments)), which names
    the first such instrument as before.
    """
    max_gross = st.acct[a, A_MAX_GROSS]
    max_net = st.acct[a, A_MAX_NET]
    if max_gross == UNSET:
        st.out[O_WHICH] = 12
        return R_NO_LIMIT
    if max_net == UNSET:
        st.out[O_WHICH] = 13
        return R_NO_LIMIT
    x = st.expo[a]
    if x[X_NO_MARK] != 0 or x[X_NO_FX] != 0 or x[X_HUGE] != 0:
        return exposure_scan(st, a, i, side, add, own_px)
    base = st.acct[a, A_BASE]
    mark = st.mark[i]
    _s, old_g, old_l, old_s = cell_terms(st, i, st.c_long[a, i], st.c_short[a, i], mark, base)
    long_, short = _order_cell(st, a, i, side, add)
    status, g, lo, sh = cell_terms(st, i, long_, short, mark if mark > 0 else own_px, base)
    if status == CS_NO_MARK:
        st.out[O_INSTRUMENT] = i
        return R_NO_REFERENCE_PRICE
    if status == CS_NO_FX:
        st.out[O_INSTRUMENT] = i
        return R_NO_FX_RATE
    if status == CS_HUGE:
        return exposure_scan(st, a, i, side, add, own_px)
    return _judge(st, x[X_GROSS] - old_g + g, x[X_LONG] - old_l + lo, x[X_SHORT] - old_s + sh,
                  max_gross, max_net)


@njit(cache=True)
def exposure_scan(st, a, i, side, add, own_px):
    """``exposure`` by a scan of the account's cached cells (cell i live plus the order), in
    instrument order: the first held instrument with no mark or FX rate denies. Gives the same
    answer as ``exposure``; with a HUGE cell the sums are float64 (int64 would overflow).
    O(instruments)."""
    base = st.acct[a, A_BASE]
    gross = np.int64(0)
    net_long = np.int64(0)
    net_short = np.int64(0)
    gross_f = 0.0
    long_f = 0.0
    short_f = 0.0
    huge = False
    for j in range(st.c_long.shape[1]):
        mark = st.mark[j]
        if j == i:
            long_, short = _order_cell(st, a, i, side, add)
            if mark <= 0:
                mark = own_px
        else:
            long_ = st.c_long[a, j]
            short = st.c_short[a, j]
        status, g, lo, sh = cell_terms(st, j, long_, short, mark, base)
        if status == CS_EMPTY:
            continue
        if status == CS_NO_MARK:
            st.out[O_INSTRUMENT] = j
            return R_NO_REFERENCE_PRICE
        if status == CS_NO_FX:
            st.out[O_INSTRUMENT] = j
            return R_NO_FX_RATE
        if status == CS_HUGE:
            huge = True
        else:
            gross += g
            net_long += lo
            net_short += sh
        v = lot_value(st, j, mark, base)
        gross_f += max(abs(long_), abs(short)) * v
        long_f += long_ * v
        short_f += short * v
    max_gross = st.acct[a, A_MAX_GROSS]
    max_net = st.acct[a, A_MAX_NET]
    if not huge:
        return _judge(st, gross, net_long, net_short, max_gross, max_net)
    net_f = max(abs(long_f), abs(short_f))
    st.outf[0] = gross_f
    st.outf[1] = net_f
    st.out[O_GROSS] = _saturate(gross_f)
    st.out[O_NET] = _saturate(net_f)
    st.out[O_EXPO_SCALE] = 1
    if gross_f > float(max_gross):
        st.out[O_LIMIT] = max_gross
        return R_GROSS_EXPOSURE
    if net_f > float(max_net):
        st.out[O_LIMIT] = max_net
        return R_NET_EXPOSURE
    return OK


@njit(cache=True)
def _saturate(x):
    """x (>= 0) rounded to an int64, SATURATED past 4e18."""
    if not x < 4.0e18:
        return SATURATED
    return np.int64(math.floor(x + 0.5))


@njit(cache=True)
def check_submit(st, a, i, u, side, otype, price, stop, qty, ts):
    """The per-order entry point for a new order (ten arguments keep the call cheap)."""
    return check(st, K_SUBMIT, a, i, u, side, otype, price, stop, qty, 0, 0, qty, 0, 1, ts)


@njit(cache=True)
def note_command(st, kind, a, u, ts):
    """Record a passed command in its account's and user's windows. O(1)."""
    n_a = st.glob[G_N_ACCOUNTS]
    note(st, a if kind == K_SUBMIT else n_a + a, ts)
    if u >= 0:
        note(st, user_entity(st, u, kind), ts)


# -- BATCH -----------------------------------------------------------------------------------


@njit(cache=True)
def check_batch(st, cmds, codes, outs, undo, held_undo):
    """Check ``cmds`` (rows: a, i, u, side, otype, price, stop, qty, ts) in order, as if each
    passed command were noted in the throttle windows and opened in the portfolio (its lots
    working, a buy's notional held, its cell touched in the exposure cache) before the next is
    checked; every such change is undone before returning, so the state is as it was (the
    cache's integer sums return exactly). ``codes[k]`` gets command k's code and ``outs[k]``
    (n × N_OUT) its refusal figures. ``undo`` (n × 6) and ``held_undo`` (n) are scratch.
    """
    n = cmds.shape[0]
    done = 0
    for k in range(n):
        a = cmds[k, 0]
        i = cmds[k, 1]
        u = cmds[k, 2]
        side = cmds[k, 3]
        otype = cmds[k, 4]
        price = cmds[k, 5]
        stop = cmds[k, 6]
        qty = cmds[k, 7]
        ts = cmds[k, 8]
        code = check(st, K_SUBMIT, a, i, u, side, otype, price, stop, qty, 0, 0, qty, 0, 1, ts)
        codes[k] = code
        outs[k, :] = st.out
        if code != OK:
            continue
        # note the throttles, remembering what each write replaced
        e_u = user_entity(st, u, K_SUBMIT)
        for slot in range(2):
            e = a if slot == 0 else e_u
            undo[done, 3 * slot] = e
            if e >= 0:
                undo[done, 3 * slot + 1] = st.wmeta[e, W_HEAD] * (2**31) + st.wmeta[e, W_COUNT]
                cap = st.wmeta[e, W_CAP]
                undo[done, 3 * slot + 2] = st.ring[st.wmeta[e, W_OFF] + st.wmeta[e, W_HEAD]] if cap > 0 else 0
                note(st, e, ts)
        # open the order: working lots and, for a buy, the hold (as Portfolio.open)
        if side == BUY:
            st.working_buy[a, i] += qty
            hold = notional_minor(pricing_price(st, i, otype, price, stop), qty,
                                  st.inst[i, I_NUM], st.inst[i, I_DEN])
            st.held[a, st.inst[i, I_CCY]] += hold
            held_undo[done] = hold
        else:
            st.working_sell[a, i] += qty
            held_undo[done] = 0
        touch_cell(st, a, i)
        done += 1
    # undo in reverse order
    k = n - 1
    while done > 0:
        while codes[k] != OK:
            k -= 1
        done -= 1
        a = cmds[k, 0]
        i = cmds[k, 1]
        if cmds[k, 3] == BUY:
            st.working_buy[a, i] -= cmds[k, 7]
            st.held[a, st.inst[i, I_CCY]] -= held_undo[done]
        else:
            st.working_sell[a, i] -= cmds[k, 7]
        touch_cell(st, a, i)
        for slot in (1, 0):
            e = undo[done, 3 * slot]
            if e >= 0:
                packed = undo[done, 3 * slot + 1]
                head = packed // (2**31)
                st.wmeta[e, W_HEAD] = head
                st.wmeta[e, W_COUNT] = packed - head * (2**31)
                if st.wmeta[e, W_CAP] > 0:
                    st.ring[st.wmeta[e, W_OFF] + head] = undo[done, 3 * slot + 2]
        k -= 1
    return n
