"""Positions, working orders, cash and marks: the state risk and compliance read.

The pipeline's stage 7 keeps it current (every accept, fill, cancel, expiry and replace goes
through here, live and on replay); ``PriceTick`` commands move the marks. State is numpy arrays
indexed ``[account, instrument]`` or ``[account, currency]`` so numba checks can read it whole.

Money is exact where it is a ledger: ``cash`` and ``held`` are int64 minor units of the currency
(ISO 4217 precision from CLDR via babel). A buy holds its notional while it works; each fill or
cancel releases the difference of the rounded totals, so holds telescope back to exactly zero.
Valuations (market value, NAV, exposure) are float64 ratios' inputs, never booked.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from fractions import Fraction

import msgspec
import numpy as np
from babel.numbers import get_currency_precision, is_currency

from engine.constants import BUY, LIMIT, STOP, STOP_LIMIT
from engine.model import ConfigError, ReferenceData
from engine.orders import OrderStatus


def minor_units(currency: str) -> int:
    """Decimal places of an ISO 4217 currency (USD 2, JPY 0, BHD 3); refuses unknown codes."""
    if not is_currency(currency):
        raise ConfigError(f"{currency!r} is not an ISO 4217 currency code")
    return get_currency_precision(currency)


class Portfolio:
    """Per account × instrument: position, working buy/sell lots; per account × currency: cash
    and the part of it held for working buys; per instrument: bid, ask, last and their time."""

    def __init__(self, ref: ReferenceData, fx_rates: dict[str, Decimal] | None = None):
        self.ref = ref
        n_a, n_i = len(ref.account_index), len(ref.by_index)
        currencies = {inst.spec.currency for inst in ref.by_index}
        # An instrument of asset class "fx" named like EURUSD is a currency pair: its prices are
        # FX rates (units of the quote currency, its own currency, per unit of the base).
        self.fx_pair: list[str | None] = [
            inst.symbol if inst.spec.asset_class == "fx" and len(inst.symbol) == 6
            and inst.symbol[3:] == inst.spec.currency else None
            for inst in ref.by_index
        ]
        currencies.update(pair[:3] for pair in self.fx_pair if pair)
        for acc in ref.accounts.values():
            currencies.add(acc.base_currency)
            currencies.update(acc.cash)
        for pair in fx_rates or {}:
            currencies.update((pair[:3], pair[3:]))
        self.currencies = sorted(currencies)
        self.currency_index = {c: k for k, c in enumerate(self.currencies)}
        self.minor = np.array([minor_units(c) for c in self.currencies], dtype=np.int64)
        n_c = len(self.currencies)

        self.position = np.zeros((n_a, n_i), dtype=np.int64)
        self.working_buy = np.zeros((n_a, n_i), dtype=np.int64)
        self.working_sell = np.zeros((n_a, n_i), dtype=np.int64)
        self.cash = np.zeros((n_a, n_c), dtype=np.int64)
        self.held = np.zeros((n_a, n_c), dtype=np.int64)
        self.bid = np.zeros(n_i, dtype=np.int64)
        self.ask = np.zeros(n_i, dtype=np.int64)
        self.last = np.zeros(n_i, dtype=np.int64)
        self.price_ts = np.zeros(n_i, dtype=np.int64)
        self.mark = np.zeros(n_i, dtype=np.int64)  # reference price (last, else mid; 0 none), kept current
        self.traded = np.zeros(n_i, dtype=np.int64)  # lots traded today per instrument

        self.inst_currency = np.array(
            [self.currency_index[i.spec.currency] for i in ref.by_index], dtype=np.int64
        )
        self.account_base = np.array(
            [self.currency_index[a.base_currency] for a in ref.accounts.values()], dtype=np.int64
        )
        # Currency units per tick per lot, and the same in minor units as an exact fraction.
        self.unit_value = np.zeros(n_i, dtype=np.float64)
        self._tick_size = [float(inst.spec.tick_size) for inst in ref.by_index]
        self._minor_per_tick_lot: list[tuple[int, int]] = []
        for k, inst in enumerate(ref.by_index):
            spec = inst.spec
            unit = spec.tick_size * spec.lot_size * spec.multiplier
            self.unit_value[k] = float(unit)
            frac = Fraction(unit) * 10 ** int(self.minor[self.inst_currency[k]])
            self._minor_per_tick_lot.append((frac.numerator, frac.denominator))
        for a, acc in enumerate(ref.accounts.values()):
            for ccy, amount in acc.cash.items():
                scaled = Decimal(amount).scaleb(int(self.minor[self.currency_index[ccy]]))
                if scaled != scaled.to_integral_value():
                    raise ConfigError(
                        f"accounts[{a}].cash.{ccy}: {amount} has more decimals than {ccy} allows"
                    )
                self.cash[a, self.currency_index[ccy]] = int(scaled)
        # fx[f, t]: units of t per unit of f; NaN where no rate is known (never assumed 1).
        self.fx = np.full((n_c, n_c), np.nan)
        np.fill_diagonal(self.fx, 1.0)
        self._quotes: dict[str, float] = {}  # quoted pairs (config, then FX instruments' prices)
        for pair, rate in (fx_rates or {}).items():
            self.set_fx(pair, float(rate))
        self._hold_px: dict[int, int] = {}  # working buy order id -> the price its hold uses

    # -- MONEY ----------------------------------------------------------------------------------

    def notional_minor(self, instrument: int, price: int, qty: int) -> int:
        """price (ticks) × qty (lots) in minor units of the instrument's currency, rounded half
        up. Exact integer arithmetic. O(1)."""
        num, den = self._minor_per_tick_lot[instrument]
        return (2 * price * qty * num + den) // (2 * den)

    def ticks_to_money(self, instrument: int, tick_lots: int) -> Decimal:
        """A price × quantity figure (ticks × lots, e.g. a cost or a P&L) in the instrument's
        currency, exactly, rounded to its minor unit (half away from zero). O(1)."""
        units = self.notional_minor(instrument, 1, abs(tick_lots))
        return Decimal(-units if tick_lots < 0 else units).scaleb(-int(self.minor[self.inst_currency[instrument]]))

    def set_fx(self, pair: str, rate: float) -> None:
        """Quote ``pair`` (e.g. "EURUSD": USD per EUR), then rebuild the table: quoted pairs and
        their inverses, and a cross (EURJPY from EURUSD and USDJPY) only where no direct quote
        exists, through the first third currency (in code order) quoted against both. What no
        quote reaches stays NaN: reported missing, never 1. O(currencies³), a few dozen."""
        if len(pair) != 6 or pair[:3] not in self.currency_index or pair[3:] not in self.currency_index:
            raise ConfigError(f"fx rate {pair!r}: expected two known ISO 4217 codes, e.g. EURUSD")
        if not rate > 0 or rate == float("inf"):
            raise ConfigError(f"fx rate {pair}: expected a positive finite rate, got {rate}")
        self._quotes[pair] = rate
        self._rebuild_fx()

    def _rebuild_fx(self) -> None:
        fx = self.fx
        fx[:] = np.nan
        np.fill_diagonal(fx, 1.0)
        index = self.currency_index
        for pair, rate in self._quotes.items():
            f, t = index[pair[:3]], index[pair[3:]]
            fx[f, t] = rate
            fx[t, f] = 1.0 / rate
        direct = fx.copy()
        n = len(self.currencies)
        for a in range(n):
            for b in range(n):
                if np.isnan(direct[a, b]):
                    for c in range(n):
                        if not np.isnan(direct[a, c]) and not np.isnan(direct[c, b]):
                            fx[a, b] = direct[a, c] * direct[c, b]
                            break

    # -- STAGE 7: order lifecycle (called by the pipeline, live and on replay) ------------------

    def open(self, order) -> None:
        """An order starts working (accepted, or held for approval): its lots count as working
        and a buy holds its notional. O(1)."""
        a, i = self.ref.account_index[order.account], order.instrument
        leaves = order.qty - order.cum_qty
        if order.side == BUY:
            self.working_buy[a, i] += leaves
            px = self.hold_price(order)
            self._hold_px[order.order_id] = px
            self.held[a, self.inst_currency[i]] += self.notional_minor(i, px, leaves)
        else:
            self.working_sell[a, i] += leaves

    def fill(self, order, qty: int, price: int) -> None:
        """A fill of ``qty`` at ``price`` (the order's cum_qty already includes it). O(1)."""
        a, i = self.ref.account_index[order.account], order.instrument
        c = self.inst_currency[i]
        cost = self.notional_minor(i, price, qty)
        self.traded[i] += qty
        self.last[i] = price  # an internal cross is a trade: it moves the last price
        self.mark[i] = price
        if order.side == BUY:
            self.position[a, i] += qty
            self.working_buy[a, i] -= qty
            self.cash[a, c] -= cost
            leaves = order.qty - order.cum_qty
            px = self._hold_px[order.order_id]
            self.held[a, c] -= self.notional_minor(i, px, leaves + qty) - self.notional_minor(i, px, leaves)
            if leaves == 0:
                del self._hold_px[order.order_id]
        else:
            self.position[a, i] -= qty
            self.working_sell[a, i] -= qty
            self.cash[a, c] += cost

    def unfill(self, order, qty: int, price: int) -> None:
        """Take back an execution of ``qty`` at ``price`` (a bust; a correction takes back the
        old figures and books the new ones with ``rebook``): position and cash exactly as
        before it. Working lots and holds are untouched (the order's leaves do not change).
        O(1)."""
        self._book(order, -qty, price)

    def rebook(self, order, qty: int, price: int) -> None:
        """Book an execution's corrected figures (position and cash only). O(1)."""
        self._book(order, qty, price)

    def _book(self, order, qty: int, price: int) -> None:
        a, i = self.ref.account_index[order.account], order.instrument
        c = self.inst_currency[i]
        sign = 1 if qty >= 0 else -1
        cost = sign * self.notional_minor(i, price, abs(qty))
        self.traded[i] += qty
        if order.side == BUY:
            self.position[a, i] += qty
            self.cash[a, c] -= cost
        else:
            self.position[a, i] -= qty
            self.cash[a, c] += cost

    def transfer(self, source: int, target: int, instrument: int, qty: int, notional: int) -> int:
        """Move ``qty`` lots (negative: a short) of ``instrument`` from account ``source`` to
        ``target`` for ``notional`` price × lots (signed like ``qty``): a block allocation. Cash
        moves the other way in exact minor units, rounded per transfer (what rounding leaves
        stays in the block account); returns what ``target`` paid (signed). O(1)."""
        c = self.inst_currency[instrument]
        minor = self.notional_minor(instrument, 1, abs(notional)) * (1 if notional >= 0 else -1)
        self.position[source, instrument] -= qty
        self.position[target, instrument] += qty
        self.cash[source, c] += minor
        self.cash[target, c] -= minor
        return minor

    def nav_minor(self, account: int, currency: str) -> int | None:
        """The account's NAV — cash in every currency plus positions at marks — in minor units
        of ``currency``, or None when a mark or an FX rate it needs is missing. O(instruments)."""
        to = self.currency_index[currency]
        total = 0.0
        for c in range(len(self.currencies)):
            amount = int(self.cash[account, c])
            if amount:
                rate = self.fx[c, to]
                if rate != rate:  # NaN: no rate
                    return None
                total += amount / 10 ** int(self.minor[c]) * rate
        for i in np.flatnonzero(self.position[account]).tolist():
            mark = int(self.mark[i])
            rate = self.fx[self.inst_currency[i], to]
            if not mark or rate != rate:
                return None
            total += int(self.position[account, i]) * mark * float(self.unit_value[i]) * rate
        return round(total * 10 ** int(self.minor[to]))

    def close(self, order, leaves: int) -> None:
        """An order stops working with ``leaves`` lots unfilled (cancel, expiry, reject, deny).
        O(1)."""
        a, i = self.ref.account_index[order.account], order.instrument
        if order.side == BUY:
            self.working_buy[a, i] -= leaves
            px = self._hold_px.pop(order.order_id)
            self.held[a, self.inst_currency[i]] -= self.notional_minor(i, px, leaves)
        else:
            self.working_sell[a, i] -= leaves

    def replace(self, order, old_price: int, old_leaves: int) -> None:
        """A working order's price and/or leaves changed. O(1)."""
        a, i = self.ref.account_index[order.account], order.instrument
        leaves = order.qty - order.cum_qty
        if order.side == BUY:
            self.working_buy[a, i] += leaves - old_leaves
            c = self.inst_currency[i]
            old_px = self._hold_px[order.order_id]
            new_px = self.hold_price(order)
            self._hold_px[order.order_id] = new_px
            self.held[a, c] += self.notional_minor(i, new_px, leaves) - self.notional_minor(i, old_px, old_leaves)
        else:
            self.working_sell[a, i] += leaves - old_leaves

    def hold_price(self, order) -> int:
        """The price a buy's cash hold uses: its limit, its stop, else (market) the reference
        price, else the top of the instrument's band (the most it could cost)."""
        if order.order_type == LIMIT or order.order_type == STOP_LIMIT:
            return order.price
        if order.order_type == STOP:
            return max(order.stop_price, self.reference_price(order.instrument))
        return self.reference_price(order.instrument) or self.ref.by_index[order.instrument].band_high

    # -- PRICES ---------------------------------------------------------------------------------

    def tick(self, instrument: int, bid: int, ask: int, last: int, ts: int) -> None:
        """A price update; a 0 field keeps the previous value. O(1)."""
        if bid:
            self.bid[instrument] = bid
        if ask:
            self.ask[instrument] = ask
        if last:
            self.last[instrument] = last
        self.price_ts[instrument] = ts
        self.mark[instrument] = mark = self.reference_price(instrument)
        pair = self.fx_pair[instrument]
        if pair is not None and mark:
            self.set_fx(pair, mark * self._tick_size[instrument])

    def reference_price(self, instrument: int) -> int:
        """Last trade, else the mid of a two-sided quote, else 0 (none). O(1)."""
        last = int(self.last[instrument])
        if last:
            return last
        bid, ask = int(self.bid[instrument]), int(self.ask[instrument])
        return (bid + ask) // 2 if bid and ask else 0

    def marks(self) -> np.ndarray:
        """Reference price per instrument (0 = none), kept current by ``tick`` and ``fill``. O(1):
        the array itself, not a copy (read it, never write it)."""
        return self.mark

    def refresh_marks(self) -> None:
        """Recompute every mark: after prices were written into the arrays directly (bulk loads,
        tests). O(instruments)."""
        mid = np.where((self.bid > 0) & (self.ask > 0), (self.bid + self.ask) // 2, 0)
        self.mark[:] = np.where(self.last > 0, self.last, mid)

    def end_of_day(self) -> None:
        self.traded[:] = 0

    # -- QUERIES --------------------------------------------------------------------------------

    def available_cash(self, account: int, currency: int) -> int:
        """Cash not held for working buys, minor units. O(1)."""
        return int(self.cash[account, currency] - self.held[account, currency])

    def validate(self, orders) -> None:
        """Recompute working lots and holds from ``orders`` (order id -> Order) and compare.
        O(orders)."""
        wb = np.zeros_like(self.working_buy)
        ws = np.zeros_like(self.working_sell)
        held = np.zeros_like(self.held)
        index = self.ref.account_index
        for order in orders.values():
            if not order.is_working and order.status is not OrderStatus.PENDING_APPROVAL:
                continue
            a, i, leaves = index[order.account], order.instrument, order.qty - order.cum_qty
            if order.side == BUY:
                wb[a, i] += leaves
                held[a, self.inst_currency[i]] += self.notional_minor(i, self._hold_px[order.order_id], leaves)
            else:
                ws[a, i] += leaves
        for name, want, have in (("working buy", wb, self.working_buy),
                                 ("working sell", ws, self.working_sell), ("held cash", held, self.held)):
            if not np.array_equal(want, have):
                bad = np.argwhere(want != have)[0].tolist()
                raise AssertionError(f"portfolio {name} at {bad}: orders give {want[tuple(bad)]}, "
                                     f"portfolio has {have[tuple(bad)]}")

    def state_hash(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for arr in self._arrays():
            h.update(arr.tobytes())
        h.update(msgspec.msgpack.encode([sorted(self._hold_px.items()), sorted(self._quotes.items())]))
        return h.digest()

    # -- SNAPSHOTS ------------------------------------------------------------------------------

    _NAMES = ("position", "working_buy", "working_sell", "cash", "held", "bid", "ask", "last",
              "price_ts", "traded", "fx")

    def _arrays(self) -> list[np.ndarray]:
        return [getattr(self, name) for name in self._NAMES]

    def dump(self) -> bytes:
        state = _PortfolioState(
            arrays=[(name, str(a.dtype), list(a.shape), a.tobytes())
                    for name, a in zip(self._NAMES, self._arrays(), strict=True)],
            hold_px=sorted(self._hold_px.items()),
            currencies=self.currencies,
            quotes=sorted(self._quotes.items()),
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        """Load a dump; accounts and instruments added at the end of the config since start at
        zero, currencies are matched by code."""
        state = msgspec.msgpack.decode(data, type=_PortfolioState)
        then = {c: k for k, c in enumerate(state.currencies)}
        for name, dtype, shape, raw in state.arrays:
            old = np.frombuffer(raw, dtype=dtype).reshape(shape)
            new = getattr(self, name)
            if name == "fx":
                for c, k in then.items():
                    for d, m in then.items():
                        if c in self.currency_index and d in self.currency_index:
                            new[self.currency_index[c], self.currency_index[d]] = old[k, m]
                continue
            if name in ("cash", "held"):
                for c, k in then.items():
                    new[: shape[0], self.currency_index[c]] = old[:, k]
                continue
            new[tuple(slice(0, n) for n in shape)] = old
        self._hold_px = dict(state.hold_px)
        self.refresh_marks()
        if state.quotes:
            self._quotes = {p: r for p, r in state.quotes if p[:3] in self.currency_index
                            and p[3:] in self.currency_index}
            self._rebuild_fx()


class _PortfolioState(msgspec.Struct):
    arrays: list[tuple[str, str, list[int], bytes]]
    hold_px: list[tuple[int, int]]
    currencies: list[str]
    quotes: list[tuple[str, float]] = []
