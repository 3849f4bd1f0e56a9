"""Block-order allocation: each fill of a block order is split over its accounts as it arrives.

A PM's block order trades once, in the block account; ``BlockAllocator`` turns every fill into
increments per account. It is pure and deterministic (a fold over fills, amends and cancels),
so replay gives the same allocations and the same ``state_hash``.

Quantities are in the engine's quantity units; ``lot`` is the allocation granularity (a round
lot of 100 shares: ``lot=100``), every fill must be a multiple of it and every account receives
whole lots. Notional is an exact integer (price ticks × quantity). The caller turns each method
into integer weights: explicit quantities → the quantities (``capped=True``: they are also caps);
percentages → basis points; target weights → weight × the account's NAV in minor units;
pro-rata by NAV → NAV in minor units.

The invariants, after every call (``validate()`` checks them)
--------------------------------------------------------------
With ``Q`` the block's cumulative filled lots, ``N`` its cumulative notional and ``q_i = Q·w_i/W``
account ``i``'s exact share:

* Σ lots_i == Q and Σ notional_i == N, exactly;
* quota: floor(q_i) <= lots_i <= ceil(q_i), so every account is within one lot of its exact
  share after every fill, and (capped) never above its explicit quantity;
* monotone: a fill never takes a lot away from an account;
* average price: notional_i is ``N·lots_i/Q`` rounded (Hamilton, below), so every account's
  average price is the block's within one notional unit per lot.

The remainder rule for lots, and why it is not plain Hamilton
-------------------------------------------------------------
Hamilton (largest remainder) recomputed on the cumulative quantity is not monotone (the Alabama
paradox: weights 6/6/2 give 4/4/2 at 10 lots and 5/5/1 at 11, the third account gives a lot
back). Hamilton constrained to be monotone (keep what you have, hand the rest out by largest
remainder) can paint itself into a corner where some account must fall below its floor: weights
8/8/8/1/1, cumulative fills 1, 3, 4, 5, 6, 10, 11, 12 leave 4/3/3/1/1 (the two small accounts
took round-ups on their large remainders); at 13 the floors are 4/4/4/0/0, so the big accounts
need 12 lots, the small ones hold 2, and 14 > 13. So the remainder goes by urgency instead.

Treat lot ``k`` of account ``i`` as a job: it may be handed out once the cumulative fill ``h``
gives ``q_i(h) > k-1`` (upper quota) and must be handed out by ``h >= k·W/w_i`` (lower quota).
On each fill taking the block from ``Q`` to ``Q'`` lots:

1. every account is raised to ``max(lots_i, floor(q_i(Q')))`` (its due lots);
2. the ``r`` lots left go one each to the accounts still below their exact share
   (``lots_i == floor(q_i) < q_i``), ordered by
   a. **due**: the cumulative fill at which their next lot falls due,
      ``ceil((lots_i + 1)·W / w_i)``, earliest first;
   b. **remainder** (Hamilton): the larger ``Q'·w_i mod W`` first;
   c. **rotation**: the accounts in a fixed cyclic order — sorted by the 8-byte blake2b of
      ``block_id + "\\0" + account`` — starting at position ``(H + fills so far) mod n``, with
      ``H`` the 8-byte blake2b of ``block_id`` read big-endian; earlier position first.

Earliest-due-first is optimal for unit jobs with release times and deadlines (exchange
argument), so this step never strands a future fill: quota and monotonicity hold after every
fill of any size, forever. Among equally urgent accounts it is Hamilton.

Why ties cannot be gamed: the cyclic order is a hash of the engine-assigned block id and the
account, so neither the order of the account list nor an account's name decides it; the start
moves by one position per fill, so repeated ties go round; and whatever a tie decides is less
than one lot, held only until the other accounts' lots fall due.

Example: three accounts at 1/3 each (weights 1/1/1), one fill of 100 lots. Each is raised to
33 (floor of 33.33); one lot is left; all three are below their share, all due at
``ceil(34·3/1) = 102`` with the same remainder (100 mod 3 = 1), so the lot goes to the first of
the three in the rotation. For block ``"B-1"`` the hashed cyclic order happens to be A, B, C
and ``H mod 3 = 2``, so the first fill's rotation starts at C: A/B/C = 33/33/34. A
second fill of 1 lot (101 in all, shares 33.67): A and B are below their share, both due at 102,
same remainder; the rotation now starts one further on, at A, so A gets it: 34/33/34.

The notional remainder is plain Hamilton over ``N·lots_i/Q`` (no monotonicity is needed there:
when the block's average price moves, every account's notional follows it), ties by the same
rotation. An account that got no lots on a fill may therefore still get a notional increment.

Amend and cancel
----------------
``amend`` re-splits everything filled so far under the new weights (and accounts) as if it had
been one fill from nothing (a state the rule could have reached, so later fills keep every
invariant), and returns the deltas, negative where an account gives lots back. ``cancel`` hands
every allocation back to the block account; fills after it stay in the block account until an
``amend`` gives a new instruction.
"""

from __future__ import annotations

import hashlib
from math import gcd

import msgspec
import numpy as np

from engine import allocation_kernels as kernels

__all__ = ["AllocatorState", "BlockAllocator", "Increment"]

Increment = tuple[str, int, int]  # (account, quantity, notional)

_INT64_MAX = (1 << 63) - 1


class AllocatorState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a ``BlockAllocator`` is; lots are in allocation lots (quantity // lot)."""

    block_id: str
    accounts: list[str]
    weights: list[int]
    lot: int
    capped: bool
    active: bool  # False after cancel(), until the next amend()
    fills: int
    filled_lots: int
    filled_notional: int
    lots: list[int]
    notional: list[int]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AllocatorState)


class BlockAllocator:
    """Splits the fills of one block order over its accounts (see the module docstring)."""

    def __init__(
        self,
        accounts: list[str],
        weights: list[int],
        lot: int = 1,
        *,
        block_id: str = "",
        capped: bool = False,
    ):
        if not isinstance(block_id, str):
            raise ValueError(f"block_id must be a str, got {block_id!r}")
        if not isinstance(lot, int) or isinstance(lot, bool) or lot <= 0:
            raise ValueError(f"lot must be a positive int, got {lot!r} — block {block_id}")
        self.block_id = block_id
        self.lot = lot
        self.capped = bool(capped)
        self._check_instruction(list(accounts), list(weights), 0)
        self._fills = 0
        self._filled = 0  # lots
        self._notional = 0
        self._active = True
        self._offset = int.from_bytes(_digest(block_id), "big")
        self._set_instruction(list(accounts), list(weights))
        self._lots = np.zeros(len(self.accounts), dtype=np.int64)
        self._alloc_notional = np.zeros(len(self.accounts), dtype=np.int64)

    # -- COMMANDS --------------------------------------------------------------------------------

    def on_fill(self, qty: int, notional: int) -> list[Increment]:
        """Allocate a fill of ``qty`` (a positive multiple of ``lot``) with exact ``notional``.

        Returns (account, quantity, notional) increments for the accounts whose allocation
        changed; quantities are never negative. O(n log n) in the accounts.
        """
        self._check_fill(qty, notional)
        self._filled += qty // self.lot
        self._notional += notional
        self._fills += 1
        if not self._active:
            return []
        lots = self._split_lots(self._lots, self._filled, self._fills - 1)
        return self._apply(lots, self._fills - 1)

    def amend(self, weights: list[int], accounts: list[str] | None = None) -> list[Increment]:
        """Re-split everything filled so far under new ``weights`` (and ``accounts``, else the
        current ones). Returns deltas, negative where an account gives back; an account dropped
        from the instruction gives back everything. O(n log n)."""
        accounts = list(self.accounts if accounts is None else accounts)
        weights = list(weights)
        self._check_instruction(accounts, weights, self._filled)
        old = dict(zip(self.accounts, zip(self._lots.tolist(), self._alloc_notional.tolist(),
                                          strict=True), strict=True))
        self._set_instruction(accounts, weights)
        self._active = True
        zeros = np.zeros(len(accounts), dtype=np.int64)
        self._lots, self._alloc_notional = zeros, zeros.copy()
        lots = self._split_lots(zeros, self._filled, self._fills)
        notional = self._split_notional(lots, self._fills)
        self._lots, self._alloc_notional = lots, notional
        deltas: list[Increment] = []
        for account, n_lots, n_notional in zip(accounts, lots.tolist(), notional.tolist(),
                                               strict=True):
            o_lots, o_notional = old.pop(account, (0, 0))
            if n_lots != o_lots or n_notional != o_notional:
                deltas.append((account, (n_lots - o_lots) * self.lot, n_notional - o_notional))
        for account, (o_lots, o_notional) in old.items():
            if o_lots or o_notional:
                deltas.append((account, -o_lots * self.lot, -o_notional))
        return deltas

    def cancel(self) -> list[Increment]:
        """Hand every allocation back to the block account; returns the (negative) deltas.
        Later fills stay in the block account until ``amend``. O(n)."""
        deltas = [
            (account, -n_lots * self.lot, -n_notional)
            for account, n_lots, n_notional in zip(
                self.accounts, self._lots.tolist(), self._alloc_notional.tolist(), strict=True)
            if n_lots or n_notional
        ]
        self._lots[:] = 0
        self._alloc_notional[:] = 0
        self._active = False
        return deltas

    # -- QUERIES ---------------------------------------------------------------------------------

    @property
    def filled_qty(self) -> int:
        """Cumulative filled quantity of the block. O(1)."""
        return self._filled * self.lot

    @property
    def filled_notional(self) -> int:
        """Cumulative notional of the block. O(1)."""
        return self._notional

    @property
    def active(self) -> bool:
        """False after ``cancel()`` until the next ``amend()``. O(1)."""
        return self._active

    def allocations(self) -> list[Increment]:
        """Cumulative (account, quantity, notional) of every account, in instruction order.
        O(n)."""
        return list(zip(self.accounts, (self._lots * self.lot).tolist(),
                        self._alloc_notional.tolist(), strict=True))

    def validate(self) -> None:
        """Check every invariant of the module docstring; raises AssertionError. O(n)."""
        lots = self._lots.tolist()
        notional = self._alloc_notional.tolist()
        if not self._active:
            assert not any(lots) and not any(notional), "a canceled allocation holds lots"
            return
        total, filled = self._total, self._filled
        assert sum(lots) == filled, f"Σ lots {sum(lots)} != filled {filled}"
        assert sum(notional) == self._notional, f"Σ notional != filled {self._notional}"
        for account, w, a, n in zip(self.accounts, self.weights, lots, notional, strict=True):
            assert abs(a * total - filled * w) < total, f"{account}: {a} lots outside quota"
            if filled:
                assert abs(n * filled - self._notional * a) < filled, f"{account}: notional"
            if self.capped:
                assert a * self.lot <= w, f"{account}: {a} lots above its cap {w}"

    @property
    def state(self) -> AllocatorState:
        return AllocatorState(
            block_id=self.block_id, accounts=list(self.accounts), weights=list(self.weights),
            lot=self.lot, capped=self.capped, active=self._active, fills=self._fills,
            filled_lots=self._filled, filled_notional=self._notional,
            lots=self._lots.tolist(), notional=self._alloc_notional.tolist(),
        )

    def dump(self) -> bytes:
        """The state as msgpack. O(n)."""
        return _encoder.encode(self.state)

    @classmethod
    def load(cls, data: bytes | AllocatorState) -> BlockAllocator:
        """Rebuild from ``dump()`` bytes (or a state); checks the invariants. O(n)."""
        s = data if isinstance(data, AllocatorState) else _decoder.decode(data)
        self = cls(s.accounts, s.weights, s.lot, block_id=s.block_id, capped=s.capped)
        if len(s.lots) != len(s.accounts) or len(s.notional) != len(s.accounts):
            raise ValueError(f"state has {len(s.accounts)} accounts but {len(s.lots)} lots and "
                             f"{len(s.notional)} notional entries — block {s.block_id}")
        self._active, self._fills = s.active, s.fills
        self._filled, self._notional = s.filled_lots, s.filled_notional
        self._lots = np.array(s.lots, dtype=np.int64)
        self._alloc_notional = np.array(s.notional, dtype=np.int64)
        self.validate()
        return self

    def state_hash(self) -> bytes:
        """blake2b-128 of ``dump()``. O(n)."""
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    # -- INTERNALS -------------------------------------------------------------------------------

    def _check_instruction(self, accounts: list[str], weights: list[int], filled: int) -> None:
        where = f"block {self.block_id}"
        if not accounts:
            raise ValueError(f"a block needs at least one account, got none — {where}")
        if len(accounts) != len(weights):
            raise ValueError(f"accounts and weights must have the same length, got "
                             f"{len(accounts)} accounts and {len(weights)} weights — {where}")
        seen: set[str] = set()
        for account, w in zip(accounts, weights, strict=True):
            if not isinstance(account, str) or not account:
                raise ValueError(f"accounts must be non-empty str, got {account!r} — {where}")
            if account in seen:
                raise ValueError(f"accounts must be distinct, got {account!r} twice — {where}")
            seen.add(account)
            if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= _INT64_MAX:
                raise ValueError(f"weight must be an int in 0..2**63-1, got {w!r} for account "
                                 f"{account} — {where}")
            if self.capped and w % self.lot:
                raise ValueError(f"explicit quantity must be a multiple of lot size {self.lot}, "
                                 f"got {w} for account {account} — {where}")
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"weights must have a positive total, got {total} — {where}")
        if self.capped and filled * self.lot > total:
            raise ValueError(f"explicit quantities total {total} but {filled * self.lot} is "
                             f"already filled — {where}")

    def _check_fill(self, qty: int, notional: int) -> None:
        where = f"block {self.block_id}"
        if not isinstance(qty, int) or isinstance(qty, bool) or qty <= 0 or qty % self.lot:
            raise ValueError(f"qty must be a positive multiple of lot size {self.lot}, "
                             f"got {qty!r} — {where}")
        if not isinstance(notional, int) or isinstance(notional, bool):
            raise ValueError(f"notional must be an int (price ticks × quantity), "
                             f"got {notional!r} — {where}")
        filled = (self._filled + qty // self.lot) * self.lot
        if self.capped and filled > self._total:
            raise ValueError(f"fill of {qty} takes the block to {filled}, above its explicit "
                             f"quantities' total {self._total} — {where}")
        if filled > _INT64_MAX or abs(self._notional + notional) > _INT64_MAX:
            raise ValueError(f"fill of {qty} / notional {notional} overflows int64 — {where}")

    def _set_instruction(self, accounts: list[str], weights: list[int]) -> None:
        self.accounts = accounts
        self.weights = weights
        self._total = sum(weights)
        g = 0
        for w in weights:
            g = gcd(g, w)
        self._w = [w // g for w in weights]  # same split, smaller products
        self._w_total = self._total // g
        self._w_arr = np.array(self._w, dtype=np.int64)
        self._account_arr = np.array(accounts, dtype=object)
        n = len(accounts)
        keys = [_digest(f"{self.block_id}\x00{a}") for a in accounts]
        order = sorted(range(n), key=lambda i: (keys[i], accounts[i]))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n, dtype=np.int64)
        self._rank = rank
        self._scratch = np.zeros((kernels.S_NROWS, n), dtype=np.int64)

    def _rotpos(self, seq: int) -> np.ndarray:
        """Each account's position in the rotation of fill number ``seq`` (0-based)."""
        n = len(self.accounts)
        return (self._rank - (self._offset + seq) % n) % n

    def _split_lots(self, lots: np.ndarray, filled: int, seq: int) -> np.ndarray:
        rotpos = self._rotpos(seq)
        if (filled + 2) * self._w_total < kernels.KERNEL_LIMIT:
            out = np.empty_like(lots)
            status = kernels.split_lots(self._w_arr, lots, filled, self._w_total, rotpos,
                                        self._scratch, out)
        else:
            status, new = split_lots_exact(self._w, lots.tolist(), filled, self._w_total,
                                           rotpos.tolist())
            out = np.array(new, dtype=np.int64)
        if status != kernels.OK:
            raise AssertionError(f"allocation of block {self.block_id} cannot be extended to "
                                 f"{filled} lots: broken invariant")
        return out

    def _split_notional(self, lots: np.ndarray, seq: int) -> np.ndarray:
        filled, notional = self._filled, self._notional
        if filled == 0:
            return np.zeros_like(lots)
        rotpos = self._rotpos(seq)
        if (abs(notional) + 1) * filled < kernels.KERNEL_LIMIT:
            out = np.empty_like(lots)
            status = kernels.split_notional(lots, filled, notional, rotpos, self._scratch, out)
        else:
            status, new = split_notional_exact(lots.tolist(), filled, notional, rotpos.tolist())
            out = np.array(new, dtype=np.int64)
        if status != kernels.OK:
            raise AssertionError(f"notional split of block {self.block_id} failed")
        return out

    def _apply(self, lots: np.ndarray, seq: int) -> list[Increment]:
        notional = self._split_notional(lots, seq)
        d_lots = lots - self._lots
        d_notional = notional - self._alloc_notional
        self._lots, self._alloc_notional = lots, notional
        if self.lot != 1:
            d_lots *= self.lot
        changed = np.flatnonzero(d_lots | d_notional)
        if len(changed) == len(self.accounts):  # the average price moved: everyone changes
            return list(zip(self.accounts, d_lots.tolist(), d_notional.tolist(),
                            strict=True))
        return list(zip(self._account_arr[changed].tolist(), d_lots[changed].tolist(),
                        d_notional[changed].tolist(), strict=True))


# -- WEIGHTS FROM VALUATIONS -------------------------------------------------------------------

#: Bits NAV-based weights keep (``quantize_weights``): the largest weight becomes 2**30.
WEIGHT_BITS = 30


def quantize_weights(weights: list[int], bits: int = WEIGHT_BITS) -> list[int]:
    """Scale non-negative weights so the largest is ``2**bits`` (each rounded half up, a positive
    weight never below 1), for weights that are valuations (NAV in minor units, or NAV × a target
    weight, ~1e13-1e17): they keep their ratios within 2**-bits of the largest weight — far finer
    than a NAV computed from marks is known — and the allocation kernels' int64 products hold
    (weights this size would otherwise take the Python-int path at several times the cost). A
    list whose largest weight is already at most ``2**bits`` is returned unchanged. O(n)."""
    top = max(weights, default=0)
    if top <= 1 << bits or min(weights) < 0:  # small already, or invalid: the allocator says why
        return list(weights)
    scale = 1 << bits
    return [0 if w == 0 else max(1, (2 * w * scale + top) // (2 * top)) for w in weights]


# -- THE RULE IN PLAIN PYTHON (exact for any magnitude; the kernels' oracle) ----------------------


def split_lots_exact(weights: list[int], lots: list[int], filled: int, total: int,
                     rotpos: list[int]) -> tuple[int, list[int]]:
    """Python-int twin of ``allocation_kernels.split_lots``: (status, new lots). O(n log n)."""
    floor = [filled * w // total for w in weights]
    rem = [filled * w % total for w in weights]
    out = [a if a > f else f for a, f in zip(lots, floor, strict=True)]
    left = filled - sum(out)
    cand = [i for i in range(len(out)) if rem[i] > 0 and out[i] == floor[i]]
    if left < 0 or len(cand) < left:
        return kernels.INFEASIBLE, out
    cand.sort(key=lambda i: (-((out[i] + 1) * total // -weights[i]), -rem[i], rotpos[i]))
    for i in cand[:left]:
        out[i] += 1
    return kernels.OK, out


def split_notional_exact(lots: list[int], filled: int, notional: int,
                         rotpos: list[int]) -> tuple[int, list[int]]:
    """Python-int twin of ``allocation_kernels.split_notional``: (status, new notional)."""
    out = [notional * a // filled for a in lots]
    rem = [notional * a % filled for a in lots]
    left = notional - sum(out)
    cand = [i for i in range(len(out)) if rem[i] > 0]
    if not 0 <= left <= len(cand):
        return kernels.INFEASIBLE, out
    cand.sort(key=lambda i: (-rem[i], rotpos[i]))
    for i in cand[:left]:
        out[i] += 1
    return kernels.OK, out


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()
