"""The positions ledger: positions per account × instrument × location, cost basis and P&L.

``PositionLedger`` wraps the arrays of ``engine.ledger_kernels`` (read its docstring for the
exact arithmetic and rounding). In short:

- **Units.** Prices are ticks, quantities lots; cost, realised and unrealised P&L are exact
  int64 **tick·lots** (price × qty). Money in a currency appears only in ``account_totals``: each
  cell's tick·lots go to minor units of the instrument's currency as ``Portfolio.notional_minor``
  does (exact rational, rounded half up, i.e. toward +∞ on a tie), then are summed per currency;
  the base-currency figure multiplies by ``portfolio.fx`` (float, display only) and is ``None``
  when a rate is missing (never taken as 1) or a held instrument has no mark.
- **Methods.** Each account's ``pnl_method``: "average" (cost removed on a reduce is
  ``floor(|cost| · r / |position|)``, the remainder stays in the basis) or "fifo" (oldest lot
  first, a partial lot gives up ``floor(cost · take / qty)``). Either way closing a position
  realises exactly Σ sells − Σ buys, and at any mark m realised + unrealised = Σ sells − Σ buys +
  position × m. A fill through zero closes at the fill price and opens the rest at it.
- **Locations.** A venue MIC, a custodian, or "INTERNAL" (index 0, Kilat's own book); a location
  only splits the position (Σ locations = position), P&L is per account × instrument.
- **Busts and corrections are for the trading day.** Every booking of the day is kept as a
  history row of its cell (capacity explicit). ``bust`` marks the row dead and ``correct``
  rewrites its quantity and price; either then rebuilds the cell (position, locations, cost,
  lots, realised) by replaying its live rows in their original order onto the cell's opening
  state, so the result is exactly the ledger that never saw the fill / saw it with the corrected
  figures. O(rows of that cell); busts are rare.
- **End of day.** ``end_of_day`` forgets the day's booking ids (a later bust or correction of
  one is ``UNKNOWN_ID``) and compacts the history to carried rows that reproduce each open cell
  exactly (at most open FIFO lots + open cells × locations rows; flat cells keep their realised
  P&L and need none), so the history in use follows the open state, not the bookings ever made.
  Positions and P&L do not change, and later bookings, busts and corrections give exactly what
  they would have without it.
- **Refusals** are values ``(LedgerCode, text)``; capacity (cells, FIFO lots, history rows)
  running out is a refusal, never a crash, and nothing changes on a refusal.

The hot path (``fill``) takes dense integer indices: account (``ref.account_index``),
instrument (``Instrument.index``) and location (``location_index``).
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from fractions import Fraction
from typing import NamedTuple

import msgspec
import numpy as np

from engine import ledger_kernels as k
from engine.constants import BUY
from engine.jit import entry_point as _entry
from engine.model import ConfigError, ReferenceData
from engine.portfolio import Portfolio

INTERNAL = "INTERNAL"


class LedgerCode(IntEnum):
    """Why the ledger refused a booking (7xxx: post-trade booking)."""

    OK = k.OK
    INVALID_QUANTITY = k.R_INVALID_QUANTITY
    INVALID_PRICE = k.R_INVALID_PRICE
    INVALID_SIDE = k.R_INVALID_SIDE
    UNKNOWN_ACCOUNT = k.R_UNKNOWN_ACCOUNT
    UNKNOWN_INSTRUMENT = k.R_UNKNOWN_INSTRUMENT
    UNKNOWN_LOCATION = k.R_UNKNOWN_LOCATION
    SAME_ACCOUNT = k.R_SAME_ACCOUNT
    INVALID_NOTIONAL = k.R_INVALID_NOTIONAL
    TOO_LARGE = k.R_TOO_LARGE
    DUPLICATE_ID = k.R_DUPLICATE_ID
    UNKNOWN_ID = k.R_UNKNOWN_ID
    ALREADY_BUSTED = k.R_ALREADY_BUSTED
    NOT_A_FILL = k.R_NOT_A_FILL
    CELLS_FULL = k.R_CELLS_FULL
    LOTS_FULL = k.R_LOTS_FULL
    HISTORY_FULL = k.R_HISTORY_FULL


Refusal = tuple[LedgerCode, str]

_TEXT = {
    LedgerCode.INVALID_QUANTITY: "quantity must be a positive number of lots",
    LedgerCode.INVALID_PRICE: "price must be a positive number of ticks",
    LedgerCode.INVALID_SIDE: "side must be BUY (0) or SELL (1)",
    LedgerCode.UNKNOWN_ACCOUNT: "unknown account index",
    LedgerCode.UNKNOWN_INSTRUMENT: "unknown instrument index",
    LedgerCode.UNKNOWN_LOCATION: "unknown location index (register it with location_index)",
    LedgerCode.SAME_ACCOUNT: "a transfer needs two different accounts",
    LedgerCode.INVALID_NOTIONAL: "notional must be a positive number of tick·lots",
    LedgerCode.TOO_LARGE: (f"beyond the exact range: |position| ≤ {k.MAX_LOTS} lots, price ≤ "
                           f"{k.MAX_PRICE} ticks, |cost| ≤ {k.MAX_COST} tick·lots"),
    LedgerCode.DUPLICATE_ID: "id already booked",
    LedgerCode.UNKNOWN_ID: "no booking has this id",
    LedgerCode.ALREADY_BUSTED: "the booking was already busted",
    LedgerCode.NOT_A_FILL: "only a fill can be corrected (bust a transfer and book it again)",
    LedgerCode.CELLS_FULL: "no free (account, instrument) cell: raise the ledger's cells capacity",
    LedgerCode.LOTS_FULL: "no free FIFO lot: raise the ledger's lots capacity",
    LedgerCode.HISTORY_FULL: "no free history row: raise the ledger's history capacity",
}


# -- QUERY RESULTS ----------------------------------------------------------------------------


class Position(NamedTuple):
    """One account × instrument. Money fields in tick·lots; ``unrealised`` None = no mark."""

    account: str
    symbol: str
    method: str
    qty: int
    by_location: dict[str, int]
    cost: int
    average_cost: Fraction | None  # cost / qty in ticks; None when flat
    realised: int
    unrealised: int | None
    mark: int


class AccountTotals(NamedTuple):
    """P&L of one account over its cells: exact minor units per currency, and the base-currency
    total (major units, float) or None with the reason in ``unpriced`` / ``missing_fx``."""

    account: str
    base_currency: str
    realised_minor: dict[str, int]
    unrealised_minor: dict[str, int]  # over the cells with a mark
    unpriced: list[str]  # symbols held without a mark: unrealised unknown
    missing_fx: list[str]  # currencies with no rate to the base currency
    realised_base: float | None
    unrealised_base: float | None


class Revaluation(NamedTuple):
    """Per open cell (same row order in every array): unrealised tick·lots at the marks;
    ``known`` False = no mark (``unrealised`` then holds ``UNKNOWN``, never 0)."""

    account: np.ndarray
    instrument: np.ndarray
    position: np.ndarray
    unrealised: np.ndarray
    known: np.ndarray


class CellState(NamedTuple):
    """The logical state of one cell (for comparisons: equal ledgers have equal cells())."""

    qty: int
    cost: int
    realised: int
    by_location: tuple[tuple[str, int], ...]
    lots: tuple[tuple[int, int], ...]


UNKNOWN = k.UNKNOWN


class PositionLedger:
    """Positions, cost and P&L per account × instrument (× location), with busts and corrections.

    Capacities are explicit: ``cells`` (account × instrument pairs ever booked), ``lots`` (FIFO
    lots open at once), ``history`` (bookings, two per transfer). Locations grow on demand.
    """

    def __init__(self, ref: ReferenceData, portfolio: Portfolio, *, cells: int = 65_536,
                 lots: int = 262_144, history: int = 262_144, locations: int = 8):
        for name, value in (("cells", cells), ("lots", lots), ("history", history),
                            ("locations", locations)):
            if value <= 0:
                raise ConfigError(f"ledger {name} capacity: expected a positive integer, got {value}")
        self.ref, self.portfolio = ref, portfolio
        self._accounts = list(ref.accounts.values())
        self._symbols = [inst.symbol for inst in ref.by_index]
        method = np.array([k.FIFO if a.pnl_method == "fifo" else k.AVERAGE for a in self._accounts],
                          dtype=np.int64)
        free = np.zeros((lots, k.N_LOT_COLS), dtype=np.int64)
        free[:, k.L_NEXT] = np.arange(1, lots + 1)
        free[-1, k.L_NEXT] = -1
        meta = np.zeros(k.N_META, dtype=np.int64)
        meta[k.M_FREE_LOT], meta[k.M_FREE_LOTS] = 0, lots
        self._a = {
            "cell_of": np.full((len(self._accounts), len(self._symbols)), -1, dtype=np.int64),
            "method": method,
            "cells": np.zeros((cells, k.N_CELL_COLS), dtype=np.int64),
            "locpos": np.zeros((cells, locations), dtype=np.int64),
            "lots": free,
            "hist": np.zeros((history, k.N_HIST_COLS), dtype=np.int64),
            "openl": np.zeros(cells, dtype=np.int64),
            "meta": meta,
            "rv": np.zeros((k.N_RV_ROWS, cells), dtype=np.int64),
        }
        self._ids: dict[object, int] = {}  # exec id / transfer ref id -> history row
        self._rows = 0  # history rows in use (== meta[M_HIST], kept here for the hot path)
        self.locations: list[str] = []
        self._location_ids: dict[str, int] = {}
        self._bind()
        self.location_index(INTERNAL)
        self._warm()

    def _bind(self) -> None:
        self._st = k.make_state(**self._a)
        self._meta, self._cells, self._locpos = self._a["meta"], self._a["cells"], self._a["locpos"]

    def _warm(self) -> None:
        """Compile (or load from cache) every kernel on a scratch state, then bind the single
        compiled entry points (skips numba's type dispatch on the hot path)."""
        scratch = {name: np.zeros_like(a) for name, a in self._a.items()}
        scratch["cell_of"][:] = -1
        scratch["meta"][k.M_FREE_LOT] = -1
        st = k.make_state(**scratch)
        k.fill(st, 0, 0, 0, BUY, 1, 1)
        k.transfer(st, 0, 0, 0, 0, 1, 1)
        k.bust(st, 0)
        k.correct(st, 0, 1, 1)
        none = np.zeros(0, dtype=np.int64)
        k.retransfer(st, none, none, none, none)
        k.end_of_day(st)
        k.revalue(st, self.portfolio.marks())
        self._k_fill = _entry(k.fill)
        self._k_transfer = _entry(k.transfer)
        self._k_bust = _entry(k.bust)
        self._k_correct = _entry(k.correct)
        self._k_retransfer = _entry(k.retransfer)
        self._k_end_of_day = _entry(k.end_of_day)
        self._k_revalue = _entry(k.revalue)

    # -- LOCATIONS --------------------------------------------------------------------------------

    def location_index(self, name: str) -> int:
        """The index of location ``name``, registering it (and growing capacity) if new. O(1)
        amortised."""
        index = self._location_ids.get(name)
        if index is not None:
            return index
        if not name:
            raise ConfigError("location: expected a venue MIC, a custodian name or 'INTERNAL', got ''")
        index = len(self.locations)
        if index == self._locpos.shape[1]:
            grown = np.zeros((self._locpos.shape[0], 2 * index), dtype=np.int64)
            grown[:, :index] = self._locpos
            self._a["locpos"] = grown
            self._bind()
        self.locations.append(name)
        self._location_ids[name] = index
        self._meta[k.M_LOCATIONS] = len(self.locations)
        return index

    def custodian_index(self, account: int) -> int:
        """The location of ``account``'s custodian ("CUSTODY" when none is configured)."""
        return self.location_index(self._accounts[account].custodian or "CUSTODY")

    # -- COMMANDS ---------------------------------------------------------------------------------

    def fill(self, exec_id, account: int, instrument: int, location: int, side: int, qty: int,
             price: int) -> Refusal | None:
        """Book an execution of ``qty`` lots at ``price`` ticks; None when booked. O(1) (FIFO:
        O(lots consumed))."""
        if exec_id in self._ids:
            return self._refuse(k.R_DUPLICATE_ID, exec_id)
        code = self._k_fill(self._st, account, instrument, location, side, qty, price)
        if code:
            return self._refuse(code, exec_id)
        self._ids[exec_id] = self._rows
        self._rows += 1
        return None

    def transfer(self, ref_id, from_account: int, to_account: int, instrument: int, location: int,
                 qty: int, notional: int) -> Refusal | None:
        """Move ``qty`` lots worth exactly ``notional`` tick·lots from one account to another at
        ``location`` (a block allocation at the block's average): the from-side books a sale of
        ``qty`` at ``notional`` (realising against its basis), the to-side a purchase. A negative
        ``qty`` moves a short (the from-side buys back, the to-side sells). ``bust(ref_id)``
        reverses both sides. O(1) (FIFO: O(lots consumed))."""
        if ref_id in self._ids:
            return self._refuse(k.R_DUPLICATE_ID, ref_id)
        code = self._k_transfer(self._st, from_account, to_account, instrument, location, qty,
                                notional)
        if code:
            return self._refuse(code, ref_id)
        self._ids[ref_id] = self._rows
        self._rows += 2
        return None

    def bust(self, booking_id) -> Refusal | None:
        """Reverse a fill or a transfer exactly (see the module docstring). O(bookings of the
        cells touched)."""
        row = self._ids.get(booking_id)
        if row is None:
            return self._refuse(k.R_UNKNOWN_ID, booking_id)
        code = self._k_bust(self._st, row)
        return self._refuse(code, booking_id) if code else None

    def retransfer(self, changes: list[tuple[object, int, int]]) -> Refusal | None:
        """Re-figure live transfers ``(ref_id, qty, notional)`` at once, each keeping its place
        in the history (a block allocation re-averaged by the block's next fill): every cell
        touched becomes what it would be had the transfers been booked with these figures. None
        when done; on a refusal nothing changed. O(bookings of the cells touched)."""
        if not changes:
            return None
        rows = []
        for ref_id, _, _ in changes:
            row = self._ids.get(ref_id)
            if row is None:
                return self._refuse(k.R_UNKNOWN_ID, ref_id)
            rows.append(row)
        hist = self._a["hist"]
        rows_a = np.array(rows, dtype=np.int64)
        cells = np.unique(np.concatenate((hist[rows_a, k.H_CELL], hist[rows_a + 1, k.H_CELL])))
        code = self._k_retransfer(self._st, rows_a, np.array([c[1] for c in changes], dtype=np.int64),
                                  np.array([c[2] for c in changes], dtype=np.int64), cells)
        return self._refuse(code, changes[0][0]) if code else None

    def correct(self, exec_id, qty: int, price: int) -> Refusal | None:
        """Replace a fill's quantity and price, keeping its side, location and place in the
        history. O(bookings of the cell)."""
        row = self._ids.get(exec_id)
        if row is None:
            return self._refuse(k.R_UNKNOWN_ID, exec_id)
        code = self._k_correct(self._st, row, qty, price)
        return self._refuse(code, exec_id) if code else None

    def end_of_day(self) -> Refusal | None:
        """Close the trading day: the day's bookings can no longer be busted or corrected (their
        ids are forgotten) and the history is compacted to rows that reproduce the open cells
        (see the module docstring); positions, cost, lots and P&L are unchanged. None when done;
        HISTORY_FULL (nothing changed) only if the open state needs more rows than the capacity.
        O(cells × locations + open lots + history rows)."""
        code = self._k_end_of_day(self._st)
        if code:
            code = LedgerCode(code)
            return code, (f"{_TEXT[code]} — end of day: the open cells need more than "
                          f"{len(self._a['hist'])} carried rows")
        self._ids = {}
        self._rows = int(self._meta[k.M_HIST])
        return None

    @staticmethod
    def _refuse(code: int, booking_id) -> Refusal:
        code = LedgerCode(code)
        return code, f"{_TEXT[code]} — booking {booking_id!r}"

    # -- VALUATION --------------------------------------------------------------------------------

    def revalue(self) -> Revaluation:
        """Unrealised P&L of every open cell at ``portfolio.marks()``. O(open cells)."""
        n = self._k_revalue(self._st, self.portfolio.marks())
        rv = self._a["rv"][:, :n].copy()
        return Revaluation(rv[k.RV_ACCOUNT], rv[k.RV_INSTRUMENT], rv[k.RV_POSITION],
                           rv[k.RV_UNREALISED], rv[k.RV_KNOWN] == 1)

    # -- QUERIES ----------------------------------------------------------------------------------

    def _cell(self, account: int, instrument: int) -> int:
        return int(self._a["cell_of"][account, instrument])

    def qty(self, account: int, instrument: int) -> int:
        """Position in lots. O(1)."""
        c = self._cell(account, instrument)
        return 0 if c < 0 else int(self._cells[c, k.C_POS])

    def by_location(self, account: int, instrument: int) -> dict[str, int]:
        """Non-zero position per location name. O(locations)."""
        c = self._cell(account, instrument)
        if c < 0:
            return {}
        row = self._locpos[c]
        return {name: int(row[j]) for j, name in enumerate(self.locations) if row[j]}

    def cost(self, account: int, instrument: int) -> int:
        """Cost of the open position, tick·lots (signed like the position). O(1)."""
        c = self._cell(account, instrument)
        return 0 if c < 0 else int(self._cells[c, k.C_COST])

    def average_cost(self, account: int, instrument: int) -> Fraction | None:
        """cost / qty in ticks, exact; None when flat. O(1)."""
        qty = self.qty(account, instrument)
        return Fraction(self.cost(account, instrument), qty) if qty else None

    def realised(self, account: int, instrument: int) -> int:
        """Realised P&L, tick·lots. O(1)."""
        c = self._cell(account, instrument)
        return 0 if c < 0 else int(self._cells[c, k.C_REALISED])

    def unrealised(self, account: int, instrument: int) -> int | None:
        """position × mark − cost, tick·lots, at the current mark; None when there is a position
        and no mark. O(1)."""
        qty = self.qty(account, instrument)
        if not qty:
            return 0
        mark = int(self.portfolio.mark[instrument])
        return qty * mark - self.cost(account, instrument) if mark > 0 else None

    def lots(self, account: int, instrument: int) -> list[tuple[int, int]]:
        """FIFO lots oldest first as (qty, cost tick·lots), signed; [] for average cost. O(lots)."""
        c = self._cell(account, instrument)
        out: list[tuple[int, int]] = []
        if c < 0:
            return out
        lots, j = self._a["lots"], int(self._cells[c, k.C_LOT_HEAD])
        while j >= 0:
            out.append((int(lots[j, k.L_QTY]), int(lots[j, k.L_COST])))
            j = int(lots[j, k.L_NEXT])
        return out

    def position(self, account: int, instrument: int) -> Position:
        """Everything about one account × instrument. O(locations + lots)."""
        qty = self.qty(account, instrument)
        return Position(self._accounts[account].id, self._symbols[instrument],
                        self._accounts[account].pnl_method, qty,
                        self.by_location(account, instrument), self.cost(account, instrument),
                        self.average_cost(account, instrument), self.realised(account, instrument),
                        self.unrealised(account, instrument), int(self.portfolio.mark[instrument]))

    def account_totals(self, account: int) -> AccountTotals:
        """Realised and unrealised P&L of ``account`` in exact minor units per currency (each
        cell rounded half up as ``Portfolio.notional_minor``) and in its base currency (float;
        None when an FX rate is missing or a held instrument has no mark). O(cells)."""
        pf = self.portfolio
        spec = self._accounts[account]
        base = int(pf.account_base[account])
        realised: dict[str, int] = {}
        unrealised: dict[str, int] = {}
        unpriced: list[str] = []
        row = self._a["cell_of"][account]
        for i in np.flatnonzero(row >= 0).tolist():
            c = int(row[i])
            ccy = pf.currencies[int(pf.inst_currency[i])]
            realised[ccy] = realised.get(ccy, 0) + pf.notional_minor(i, int(self._cells[c, k.C_REALISED]), 1)
            u = self.unrealised(account, i)
            if u is None:
                unpriced.append(self._symbols[i])
            else:
                unrealised[ccy] = unrealised.get(ccy, 0) + pf.notional_minor(i, u, 1)
        missing = sorted(c for c in set(realised) | set(unrealised)
                         if np.isnan(pf.fx[pf.currency_index[c], base]))

        def in_base(amounts: dict[str, int]) -> float | None:
            if missing:
                return None
            return sum(v / 10 ** int(pf.minor[pf.currency_index[c]]) * float(pf.fx[pf.currency_index[c], base])
                       for c, v in sorted(amounts.items()))

        return AccountTotals(spec.id, pf.currencies[base], realised, unrealised, unpriced, missing,
                             in_base(realised), None if unpriced else in_base(unrealised))

    def cells(self) -> dict[tuple[int, int], CellState]:
        """Logical state of every booked (account, instrument), flat ones included only if they
        hold realised P&L. Two ledgers fed equivalent bookings compare equal. O(cells + lots)."""
        out = {}
        for c in range(int(self._meta[k.M_CELLS])):
            row = self._cells[c]
            a, i = int(row[k.C_ACCOUNT]), int(row[k.C_INSTRUMENT])
            if not (row[k.C_POS] or row[k.C_COST] or row[k.C_REALISED]):
                continue
            out[(a, i)] = CellState(int(row[k.C_POS]), int(row[k.C_COST]), int(row[k.C_REALISED]),
                                    tuple(sorted(self.by_location(a, i).items())),
                                    tuple(self.lots(a, i)))
        return out

    def history_rows(self) -> int:
        """History rows in use (the day's bookings plus the rows carried over). O(1)."""
        return self._rows

    # -- INVARIANTS -------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant; raise AssertionError naming the broken one. O(cells × locations
        + lots + history rows)."""
        a = self._a
        meta, cells, lots = self._meta, self._cells, a["lots"]
        n = int(meta[k.M_CELLS])
        used = 0
        for c in range(n):
            row = cells[c]
            where = f"cell {c} ({self._accounts[row[k.C_ACCOUNT]].id}, {self._symbols[row[k.C_INSTRUMENT]]})"
            pos, cost = int(row[k.C_POS]), int(row[k.C_COST])
            assert a["cell_of"][row[k.C_ACCOUNT], row[k.C_INSTRUMENT]] == c, f"{where}: index mismatch"
            total = int(self._locpos[c].sum())
            assert total == pos, f"{where}: locations sum to {total}, position is {pos}"
            assert (pos > 0) == (cost > 0) and (pos < 0) == (cost < 0), \
                f"{where}: cost {cost} does not match the sign of position {pos}"
            assert (row[k.C_OPEN_SLOT] >= 0) == (pos != 0), f"{where}: open list membership"
            if row[k.C_OPEN_SLOT] >= 0:
                assert a["openl"][row[k.C_OPEN_SLOT]] == c, f"{where}: open list slot"
            q = v = count = 0
            j = int(row[k.C_LOT_HEAD])
            while j >= 0:
                lq, lc = int(lots[j, k.L_QTY]), int(lots[j, k.L_COST])
                assert lq != 0 and (lq > 0) == (pos > 0) and (lc > 0) == (lq > 0), \
                    f"{where}: lot {j} ({lq}, {lc}) against position {pos}"
                q, v, count = q + lq, v + lc, count + 1
                j = int(lots[j, k.L_NEXT])
            if row[k.C_METHOD] == k.FIFO:
                assert (q, v) == (pos, cost), f"{where}: lots sum to ({q}, {v}), cell has ({pos}, {cost})"
            assert count == row[k.C_NLOTS], f"{where}: {count} lots linked, {row[k.C_NLOTS]} counted"
            used += count
        free, j = 0, int(meta[k.M_FREE_LOT])
        while j >= 0:
            free, j = free + 1, int(lots[j, k.L_NEXT])
        assert free == meta[k.M_FREE_LOTS], f"free lot list has {free}, counted {meta[k.M_FREE_LOTS]}"
        assert free + used == len(lots), f"lots leaked: {free} free + {used} used != {len(lots)}"
        open_n = int(meta[k.M_OPEN])
        assert open_n == sum(1 for c in range(n) if cells[c, k.C_POS] != 0), "open list size"
        rows = int(meta[k.M_HIST])
        assert rows == self._rows, f"history rows: kernel {rows}, wrapper {self._rows}"
        assert all(0 <= r < rows for r in self._ids.values()), "a booking id points past the history"
        self._validate_history(n, rows)

    def _validate_history(self, n_cells: int, rows: int) -> None:
        """Each cell's rows are linked forward within the cell, carried rows before bookings."""
        hist, cells = self._a["hist"][:rows], self._cells[:n_cells]
        cell, nxt = hist[:, k.H_CELL], hist[:, k.H_NEXT]
        assert ((cell >= 0) & (cell < n_cells)).all(), "a history row names no cell"
        linked = np.flatnonzero(nxt >= 0)
        assert (nxt[linked] > linked).all(), "a history row links backwards"
        assert (cell[nxt[linked]] == cell[linked]).all(), "a history row links to another cell"
        carried = hist[:, k.H_KIND] >= k.K_OPEN_LOT
        assert (carried[linked] | ~carried[nxt[linked]]).all(), "a carried row follows a booking"
        heads = cells[:, k.C_HIST_HEAD]
        has = np.flatnonzero(heads >= 0)
        assert (cell[heads[has]] == has).all(), "a cell's first history row is another cell's"
        assert len(has) + len(linked) == rows, "history rows outside every cell's list"

    def state_hash(self) -> bytes:
        """blake2b-128 over the used part of every array, the booking ids and the locations."""
        h = hashlib.blake2b(digest_size=16)
        for name, arr in self._used().items():
            h.update(name.encode())
            h.update(arr.tobytes())
        h.update(msgspec.msgpack.encode(sorted(((r, i) for i, r in self._ids.items()), key=lambda t: t[0])))
        h.update(msgspec.msgpack.encode(self.locations))
        return h.digest()

    def _used(self) -> dict[str, np.ndarray]:
        meta = self._meta
        n_c, n_h, n_o = int(meta[k.M_CELLS]), int(meta[k.M_HIST]), int(meta[k.M_OPEN])
        return {"cell_of": self._a["cell_of"], "cells": self._cells[:n_c],
                "locpos": self._locpos[:n_c, :len(self.locations)], "lots": self._a["lots"],
                "hist": self._a["hist"][:n_h], "openl": self._a["openl"][:n_o], "meta": meta}

    # -- SNAPSHOTS --------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The whole ledger as msgpack bytes (capacities included)."""
        used = {"hist": self._a["hist"][: self._rows]}  # the rest is free: only its size is kept
        arrays = [(name, str(a.dtype), list(a.shape), a.tobytes())
                  for name, a in ((n, used.get(n, a)) for n, a in self._a.items())
                  if name not in ("method", "rv")]
        ids = sorted(((r, i) for i, r in self._ids.items()), key=lambda t: t[0])
        return msgspec.msgpack.encode(_LedgerState(arrays, ids, self.locations, len(self._a["hist"])))

    def load(self, data: bytes) -> None:
        """Replace this ledger's state with a dump (same reference data; capacities come from the
        dump). Accounts and instruments added at the end of the config since start flat."""
        state = msgspec.msgpack.decode(data, type=_LedgerState)
        for name, dtype, shape, raw in state.arrays:
            old = np.frombuffer(raw, dtype=dtype).reshape(shape)
            if name == "cell_of":
                new = np.full_like(self._a["cell_of"], -1)
                new[: shape[0], : shape[1]] = old
            elif name == "hist":
                new = np.zeros((max(state.history, shape[0]), shape[1]), dtype=np.int64)
                new[: shape[0]] = old
            elif name == "cells" and shape[1] < k.N_CELL_COLS:  # a dump from before end_of_day
                new = np.zeros((shape[0], k.N_CELL_COLS), dtype=np.int64)
                new[:, : shape[1]] = old
            else:
                new = old.copy()
            self._a[name] = new
        self._a["rv"] = np.zeros((k.N_RV_ROWS, len(self._a["cells"])), dtype=np.int64)
        self._ids = {booking_id: row for row, booking_id in state.ids}
        self.locations = list(state.locations)
        self._location_ids = {name: j for j, name in enumerate(self.locations)}
        self._bind()
        self._rows = int(self._meta[k.M_HIST])


class _LedgerState(msgspec.Struct):
    arrays: list[tuple[str, str, list[int], bytes]]
    ids: list[tuple[int, str | int]]
    locations: list[str]
    history: int = 0  # history capacity (the dump holds only the rows in use); 0: len(hist)


def _check_mirrors() -> None:
    for code in LedgerCode:
        if code is not LedgerCode.OK and code not in _TEXT:
            raise AssertionError(f"LedgerCode.{code.name} has no text")


_check_mirrors()
