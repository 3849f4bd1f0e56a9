"""Jitted remainder steps of block-order allocation (see ``engine.allocation`` for the rule).

Both kernels work on int64 arrays indexed by account and return an int status. They are exact
only while every product they form fits in int64; ``engine.allocation`` checks that bound
(``KERNEL_LIMIT``) before each call and otherwise runs its pure-Python twin, which the tests
hold equal to these kernels.

Scratch arrays are passed in (preallocated by the caller, one row per column constant below);
the stable sorts of the candidate list allocate, which is O(candidates) per fill.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# -- STATUS CODES --------------------------------------------------------------------------------

OK = 0
INFEASIBLE = 1  # the previous allocation cannot be extended: a broken invariant, never expected

# -- SCRATCH ROWS --------------------------------------------------------------------------------

S_REM = 0  # remainder of the exact share, numerator over the total weight (or over the lots)
S_FLOOR = 1  # whole lots (or notional units) of the exact share
S_BY_ROT = 2  # account at each position of this fill's rotation
S_CAND = 3  # candidates for the remainder, in rotation order
S_KEY = 4  # sort key of each candidate
S_NROWS = 5

# Every product a kernel forms stays below this; the caller checks before calling.
KERNEL_LIMIT = 1 << 62


@njit(cache=True)
def split_lots(weights, lots, filled, total, rotpos, scratch, out):
    """Cumulative lots per account after the block's cumulative fill reaches ``filled``.

    ``lots`` is the allocation before the fill; ``out`` receives the one after it: every account
    first gets its floor share (never less than it had), then the lots left go one each to the
    eligible accounts (below their exact share) whose next lot falls due first, ties to the
    larger remainder, then to the earlier rotation position. O(n) plus a sort of the accounts
    tied at the cut-off due; returns OK or INFEASIBLE.
    """
    n = weights.shape[0]
    rem, floor, by_rot = scratch[S_REM], scratch[S_FLOOR], scratch[S_BY_ROT]
    cand, key = scratch[S_CAND], scratch[S_KEY]
    placed = 0
    for i in range(n):
        by_rot[rotpos[i]] = i
        p = filled * weights[i]
        f = p // total
        floor[i] = f
        rem[i] = p - f * total
        v = lots[i] if lots[i] > f else f
        out[i] = v
        placed += v
    left = filled - placed
    if left < 0:
        return INFEASIBLE
    if left == 0:
        return OK
    m = 0
    for k in range(n):
        i = by_rot[k]
        if rem[i] > 0 and out[i] == floor[i]:
            cand[m] = i
            m += 1
    if m < left:
        return INFEASIBLE
    if m == left:
        for k in range(m):
            out[cand[k]] += 1
        return OK
    for k in range(m):
        i = cand[k]
        key[k] = ((out[i] + 1) * total + weights[i] - 1) // weights[i]  # due at this fill qty
    # the left-th earliest due; everything due before it gets a lot, the accounts due exactly
    # then compete by remainder, then by rotation (cand is in rotation order: stable sort)
    cut = np.partition(key[:m], left - 1)[left - 1]
    tied = 0
    for k in range(m):
        i = cand[k]
        if key[k] < cut:
            out[i] += 1
            left -= 1
        elif key[k] == cut:
            cand[tied] = i  # tied <= k: compacting in place keeps the rotation order
            key[tied] = -rem[i]
            tied += 1
    by_rem = np.argsort(key[:tied], kind="mergesort")
    for k in range(left):
        out[cand[by_rem[k]]] += 1
    return OK


@njit(cache=True)
def split_notional(lots, filled, notional, rotpos, scratch, out):
    """Cumulative notional per account: ``notional * lots[i] / filled`` rounded down, the units
    left to the largest remainders, ties to the earlier rotation position. O(n)."""
    n = lots.shape[0]
    rem, by_rot, cand, key = scratch[S_REM], scratch[S_BY_ROT], scratch[S_CAND], scratch[S_KEY]
    placed = 0
    for i in range(n):
        by_rot[rotpos[i]] = i
        p = notional * lots[i]
        f = p // filled
        rem[i] = p - f * filled
        out[i] = f
        placed += f
    left = notional - placed
    if left == 0:
        return OK
    m = 0
    for k in range(n):
        i = by_rot[k]
        if rem[i] > 0:
            cand[m] = i
            key[m] = -rem[i]
            m += 1
    if m < left or left < 0:
        return INFEASIBLE
    # the left-th largest remainder; larger ones get a unit, equal ones in rotation order
    cut = np.partition(key[:m], left - 1)[left - 1]
    for k in range(m):
        if key[k] < cut:
            out[cand[k]] += 1
            left -= 1
    for k in range(m):
        if left == 0:
            break
        if key[k] == cut:
            out[cand[k]] += 1
            left -= 1
    return OK


def warm_up() -> None:
    """Compile (or load from cache) both kernels."""
    w = np.array([1, 2], dtype=np.int64)
    scratch = np.zeros((S_NROWS, 2), dtype=np.int64)
    out = np.zeros(2, dtype=np.int64)
    rot = np.array([0, 1], dtype=np.int64)
    split_lots(w, np.zeros(2, dtype=np.int64), 1, 3, rot, scratch, out)
    split_notional(out.copy(), 1, 7, rot, scratch, np.zeros(2, dtype=np.int64))
