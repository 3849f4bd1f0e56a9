"""The jitted pre-trade checks: limit tables, throttle windows and exposure over numpy arrays.

Every array a check reads sits in one ``RiskState`` structref, so a check costs one argument to
unbox instead of twenty (numba unboxes each array argument at ~75 ns). The portfolio's arrays are
held by reference, not copied: ``Portfolio`` mutates them in place, so the checks always see the
current positions, working lots, cash and prices.

Functions here never raise and never allocate on the per-order path; they return an int code
(``OK`` or a ``RejectCode.RISK_*`` value) and leave the figures a refusal's text needs in
``state.out`` (int64) and ``state.outf`` (float64).
"""

from __future__ import annotations

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
N_GLOBAL_COLS = 8

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
N_OUT = 5

W_ACCOUNT = 0
W_USER = 1

K_SUBMIT = 0
K_MODIFY = 1

SATURATED = 2**62  # a notional too large for int64 arithmetic: exceeds every limit

_FIELDS = [
    "position", "working_buy", "working_sell", "cash", "held", "bid", "ask", "last", "fx",
    "lim_cell", "lim_rows", "acct", "inst", "cell_state", "glob", "users", "wmeta", "ring",
    "scale", "out", "outf",
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
def exposure(st, a, i, side, add, own_px):
    """Projected gross and net exposure of account ``a`` with ``add`` more lots working on
    ``side`` of instrument ``i``, in minor units of the account's base currency. O(instruments).

    Per instrument j, with v_j the value of one lot at j's reference price in base minor units,
    L_j = position + working buys and S_j = position - working sells (this order included):
    gross = sum_j max(|L_j|, |S_j|) * v_j, net = max(|sum_j L_j v_j|, |sum_j S_j v_j|).
    """
    max_gross = st.acct[a, A_MAX_GROSS]
    max_net = st.acct[a, A_MAX_NET]
    if max_gross == UNSET:
        st.out[O_WHICH] = 12
        return R_NO_LIMIT
    if max_net == UNSET:
        st.out[O_WHICH] = 13
        return R_NO_LIMIT
    base = st.acct[a, A_BASE]
    gross = 0.0
    net_long = 0.0
    net_short = 0.0
    pos_row = st.position[a]
    wb_row = st.working_buy[a]
    ws_row = st.working_sell[a]
    for j in range(pos_row.shape[0]):
        p = pos_row[j]
        b = wb_row[j]
        s = ws_row[j]
        if j == i:
            if side == BUY:
                b += add
            else:
                s += add
        if p == 0 and b == 0 and s == 0:
            continue
        mark = reference_price(st, j)
        if mark == 0:
            if j != i or own_px <= 0:
                st.out[O_INSTRUMENT] = j
                return R_NO_REFERENCE_PRICE
            mark = own_px
        c = st.inst[j, I_CCY]
        f = st.fx[c, base]
        if np.isnan(f):
            st.out[O_INSTRUMENT] = j
            return R_NO_FX_RATE
        v = float(mark) * float(st.inst[j, I_NUM]) / float(st.inst[j, I_DEN]) * f * st.scale[c, base]
        long_ = p + b
        short = p - s
        gross += max(abs(long_), abs(short)) * v
        net_long += long_ * v
        net_short += short * v
    net = max(abs(net_long), abs(net_short))
    st.outf[0] = gross
    st.outf[1] = net
    if gross > float(max_gross):
        st.out[O_LIMIT] = max_gross
        return R_GROSS_EXPOSURE
    if net > float(max_net):
        st.out[O_LIMIT] = max_net
        return R_NET_EXPOSURE
    return OK


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
    working, a buy's notional held) before the next is checked; every such change is undone
    before returning, so the state is as it was. ``codes[k]`` gets command k's code and
    ``outs[k]`` its refusal figures. ``undo`` (n × 6) and ``held_undo`` (n) are scratch.
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
        outs[k, :N_OUT] = st.out
        outs[k, N_OUT] = np.int64(st.outf[0])
        outs[k, N_OUT + 1] = np.int64(st.outf[1])
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
