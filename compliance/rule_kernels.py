"""Numba kernels of the compliance rules: pre-trade evaluation, incremental aggregates, post-trade.

All state lives in two flat buffers, ``IB`` (int64) and ``FB`` (float64), cut into named segments
whose offsets sit in ``IB``'s header (``H_*``). A per-order call unboxes four arrays (the two
buffers, the portfolio's position and working-sell arrays) instead of twenty-five, and segments
are read by flat index (offset + row × columns + column): a reshaped view costs ~35 ns to build
in numba, a flat index nothing. Each kernel reads the header once into a tuple (``_offsets``).
``compliance.rules.ComplianceRules`` builds the buffers and is the only caller.

Indices: ``r`` rule (rules sorted by scope entity), ``s`` scope entity (a firm, fund or account
some rule targets), ``a`` account, ``i`` instrument, ``u`` issuer, ``b`` bucket (issuers are
buckets ``0 .. U-1``, then sectors, countries and asset classes), ``c`` currency.

Aggregates per entity and bucket (net position value, working-buy value, working-sell value, all
at the cached marks in the entity's currency) are valid only where ``SEEN[s, b] == epoch[s]``;
anything else reads as zero, so a recompute needs no clearing pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# -- RULE KINDS ----------------------------------------------------------------------------------

K_RESTRICTED = 0
K_WATCH = 1
K_ISSUER_CONC = 2
K_WEIGHT = 3
K_SHARES = 4
K_UCITS = 5
K_ACT40 = 6
K_LOCATE = 7
K_ADV = 8

# -- SEVERITIES (ordered: the worst failing evaluation decides) ----------------------------------

S_PASS = 0
S_WARN = 1
S_SOFT = 2
S_HARD = 3

# -- REASON CODES (mirrors of RejectCode.COMPLIANCE_*, checked in compliance.rules) -------------

R_NONE = 0
R_RESTRICTED = 3001
R_CONCENTRATION = 3002
R_WEIGHT_RANGE = 3003
R_SHARES_OUTSTANDING = 3004
R_UCITS = 3005
R_ACT40 = 3006
R_NO_LOCATE = 3007
R_ADV = 3008
R_NO_PRICE = 3009
R_WATCH_LIST = 3012

# -- HEADER OF IB: dimensions, then segment offsets ----------------------------------------------

H_R = 0  # rules
H_E = 1  # scope entities
H_A = 2  # accounts
H_N = 3  # instruments
H_U = 4  # issuers
H_B = 5  # buckets
H_C = 6  # currencies
H_HCAP = 7  # capacity of the holdings list
H_HN = 8  # holdings in use
H_RULE_I = 9
H_ENT_PTR = 10
H_ACCT_ENT = 11
H_INST = 12
H_ISS = 13
H_ISS_INST = 14
H_LOCATE = 15
H_AGG_MISS = 16
H_SEEN = 17
H_BLIST = 18
H_UP = 19
H_UW = 20
H_SEEN_I = 21
H_ILIST = 22
H_ENT_I = 23
H_HOLD = 24
H_CELL = 25
H_SHCASH = 26
H_RULE_EVAL = 27
# float segments (offsets into FB)
H_RULE_F = 28
H_UNIT = 29
H_MARK = 30
H_FX = 31
H_CASH_SCALE = 32
H_ENT_F = 33
H_AGG = 34
H_OUT = 35
H_WORST = 36  # check_order: the OUT row of the worst failing evaluation (-1 none)
H_VOTE = 37  # per (entity, issuer): Act40 voting-share test, cached (_votes)
H_NCOLS = 40

# -- COLUMNS -------------------------------------------------------------------------------------

RI_KIND = 0
RI_ENTITY = 1
RI_SEV = 2
RI_BUCKET = 3  # weight_range: the key's bucket
RI_EXEMPT = 4  # bitmask of exempt asset-class indices
RI_CODE = 5
RI_HAS_MIN = 6
RI_HAS_MAX = 7
RI_NCOLS = 8

RF_MAX = 0  # max_pct (ucits: the per-issuer cap, 10)
RF_MIN = 1  # min_pct
RF_P1 = 2  # ucits: threshold_pct (5); act40: issuer_pct (5)
RF_P2 = 3  # ucits: aggregate_pct (40); act40: voting_pct (10)
RF_P3 = 4  # act40: diversified_pct (75)
RF_DERIVED = 5  # cached sum (ucits: issuers above threshold; act40: non-qualifying), NaN unknown
RF_DERIVED_POS = 6  # the same on positions only (post-trade)
RF_NCOLS = 7

IN_ISSUER = 0  # bucket of the issuer (= issuer index)
IN_SECTOR = 1  # bucket of the sector
IN_COUNTRY = 2
IN_CLASS = 3  # bucket of the asset class
IN_CLASS_IDX = 4  # asset class index (bit in RI_EXEMPT)
IN_CCY = 5
IN_LOT = 6  # units per lot
IN_SHARES = 7  # shares outstanding, units (0 unknown)
IN_ADV = 8  # lots/day (0 unknown)
IN_EQUITY = 9  # 1 if asset class "equity" (voting shares)
IN_NCOLS = 10

IS_FLAGS = 0  # F_RESTRICTED | F_WATCH
IS_CLS_MASK = 1  # bitmask of the asset classes of the issuer's instruments
IS_START = 2  # its instruments: ISS_INST[IS_START:IS_END]
IS_END = 3
IS_NCOLS = 4

F_RESTRICTED = 1
F_WATCH = 2

EI_CCY = 0
EI_EPOCH = 1
EI_NAV_MISS = 2  # held positions or cash that cannot be valued (no mark / no FX)
EI_DERIVE = 3  # 1: RF_DERIVED of this entity's rules must be recomputed
EI_DIRTY = 4  # 1: post-trade rules must be re-evaluated
EI_NB = 5  # buckets listed in BLIST this epoch
EI_NI = 6  # instruments listed in ILIST this epoch
EI_DIMS = 7  # the aggregates this entity's rules read (D_* bits); nothing else is kept
EI_STALE = 8  # 1: aggregates must be re-summed from the holdings (FX moved, a mark appeared...)
EI_DELTAS = 9  # price batches applied as deltas since the last re-sum
EI_UNITS_DIRTY = 10  # 1: lots changed since the last recheck (shares_outstanding re-evaluated)
EI_NCOLS = 11

MAX_DELTAS = 1024  # re-sum an entity after this many delta revaluations (bounds float drift)

D_ISSUER = 1  # bit (1 << IN_ISSUER): issuer buckets
D_SECTOR = 2
D_COUNTRY = 4
D_CLASS = 8
D_UNITS = 16  # lots per instrument
D_NAV = 32
D_VOTES = 64  # an Act40 rule: VOTE caches its voting-share test per issuer

EF_NAV = 0
EF_VOTE_PCT = 1  # voting_pct of the entity's first Act40 rule: the one VOTE caches (NaN none)
EF_NCOLS = 2

AG_POS = 0
AG_WB = 1
AG_WS = 2

HO_A = 0
HO_I = 1
HO_POS = 2
HO_WB = 3
HO_WS = 4
HO_NCOLS = 5

# out rows (pre-trade and post-trade)
OC_RULE = 0
OC_PASSED = 1
OC_CODE = 2
OC_VALUE = 3  # percent of the base, or lots for locates
OC_LIMIT = 4
OC_BASE = 5  # NAV, shares outstanding, ADV or locate the percent is of
OC_EXPOSURE = 6  # projected value (entity currency) or units
OC_KEY = 7  # post-trade: -1 rule-level, 0..B-1 bucket, B+i instrument
OC_NCOLS = 8

ST_OK = 0
ST_HOLDINGS_FULL = 1


# -- HEADER --------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _offsets(IB):
    """The header as a tuple: offsets held in registers, not re-read after every store."""
    return (
        IB[0], IB[1], IB[2], IB[3], IB[4], IB[5], IB[6], IB[7], IB[8], IB[9],
        IB[10], IB[11], IB[12], IB[13], IB[14], IB[15], IB[16], IB[17], IB[18], IB[19],
        IB[20], IB[21], IB[22], IB[23], IB[24], IB[25], IB[26], IB[27], IB[28], IB[29],
        IB[30], IB[31], IB[32], IB[33], IB[34], IB[35], IB[36], IB[37], IB[38], IB[39],
    )


# -- AGGREGATES ----------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _touch_bucket(hd, IB, FB, s, b):
    """Make (s, b) current in this epoch: zero it and list it the first time. O(1)."""
    B = hd[H_B]
    oe = hd[H_ENT_I] + s * EI_NCOLS
    k = s * B + b
    if IB[hd[H_SEEN] + k] != IB[oe + EI_EPOCH]:
        IB[hd[H_SEEN] + k] = IB[oe + EI_EPOCH]
        oa = hd[H_AGG] + k * 3
        FB[oa + AG_POS] = 0.0
        FB[oa + AG_WB] = 0.0
        FB[oa + AG_WS] = 0.0
        IB[hd[H_AGG_MISS] + k] = 0
        IB[hd[H_BLIST] + s * B + IB[oe + EI_NB]] = b
        IB[oe + EI_NB] += 1


@njit(cache=True, inline="always")
def _touch_inst(hd, IB, s, i):
    N = hd[H_N]
    oe = hd[H_ENT_I] + s * EI_NCOLS
    k = s * N + i
    if IB[hd[H_SEEN_I] + k] != IB[oe + EI_EPOCH]:
        IB[hd[H_SEEN_I] + k] = IB[oe + EI_EPOCH]
        IB[hd[H_UP] + k] = 0
        IB[hd[H_UW] + k] = 0
        IB[hd[H_ILIST] + s * N + IB[oe + EI_NI]] = i
        IB[oe + EI_NI] += 1


@njit(cache=True, inline="always")
def _lot_value(hd, IB, FB, s, i):
    """Value of one lot of i at its cached mark in s's currency; NaN when unknown."""
    C = hd[H_C]
    mark = FB[hd[H_MARK] + i]
    if not mark > 0.0:
        return np.nan
    ccy = IB[hd[H_INST] + i * IN_NCOLS + IN_CCY]
    to = IB[hd[H_ENT_I] + s * EI_NCOLS + EI_CCY]
    return mark * FB[hd[H_UNIT] + i] * FB[hd[H_FX] + ccy * C + to]


@njit(cache=True, inline="always")
def _add_cell(hd, IB, FB, s, i, pos, wb, ws, sign):
    """Add (sign=1) or remove (sign=-1) one account's cell of instrument i to entity s. O(1)."""
    if pos == 0 and wb == 0 and ws == 0:
        return
    B, N = hd[H_B], hd[H_N]
    dims = IB[hd[H_ENT_I] + s * EI_NCOLS + EI_DIMS]
    v = _lot_value(hd, IB, FB, s, i)
    known = np.isfinite(v)
    oi = hd[H_INST] + i * IN_NCOLS
    for col in range(4):
        if not dims & (1 << col):
            continue
        b = IB[oi + col]
        _touch_bucket(hd, IB, FB, s, b)
        if known:
            oa = hd[H_AGG] + (s * B + b) * 3
            FB[oa + AG_POS] += sign * pos * v
            FB[oa + AG_WB] += sign * wb * v
            FB[oa + AG_WS] += sign * ws * v
        else:
            IB[hd[H_AGG_MISS] + s * B + b] += sign
    if pos != 0 and dims & D_NAV:
        if known:
            FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV] += sign * pos * v
        else:
            IB[hd[H_ENT_I] + s * EI_NCOLS + EI_NAV_MISS] += sign
    if dims & D_UNITS:
        _touch_inst(hd, IB, s, i)
        IB[hd[H_UP] + s * N + i] += sign * pos
        IB[hd[H_UW] + s * N + i] += sign * wb
        IB[hd[H_ENT_I] + s * EI_NCOLS + EI_UNITS_DIRTY] = 1
        if dims & D_VOTES:
            IB[hd[H_VOTE] + s * hd[H_U] + IB[oi + IN_ISSUER]] = 0


@njit(cache=True, inline="always")
def _add_cash(hd, IB, FB, s, row, sign):
    """Add (sign=1) or remove (sign=-1) one account's cash row (minor units) to s's NAV. O(C)."""
    C = hd[H_C]
    oe = hd[H_ENT_I] + s * EI_NCOLS
    to = IB[oe + EI_CCY]
    if not IB[oe + EI_DIMS] & D_NAV:
        return
    for c in range(C):
        amount = row[c]
        if amount == 0:
            continue
        rate = FB[hd[H_FX] + c * C + to]
        if np.isfinite(rate):
            FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV] += sign * amount * FB[hd[H_CASH_SCALE] + c] * rate
        else:
            IB[oe + EI_NAV_MISS] += sign


# -- INCREMENTAL UPDATES (stage 7) ---------------------------------------------------------------


@njit(cache=True)
def touch_cell(IB, FB, pos, wbuy, wsell, cash, a, i):
    """Sync cell (a, i) and account a's cash from the portfolio into every entity of a. O(1)."""
    hd = _offsets(IB)
    N, C = hd[H_N], hd[H_C]
    ocell = hd[H_CELL] + a * N + i
    k = IB[ocell]
    if k < 0 and (pos[a, i] != 0 or wbuy[a, i] != 0 or wsell[a, i] != 0):
        if IB[H_HN] >= hd[H_HCAP]:
            return ST_HOLDINGS_FULL
        k = IB[H_HN]
        IB[H_HN] += 1
        IB[ocell] = k
        oh = hd[H_HOLD] + k * HO_NCOLS
        IB[oh + HO_A] = a
        IB[oh + HO_I] = i
        IB[oh + HO_POS] = 0
        IB[oh + HO_WB] = 0
        IB[oh + HO_WS] = 0
    oh = hd[H_HOLD] + k * HO_NCOLS
    osh = hd[H_SHCASH] + a * C
    shadow = IB[osh : osh + C]
    for lvl in range(3):
        s = IB[hd[H_ACCT_ENT] + a * 3 + lvl]
        if s < 0:
            continue
        if k >= 0:
            _add_cell(hd, IB, FB, s, i, IB[oh + HO_POS], IB[oh + HO_WB], IB[oh + HO_WS], -1)
            _add_cell(hd, IB, FB, s, i, pos[a, i], wbuy[a, i], wsell[a, i], 1)
        _add_cash(hd, IB, FB, s, shadow, -1)
        _add_cash(hd, IB, FB, s, cash[a], 1)
        oe = hd[H_ENT_I] + s * EI_NCOLS
        IB[oe + EI_DERIVE] = 1
        IB[oe + EI_DIRTY] = 1
    for c in range(C):
        shadow[c] = cash[a, c]
    if k >= 0:
        IB[oh + HO_POS] = pos[a, i]
        IB[oh + HO_WB] = wbuy[a, i]
        IB[oh + HO_WS] = wsell[a, i]
    return ST_OK


M_NONE = 0  # revalue: instrument neither flagged nor moved
M_FLAGGED = 1  # flagged (fills, ticks) but its mark did not move: holders are re-evaluated only
M_DELTA = 2  # mark moved between two known values: holders shift by the delta
M_JUMP = 3  # mark appeared or vanished: holders are re-summed

VALUE_DIMS = D_ISSUER | D_SECTOR | D_COUNTRY | D_CLASS | D_NAV


@njit(cache=True)
def revalue(IB, FB, marks, fx, changed):
    """Store new marks and FX rates and move the aggregates by the mark deltas of the holdings in
    instruments whose mark moved: O(instruments + holdings). Entities holding an instrument
    flagged in ``changed`` (or whose mark moved) become due for post-trade evaluation; a mark
    appearing or vanishing, an FX move, or MAX_DELTAS batches make an entity stale (re-summed by
    recompute_stale). ``changed`` is only read. Returns 1 if FX moved, else 0."""
    hd = _offsets(IB)
    N, C, E = hd[H_N], hd[H_C], hd[H_E]
    om, ofx, ounit, oinst, oe0 = hd[H_MARK], hd[H_FX], hd[H_UNIT], hd[H_INST], hd[H_ENT_I]
    fx_moved = False
    for c in range(C):
        for d in range(C):
            old, new = FB[ofx + c * C + d], fx[c, d]
            if old != new and not (np.isnan(old) and np.isnan(new)):
                fx_moved = True
    if fx_moved:
        for c in range(C):
            for d in range(C):
                FB[ofx + c * C + d] = fx[c, d]
    move = np.zeros(N, dtype=np.int8)
    dv = np.zeros(N, dtype=np.float64)  # lot value delta in the instrument's currency
    for i in range(N):
        new = float(marks[i])
        old = FB[om + i]
        if new != old:
            move[i] = M_DELTA if old > 0.0 and new > 0.0 else M_JUMP
            dv[i] = (new - old) * FB[ounit + i]
            FB[om + i] = new
        elif changed[i]:
            move[i] = M_FLAGGED
    if fx_moved:
        for s in range(E):
            IB[oe0 + s * EI_NCOLS + EI_STALE] = 1
            IB[oe0 + s * EI_NCOLS + EI_DIRTY] = 1
        return 1
    oh, oae, B, oagg = hd[H_HOLD], hd[H_ACCT_ENT], hd[H_B], hd[H_AGG]
    onav = hd[H_ENT_F] + EF_NAV
    for k in range(IB[H_HN]):
        h = oh + k * HO_NCOLS
        i = IB[h + HO_I]
        m = move[i]
        if m == M_NONE:
            continue
        pos, wb, ws = IB[h + HO_POS], IB[h + HO_WB], IB[h + HO_WS]
        if pos == 0 and wb == 0 and ws == 0:
            continue
        a = IB[h + HO_A]
        oi = oinst + i * IN_NCOLS
        for lvl in range(3):
            s = IB[oae + a * 3 + lvl]
            if s < 0:
                continue
            oe = oe0 + s * EI_NCOLS
            IB[oe + EI_DIRTY] = 1
            if m == M_FLAGGED or IB[oe + EI_STALE]:
                continue
            if m == M_JUMP:
                IB[oe + EI_STALE] = 1
                continue
            dims = IB[oe + EI_DIMS]
            if not dims & VALUE_DIMS:
                continue  # lots only: a price moves nothing it keeps
            lv = dv[i] * FB[ofx + IB[oi + IN_CCY] * C + IB[oe + EI_CCY]]
            if not np.isfinite(lv):
                IB[oe + EI_STALE] = 1
                continue
            IB[oe + EI_DERIVE] = 1
            for col in range(4):
                if dims & (1 << col):
                    oa = oagg + (s * B + IB[oi + col]) * 3
                    FB[oa + AG_POS] += pos * lv
                    if wb != 0:
                        FB[oa + AG_WB] += wb * lv
                    if ws != 0:
                        FB[oa + AG_WS] += ws * lv
            if pos != 0 and dims & D_NAV:
                FB[onav + s * EF_NCOLS] += pos * lv
    for s in range(E):
        oe = oe0 + s * EI_NCOLS
        if IB[oe + EI_DIRTY] and not IB[oe + EI_STALE]:
            IB[oe + EI_DELTAS] += 1
            if IB[oe + EI_DELTAS] >= MAX_DELTAS:
                IB[oe + EI_STALE] = 1
    return 0


@njit(cache=True)
def recompute_stale(IB, FB):
    """Re-sum NAV and aggregates of the stale entities from the holdings list and cash at the
    cached marks (they become due for post-trade evaluation). O(holdings + accounts) to group the holdings by account, then O(holdings of
    the entity) per stale entity; untouched buckets need no clearing (epochs)."""
    hd = _offsets(IB)
    if not _any_stale(hd, IB):
        return
    E, A, B, N, C = hd[H_E], hd[H_A], hd[H_B], hd[H_N], hd[H_C]
    oae, oh = hd[H_ACCT_ENT], hd[H_HOLD]
    hn = IB[H_HN]
    # accounts of each stale entity, and holdings of each account (counting sorts)
    ent_start = np.zeros(E + 1, dtype=np.int64)
    for a in range(A):
        for lvl in range(3):
            s = IB[oae + a * 3 + lvl]
            if s >= 0 and IB[hd[H_ENT_I] + s * EI_NCOLS + EI_STALE]:
                ent_start[s + 1] += 1
    for s in range(E):
        ent_start[s + 1] += ent_start[s]
    ent_acc = np.empty(ent_start[E], dtype=np.int64)
    fill = ent_start[:E].copy()
    for a in range(A):
        for lvl in range(3):
            s = IB[oae + a * 3 + lvl]
            if s >= 0 and IB[hd[H_ENT_I] + s * EI_NCOLS + EI_STALE]:
                ent_acc[fill[s]] = a
                fill[s] += 1
    acc_start = np.zeros(A + 1, dtype=np.int64)
    for k in range(hn):
        acc_start[IB[oh + k * HO_NCOLS + HO_A] + 1] += 1
    for a in range(A):
        acc_start[a + 1] += acc_start[a]
    acc_hold = np.empty(hn, dtype=np.int64)
    afill = acc_start[:A].copy()
    for k in range(hn):
        a = IB[oh + k * HO_NCOLS + HO_A]
        acc_hold[afill[a]] = k
        afill[a] += 1
    omark, ounit, ofx, oinst = hd[H_MARK], hd[H_UNIT], hd[H_FX], hd[H_INST]
    oscale = hd[H_CASH_SCALE]
    for s in range(E):
        oe = hd[H_ENT_I] + s * EI_NCOLS
        if not IB[oe + EI_STALE]:
            continue
        ep = IB[oe + EI_EPOCH] + 1
        to = IB[oe + EI_CCY]
        dims = IB[oe + EI_DIMS]
        with_nav = dims & D_NAV != 0
        with_units = dims & D_UNITS != 0
        oseen, omiss, oblist = hd[H_SEEN] + s * B, hd[H_AGG_MISS] + s * B, hd[H_BLIST] + s * B
        oagg = hd[H_AGG] + s * B * 3
        oseen_i, oilist = hd[H_SEEN_I] + s * N, hd[H_ILIST] + s * N
        oup, ouw = hd[H_UP] + s * N, hd[H_UW] + s * N
        nav = 0.0
        nav_miss = 0
        nb = 0
        ni = 0
        for m in range(ent_start[s], ent_start[s + 1]):
            a = ent_acc[m]
            for c in range(C if with_nav else 0):
                amount = IB[hd[H_SHCASH] + a * C + c]
                if amount != 0:
                    rate = FB[ofx + c * C + to]
                    if np.isfinite(rate):
                        nav += amount * FB[oscale + c] * rate
                    else:
                        nav_miss += 1
            for q in range(acc_start[a], acc_start[a + 1]):
                h = oh + acc_hold[q] * HO_NCOLS
                i = IB[h + HO_I]
                pos, wb, ws = IB[h + HO_POS], IB[h + HO_WB], IB[h + HO_WS]
                if pos == 0 and wb == 0 and ws == 0:
                    continue
                oi = oinst + i * IN_NCOLS
                mark = FB[omark + i]
                v = mark * FB[ounit + i] * FB[ofx + IB[oi + IN_CCY] * C + to]
                known = mark > 0.0 and np.isfinite(v)
                for col in range(4):
                    if not dims & (1 << col):
                        continue
                    b = IB[oi + col]
                    if IB[oseen + b] != ep:
                        IB[oseen + b] = ep
                        FB[oagg + b * 3 + AG_POS] = 0.0
                        FB[oagg + b * 3 + AG_WB] = 0.0
                        FB[oagg + b * 3 + AG_WS] = 0.0
                        IB[omiss + b] = 0
                        IB[oblist + nb] = b
                        nb += 1
                    if known:
                        FB[oagg + b * 3 + AG_POS] += pos * v
                        if wb != 0:
                            FB[oagg + b * 3 + AG_WB] += wb * v
                        if ws != 0:
                            FB[oagg + b * 3 + AG_WS] += ws * v
                    else:
                        IB[omiss + b] += 1
                if pos != 0 and with_nav:
                    if known:
                        nav += pos * v
                    else:
                        nav_miss += 1
                if not with_units:
                    continue
                if IB[oseen_i + i] != ep:
                    IB[oseen_i + i] = ep
                    IB[oup + i] = 0
                    IB[ouw + i] = 0
                    IB[oilist + ni] = i
                    ni += 1
                IB[oup + i] += pos
                IB[ouw + i] += wb
        IB[oe + EI_EPOCH] = ep
        IB[oe + EI_NB] = nb
        IB[oe + EI_NI] = ni
        IB[oe + EI_NAV_MISS] = nav_miss
        IB[oe + EI_DERIVE] = 1
        IB[oe + EI_STALE] = 0
        IB[oe + EI_DELTAS] = 0
        IB[oe + EI_DIRTY] = 1
        IB[oe + EI_UNITS_DIRTY] = 1
        FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV] = nav


@njit(cache=True, inline="always")
def _any_stale(hd, IB):
    for s in range(hd[H_E]):
        if IB[hd[H_ENT_I] + s * EI_NCOLS + EI_STALE]:
            return True
    return False


@njit(cache=True)
def rebuild_holdings(IB, pos, wbuy, wsell, cash):
    """Re-list every nonzero cell of the portfolio and resync the cash shadow; all entities
    become stale. O(accounts × instruments). Returns ST_HOLDINGS_FULL if the list is too small."""
    hd = _offsets(IB)
    A, N, C = hd[H_A], hd[H_N], hd[H_C]
    ocell, oh, osh = hd[H_CELL], hd[H_HOLD], hd[H_SHCASH]
    cap = hd[H_HCAP]
    n = 0
    for a in range(A):
        for c in range(C):
            IB[osh + a * C + c] = cash[a, c]
        for i in range(N):
            if pos[a, i] == 0 and wbuy[a, i] == 0 and wsell[a, i] == 0:
                IB[ocell + a * N + i] = -1
                continue
            if n >= cap:
                return ST_HOLDINGS_FULL
            IB[ocell + a * N + i] = n
            h = oh + n * HO_NCOLS
            IB[h + HO_A] = a
            IB[h + HO_I] = i
            IB[h + HO_POS] = pos[a, i]
            IB[h + HO_WB] = wbuy[a, i]
            IB[h + HO_WS] = wsell[a, i]
            n += 1
    IB[H_HN] = n
    for s in range(hd[H_E]):
        IB[hd[H_ENT_I] + s * EI_NCOLS + EI_STALE] = 1
        IB[hd[H_ENT_I] + s * EI_NCOLS + EI_DIRTY] = 1
    return ST_OK


# -- DERIVED SUMS (UCITS 5/10/40, 1940 Act 75-5-10) ----------------------------------------------


@njit(cache=True, inline="always")
def _exempt(hd, IB, u, mask):
    """An issuer is exempt when every one of its instruments is in an exempt asset class."""
    return (IB[hd[H_ISS] + u * IS_NCOLS + IS_CLS_MASK] & ~mask) == 0


@njit(cache=True, inline="always")
def _voting_excess(hd, IB, s, u, extra_i, extra_units, with_working, pct):
    """1 if a voting (equity) line of issuer u held by s exceeds pct of its shares outstanding,
    -1 if one is held but its shares outstanding are unknown, else 0. O(lines of the issuer)."""
    N = hd[H_N]
    ep = IB[hd[H_ENT_I] + s * EI_NCOLS + EI_EPOCH]
    ou = hd[H_ISS] + u * IS_NCOLS
    result = 0
    for k in range(IB[ou + IS_START], IB[ou + IS_END]):
        j = IB[hd[H_ISS_INST] + k]
        oi = hd[H_INST] + j * IN_NCOLS
        if not IB[oi + IN_EQUITY]:
            continue
        lots = 0
        if IB[hd[H_SEEN_I] + s * N + j] == ep:
            lots = IB[hd[H_UP] + s * N + j] + (IB[hd[H_UW] + s * N + j] if with_working else 0)
        units = lots * IB[oi + IN_LOT] + (extra_units if j == extra_i else 0)
        if units <= 0:
            continue
        so = IB[oi + IN_SHARES]
        if so <= 0:
            result = -1
        elif 100.0 * units > pct * so and result == 0:
            result = 1
    return result


@njit(cache=True, inline="always")
def _voting_excess_both(hd, IB, s, u, pct):
    """_voting_excess with and without working buys in one pass over the issuer's lines."""
    N = hd[H_N]
    ep = IB[hd[H_ENT_I] + s * EI_NCOLS + EI_EPOCH]
    ou = hd[H_ISS] + u * IS_NCOLS
    oup, ouw, oseen = hd[H_UP] + s * N, hd[H_UW] + s * N, hd[H_SEEN_I] + s * N
    with_working, positions = 0, 0
    for k in range(IB[ou + IS_START], IB[ou + IS_END]):
        j = IB[hd[H_ISS_INST] + k]
        oi = hd[H_INST] + j * IN_NCOLS
        if not IB[oi + IN_EQUITY] or IB[oseen + j] != ep:
            continue
        lot = IB[oi + IN_LOT]
        so = IB[oi + IN_SHARES]
        held = IB[oup + j] * lot
        units = held + IB[ouw + j] * lot
        if units > 0:
            if so <= 0:
                with_working = -1
            elif with_working == 0 and 100.0 * units > pct * so:
                with_working = 1
        if held > 0:
            if so <= 0:
                positions = -1
            elif positions == 0 and 100.0 * held > pct * so:
                positions = 1
    return with_working, positions


@njit(cache=True, inline="always")
def _emit(out, n, r, code, value, limit, base, expo, key):
    if n < out.shape[0]:
        out[n, OC_RULE] = r
        out[n, OC_PASSED] = 0.0
        out[n, OC_CODE] = code
        out[n, OC_VALUE] = value
        out[n, OC_LIMIT] = limit
        out[n, OC_BASE] = base
        out[n, OC_EXPOSURE] = expo
        out[n, OC_KEY] = key
    return n + 1


@njit(cache=True)
def _votes(hd, IB, s, u, pct, ep, cache):
    """_voting_excess_both; with ``cache`` (pct is s's EF_VOTE_PCT) also stored in VOTE as
    epoch << 4 | codes. The test reads lots only, so the entry holds until s's lots of u change
    (_add_cell clears it) or s is re-summed (a new epoch). O(lines of the issuer)."""
    with_working, positions = _voting_excess_both(hd, IB, s, u, pct)
    if cache:
        IB[hd[H_VOTE] + s * hd[H_U] + u] = (ep << 4) | ((with_working + 1) << 2) | (positions + 1)
    return with_working, positions


@njit(cache=True)
def _issuer_rule(hd, IB, FB, s, r, out, n, emit):
    """One pass over the issuers entity s holds for its rule r (issuer_concentration, UCITS or
    Act40): recomputes the sums of a UCITS / Act40 rule on positions + working buys
    (RF_DERIVED, pre-trade) and on positions (RF_DERIVED_POS, post-trade), NaN when a value is
    unknown; with ``emit`` also evaluates r post-trade and writes its failing rows (per issuer,
    then the aggregate) from row n on. Returns the row count. O(issuers held by s)."""
    B, U = hd[H_B], hd[H_U]
    oe = hd[H_ENT_I] + s * EI_NCOLS
    ep = IB[oe + EI_EPOCH]
    nav = FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV]
    nav_miss = IB[oe + EI_NAV_MISS]
    nav_ok = nav_miss == 0 and nav > 0.0
    ori = hd[H_RULE_I] + r * RI_NCOLS
    orf = hd[H_RULE_F] + r * RF_NCOLS
    kind, mask, code = IB[ori + RI_KIND], IB[ori + RI_EXEMPT], IB[ori + RI_CODE]
    mx = FB[orf + RF_MAX]
    thr = FB[orf + RF_P1] * nav
    pct = FB[orf + RF_P2]
    cached = kind == K_ACT40 and pct == FB[hd[H_ENT_F] + s * EF_NCOLS + EF_VOTE_PCT]
    sums = kind != K_ISSUER_CONC
    per_issuer = emit and nav_ok and kind != K_ACT40
    total = 0.0 if nav_miss == 0 else np.nan
    total_pos = total
    oblist, oagg, omiss = hd[H_BLIST] + s * B, hd[H_AGG] + s * B * 3, hd[H_AGG_MISS] + s * B
    ovote = hd[H_VOTE] + s * U
    for k in range(IB[oe + EI_NB] if nav_miss == 0 and (sums or per_issuer) else 0):
        u = IB[oblist + k]
        if u >= U or _exempt(hd, IB, u, mask):
            continue
        v_pos = FB[oagg + u * 3 + AG_POS]
        if kind == K_ISSUER_CONC:
            if 100.0 * abs(v_pos) > mx * nav:
                n = _emit(out, n, r, code, 100.0 * v_pos / nav, mx, nav, v_pos, u)
            continue
        if IB[omiss + u] > 0:
            total = np.nan  # a working order's instrument has no mark
        v = v_pos + FB[oagg + u * 3 + AG_WB]
        if kind == K_UCITS:
            if per_issuer and 100.0 * v_pos > mx * nav:
                n = _emit(out, n, r, code, 100.0 * v_pos / nav, mx, nav, v_pos, u)
            if 100.0 * v > thr:
                total += v
            if 100.0 * v_pos > thr:
                total_pos += v_pos
        else:
            c = IB[ovote + u] if cached else 0
            if c >> 4 == ep:
                vote, vote_pos = ((c >> 2) & 3) - 1, (c & 3) - 1
            else:
                vote, vote_pos = _votes(hd, IB, s, u, pct, ep, cached)
            if vote < 0:
                total = np.nan
            if vote_pos < 0:
                total_pos = np.nan
            if 100.0 * v > thr or vote > 0:
                total += max(v, 0.0)
            if 100.0 * v_pos > thr or vote_pos > 0:
                total_pos += max(v_pos, 0.0)
    if sums:
        FB[orf + RF_DERIVED] = total
        FB[orf + RF_DERIVED_POS] = total_pos
    if not emit:
        return n
    if not nav_ok:
        return _emit(out, n, r, R_NO_PRICE, np.nan, mx, nav, np.nan, -1)
    if kind == K_ISSUER_CONC:
        return n
    lim = FB[orf + RF_P2] if kind == K_UCITS else 100.0 - FB[orf + RF_P3]
    if not np.isfinite(total_pos):
        return _emit(out, n, r, R_NO_PRICE, np.nan, lim, nav, np.nan, -1)
    if 100.0 * total_pos > lim * nav:
        return _emit(out, n, r, code, 100.0 * total_pos / nav, lim, nav, total_pos, -1)
    return n


@njit(cache=True)
def _derive(hd, IB, FB, s):
    """Recompute the sums of entity s's UCITS / Act40 rules (_issuer_rule without evaluating).
    O(issuers held by s × those rules)."""
    none = FB[:0].reshape((0, OC_NCOLS))
    for r in range(IB[hd[H_ENT_PTR] + s], IB[hd[H_ENT_PTR] + s + 1]):
        kind = IB[hd[H_RULE_I] + r * RI_NCOLS + RI_KIND]
        if kind == K_UCITS or kind == K_ACT40:
            _issuer_rule(hd, IB, FB, s, r, none, 0, False)
    IB[hd[H_ENT_I] + s * EI_NCOLS + EI_DERIVE] = 0


# -- PRE-TRADE -----------------------------------------------------------------------------------


@njit(cache=True)
def check_order(IB, FB, pos, wsell, a, i, side, qty, price, full):
    """Evaluate every rule that applies to (account a, instrument i) on the projected portfolio.

    Writes one OUT row per failing evaluation (per applicable evaluation when ``full``), the row
    of the worst failure (the first of the highest severity; -1 none) to IB[H_WORST], and
    returns the row count. Cached aggregates plus O(1) per rule (O(lines of the issuer) for the
    voting-share test); allocates nothing."""
    hd = _offsets(IB)
    N, B, C, U = hd[H_N], hd[H_B], hd[H_C], hd[H_U]
    oi = hd[H_INST] + i * IN_NCOLS
    u = IB[oi + IN_ISSUER]
    iss_flags = IB[hd[H_ISS] + u * IS_NCOLS + IS_FLAGS]
    unit = FB[hd[H_UNIT] + i]
    oout = hd[H_OUT]
    buy = side == 0
    sgn = 1.0 if buy else -1.0
    n = 0
    worst_sev, worst = S_PASS, -1
    for lvl in range(3):
        s = IB[hd[H_ACCT_ENT] + a * 3 + lvl]
        if s < 0:
            continue
        oe = hd[H_ENT_I] + s * EI_NCOLS
        ep = IB[oe + EI_EPOCH]
        nav = FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV]
        nav_ok = IB[oe + EI_NAV_MISS] == 0 and nav > 0.0
        order_v = qty * price * unit * FB[hd[H_FX] + IB[oi + IN_CCY] * C + IB[oe + EI_CCY]]
        order_ok = price > 0 and np.isfinite(order_v)
        for r in range(IB[hd[H_ENT_PTR] + s], IB[hd[H_ENT_PTR] + s + 1]):
            ori = hd[H_RULE_I] + r * RI_NCOLS
            orf = hd[H_RULE_F] + r * RF_NCOLS
            kind = IB[ori + RI_KIND]
            code = IB[ori + RI_CODE]
            passed = True
            value = 0.0
            limit = 0.0
            base = 0.0
            expo = 0.0
            if kind == K_RESTRICTED or kind == K_WATCH:
                flag = F_RESTRICTED if kind == K_RESTRICTED else F_WATCH
                value = 1.0 if iss_flags & flag else 0.0
                passed = value == 0.0
            elif kind == K_ADV:
                adv = IB[oi + IN_ADV]
                base = float(adv)
                limit = FB[orf + RF_MAX]
                expo = float(qty)
                if adv <= 0:
                    passed, code, value = False, R_NO_PRICE, np.nan
                else:
                    value = 100.0 * qty / adv
                    passed = 100.0 * qty <= limit * adv
            elif kind == K_LOCATE:
                if buy:
                    continue
                proj = pos[a, i] - wsell[a, i] - qty
                if proj >= 0:
                    continue
                loc = IB[hd[H_LOCATE] + a * N + i]
                value = float(-proj)
                limit = float(loc)
                base = float(loc)
                expo = float(proj)
                passed = -proj <= loc
            elif kind == K_SHARES:
                if not buy or not IB[oi + IN_EQUITY]:
                    continue
                lots = qty
                if IB[hd[H_SEEN_I] + s * N + i] == ep:
                    lots += IB[hd[H_UP] + s * N + i] + IB[hd[H_UW] + s * N + i]
                units = lots * IB[oi + IN_LOT]
                so = IB[oi + IN_SHARES]
                limit = FB[orf + RF_MAX]
                base = float(so)
                expo = float(units)
                if so <= 0:
                    passed, code, value = False, R_NO_PRICE, np.nan
                else:
                    value = 100.0 * units / so
                    passed = 100.0 * units <= limit * so
            else:
                # value rules: issuer_concentration, weight_range, ucits, act40
                if kind == K_WEIGHT:
                    b = IB[ori + RI_BUCKET]
                    if b != IB[oi + IN_SECTOR] and b != IB[oi + IN_COUNTRY] and b != IB[oi + IN_CLASS]:
                        continue
                    if (buy and not IB[ori + RI_HAS_MAX]) or (not buy and not IB[ori + RI_HAS_MIN]):
                        continue
                else:
                    b = u
                    if (kind != K_ISSUER_CONC and not buy) or _exempt(hd, IB, u, IB[ori + RI_EXEMPT]):
                        continue
                cur = IB[hd[H_SEEN] + s * B + b] == ep
                bmiss = IB[hd[H_AGG_MISS] + s * B + b] if cur else 0
                held = 0.0
                if cur:
                    oa = hd[H_AGG] + (s * B + b) * 3
                    held = FB[oa + AG_POS] + (FB[oa + AG_WB] if buy else -FB[oa + AG_WS])
                proj = held + sgn * order_v
                base = nav
                expo = proj
                if kind == K_WEIGHT and not buy:
                    limit = FB[orf + RF_MIN]
                elif kind == K_ISSUER_CONC or kind == K_WEIGHT:
                    limit = sgn * FB[orf + RF_MAX]
                else:
                    limit = FB[orf + RF_MAX]
                if not (nav_ok and order_ok and bmiss == 0):
                    passed, code, value = False, R_NO_PRICE, np.nan
                elif kind == K_ISSUER_CONC or kind == K_WEIGHT:
                    value = 100.0 * proj / nav
                    passed = 100.0 * proj <= limit * nav if buy else 100.0 * proj >= limit * nav
                else:
                    if IB[oe + EI_DERIVE]:
                        _derive(hd, IB, FB, s)
                    total = FB[orf + RF_DERIVED]
                    if kind == K_UCITS:
                        value = 100.0 * proj / nav
                        if not np.isfinite(total):
                            passed, code, value = False, R_NO_PRICE, np.nan
                        elif 100.0 * proj > limit * nav:
                            passed = False
                        else:
                            thr = FB[orf + RF_P1] * nav
                            if 100.0 * held > thr:
                                total -= held
                            if 100.0 * proj > thr:
                                total += proj
                            limit = FB[orf + RF_P2]
                            value = 100.0 * total / nav
                            expo = total
                            passed = 100.0 * total <= limit * nav
                    else:
                        p_iss, p_vote = FB[orf + RF_P1], FB[orf + RF_P2]
                        cached = p_vote == FB[hd[H_ENT_F] + s * EF_NCOLS + EF_VOTE_PCT]
                        c = IB[hd[H_VOTE] + s * U + u] if cached else 0
                        if c >> 4 == ep:
                            before = ((c >> 2) & 3) - 1
                        else:
                            before = _votes(hd, IB, s, u, p_vote, ep, cached)[0]
                        after = _voting_excess(hd, IB, s, u, i, qty * IB[oi + IN_LOT], True, p_vote)
                        if not np.isfinite(total) or after < 0:
                            passed, code, value = False, R_NO_PRICE, np.nan
                        else:
                            if before > 0 or 100.0 * held > p_iss * nav:
                                total -= max(held, 0.0)
                            if after > 0 or 100.0 * proj > p_iss * nav:
                                total += max(proj, 0.0)
                            limit = 100.0 - FB[orf + RF_P3]
                            value = 100.0 * total / nav
                            expo = total
                            passed = 100.0 * total <= limit * nav
            if passed:
                code = R_NONE
                if not full:
                    continue
            elif IB[ori + RI_SEV] > worst_sev:
                worst_sev, worst = IB[ori + RI_SEV], n
            o = oout + n * OC_NCOLS
            FB[o + OC_RULE] = r
            FB[o + OC_PASSED] = 1.0 if passed else 0.0
            FB[o + OC_CODE] = code
            FB[o + OC_VALUE] = value
            FB[o + OC_LIMIT] = limit
            FB[o + OC_BASE] = base
            FB[o + OC_EXPOSURE] = expo
            FB[o + OC_KEY] = -1
            n += 1
    IB[H_WORST] = worst
    return n


@njit(cache=True)
def check_batch(IB, FB, pos, wsell, orders, result):
    """check_order for each row (account, instrument, side, qty, price) of ``orders`` against the
    same portfolio; result[k] = (worst severity, its code, its rule or -1). O(orders × rules)."""
    hd = _offsets(IB)
    oout = hd[H_OUT]
    for k in range(orders.shape[0]):
        n = check_order(IB, FB, pos, wsell, orders[k, 0], orders[k, 1], orders[k, 2],
                        orders[k, 3], orders[k, 4], False)
        worst, code, rule = S_PASS, R_NONE, -1
        for m in range(n):
            r = int(FB[oout + m * OC_NCOLS + OC_RULE])
            sev = IB[hd[H_RULE_I] + r * RI_NCOLS + RI_SEV]
            if sev > worst:
                worst, code, rule = sev, int(FB[oout + m * OC_NCOLS + OC_CODE]), r
        result[k, 0] = worst
        result[k, 1] = code
        result[k, 2] = rule


# -- POST-TRADE ----------------------------------------------------------------------------------


@njit(cache=True)
def evaluate_post(IB, FB, out):
    """Evaluate the post-trade rules of the dirty entities on current positions (no working
    orders) and write one row per failing (rule, key) into ``out``, in rule order; flags the
    rules evaluated in RULE_EVAL. An issuer rule is one pass over the entity's issuers that also
    refreshes its derived sums (_issuer_rule); shares_outstanding rules, which read lots only,
    are evaluated only when the entity's lots changed. Returns the number of failing rows (more
    than out holds: call again with a bigger ``out``; this changes nothing but RULE_EVAL, the
    derived sums and their caches, so it can be repeated). O(buckets and lines held by the
    dirty entities × their rules)."""
    hd = _offsets(IB)
    E, N, B = hd[H_E], hd[H_N], hd[H_B]
    n = 0
    for s in range(E):
        oe = hd[H_ENT_I] + s * EI_NCOLS
        if not IB[oe + EI_DIRTY]:
            continue
        ep = IB[oe + EI_EPOCH]
        nav = FB[hd[H_ENT_F] + s * EF_NCOLS + EF_NAV]
        nav_ok = IB[oe + EI_NAV_MISS] == 0 and nav > 0.0
        for r in range(IB[hd[H_ENT_PTR] + s], IB[hd[H_ENT_PTR] + s + 1]):
            ori = hd[H_RULE_I] + r * RI_NCOLS
            orf = hd[H_RULE_F] + r * RF_NCOLS
            kind = IB[ori + RI_KIND]
            if kind == K_RESTRICTED or kind == K_WATCH or kind == K_LOCATE or kind == K_ADV:
                continue
            if kind == K_SHARES and not IB[oe + EI_UNITS_DIRTY]:
                continue  # lots unchanged: its breaches stand as they are
            IB[hd[H_RULE_EVAL] + r] = 1
            if kind == K_ISSUER_CONC or kind == K_UCITS or kind == K_ACT40:
                n = _issuer_rule(hd, IB, FB, s, r, out, n, True)
                continue
            code = IB[ori + RI_CODE]
            mx = FB[orf + RF_MAX]
            if kind == K_SHARES:
                for k in range(IB[oe + EI_NI]):
                    j = IB[hd[H_ILIST] + s * N + k]
                    oi = hd[H_INST] + j * IN_NCOLS
                    units = IB[hd[H_UP] + s * N + j] * IB[oi + IN_LOT]
                    if units <= 0 or not IB[oi + IN_EQUITY]:
                        continue
                    so = IB[oi + IN_SHARES]
                    if so <= 0:
                        n = _emit(out, n, r, R_NO_PRICE, np.nan, mx, 0.0, units, B + j)
                    elif 100.0 * units > mx * so:
                        n = _emit(out, n, r, code, 100.0 * units / so, mx, so, units, B + j)
                continue
            if not nav_ok:
                n = _emit(out, n, r, R_NO_PRICE, np.nan, mx, nav, np.nan, -1)
                continue
            b = IB[ori + RI_BUCKET]
            v = 0.0
            if IB[hd[H_SEEN] + s * B + b] == ep:
                v = FB[hd[H_AGG] + (s * B + b) * 3 + AG_POS]
            mn = FB[orf + RF_MIN]
            if IB[ori + RI_HAS_MAX] and 100.0 * v > mx * nav:
                n = _emit(out, n, r, code, 100.0 * v / nav, mx, nav, v, -1)
            elif IB[ori + RI_HAS_MIN] and 100.0 * v < mn * nav:
                n = _emit(out, n, r, code, 100.0 * v / nav, mn, nav, v, -1)
        IB[oe + EI_DERIVE] = 0  # every UCITS / Act40 rule of s was just re-summed
    return n


@njit(cache=True)
def settle(IB, FB, out, breach_keys, span):
    """evaluate_post, then: when every failing row fits in ``out`` and the failing (rule, key)
    set is the set of breaches in force (``breach_keys``: rule × span + key + 1, sorted) of the
    rules just evaluated, clear the dirty flags and return -1 (no transition); else return the
    row count (the caller diffs the rows, then calls clear_dirty). O(evaluate_post + breaches)."""
    n = evaluate_post(IB, FB, out)
    if n > out.shape[0]:
        return n
    hd = _offsets(IB)
    oeval = hd[H_RULE_EVAL]
    m = 0
    for k in range(breach_keys.shape[0]):
        if IB[oeval + breach_keys[k] // span]:
            m += 1
    if m != n:
        return n
    for k in range(n):  # rows are distinct (rule, key) pairs
        key = int(out[k, OC_RULE]) * span + int(out[k, OC_KEY]) + 1
        j = np.searchsorted(breach_keys, key)
        if j >= breach_keys.shape[0] or breach_keys[j] != key:
            return n
    clear_dirty(IB)
    return -1


@njit(cache=True)
def recheck_batch(IB, FB, marks, fx, changed, out, breach_keys, span):
    """A price / fill batch: revalue, recompute_stale, settle. Returns settle's answer."""
    revalue(IB, FB, marks, fx, changed)
    recompute_stale(IB, FB)
    return settle(IB, FB, out, breach_keys, span)


@njit(cache=True)
def clear_dirty(IB):
    hd = _offsets(IB)
    for s in range(hd[H_E]):
        IB[hd[H_ENT_I] + s * EI_NCOLS + EI_DIRTY] = 0
        IB[hd[H_ENT_I] + s * EI_NCOLS + EI_UNITS_DIRTY] = 0
    o = hd[H_RULE_EVAL]
    for r in range(hd[H_R]):
        IB[o + r] = 0
