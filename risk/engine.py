"""Pre-trade risk: the engine the pipeline's stage 3 calls, its controls, queries and snapshots.

``RiskEngine`` keeps its limit tables, trading states, kill switches and throttle windows in
numpy arrays that ``risk.kernels`` checks in one jitted call per order; this class converts the
configuration into those arrays, builds refusal texts, validates controls, and dumps and loads
the state that changes at run time.

Semantics (one ``RejectCode.RISK_*`` per check, first refusal wins, in this order):

1. kill switch: global, the account's, the user's (``cmd.user``) → ``RISK_KILL_SWITCH``.
2. trading state: the most restrictive of the rows (*,*), (account,*), (*,symbol),
   (account,symbol). HALTED → ``RISK_HALTED``; REDUCING lets only reducing orders through →
   ``RISK_REDUCE_ONLY``.
3. throttles: commands per ``throttle_window_ms`` per account and per user, on ``cmd.ts``
   (never the wall clock). A command passes if fewer than ``limit`` passed commands were noted
   in (ts - window, ts]. Submits and modifies have separate windows → ``RISK_ORDER_RATE`` /
   ``RISK_MODIFY_RATE``.
4. max order qty (lots, the order's total qty) → ``RISK_MAX_ORDER_QTY``.
5. reference price (``Portfolio.reference_price``: last, else mid): none → deny
   ``RISK_NO_REFERENCE_PRICE``, unless ``allow_no_reference_price`` and the order has a price of
   its own (a market order always needs one: it is valued at the reference).
6. price collar: a LIMIT price within ``price_collar_pct`` of the reference price; a STOP_LIMIT's
   limit within it of its stop price (where it goes live). MARKET and STOP orders pass (they
   are valued at the reference) → ``RISK_PRICE_COLLAR``.
7. max order notional: qty × (limit price; a stop's max(stop, reference); a market order's
   reference) in the instrument's currency → ``RISK_MAX_ORDER_NOTIONAL``.

An order that *reduces* a position stops here: a buy of q reduces if position < 0 and
working buys + q <= -position; a sell if position > 0 and working sells + q <= position. So all
working orders on that side together cannot flip the position, and stacking does not help.

8. position: |position + working buys + q| (buy) or |position - working sells - q| (sell)
   <= max_position → ``RISK_POSITION_LIMIT``.
9. exposure in the account's base currency at the cached marks (see
   ``risk.kernels.exposure``): per instrument, L = position + working buys and S = position -
   working sells, this order included; gross = Σ max(|L|, |S|) × value of a lot, net =
   max(|Σ L × value|, |Σ S × value|), each instrument's term rounded to 1/256 of a minor unit.
   An instrument held with no mark (the order's own is valued at its price then), or no FX rate
   to the base currency, denies (``RISK_NO_REFERENCE_PRICE``, ``RISK_NO_FX_RATE``) →
   ``RISK_GROSS_EXPOSURE`` / ``RISK_NET_EXPOSURE``. O(1): per-account sums are cached.
10. buying power: a buy's notional in minor units <= ``Portfolio.available_cash`` in the
    instrument's currency (sells need no cash) → ``RISK_BUYING_POWER``.

A limit no configuration row sets denies (``RISK_NO_LIMIT``); so does an unknown account or
instrument. Modifies are checked as the order would be after the change; only increases count
(an order-level check fires only if the new qty or notional exceeds both the limit and the old
value; the collar only if the price changes; working lots added = max(0, new leaves - old)).

The exposure cache (what check 9 reads) is the owner's to keep current, as ``risk.stage`` does:

- ``touch(account, instrument)`` after any change to that cell's position or working lots
  (open, fill, cancel, replace, expiry, deny); the checked order's own cell is always read live;
- ``reprice(changed)`` after prices moved: the *marks* are the portfolio's reference prices
  (``Portfolio.reference_price``) as of the last ``reprice`` / ``refresh`` that covered the
  instrument, not as of the check; FX rates as of the last ``refresh`` (``reprice`` rebuilds
  when they moved);
- ``refresh()`` rebuilds everything (after mass changes, on ``load``).

Its sums are exact integers, so the answers are those of a fresh engine built on the same
portfolio and marks whatever the order of touches (``validate`` checks it); it is derived state,
rebuilt on ``load`` and not part of ``dump`` / ``state_hash``.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import msgspec
import numpy as np

from engine.constants import BUY, RejectCode
from engine.jit import entry_point as _entry
from engine.messages import ModifyOrder, SubmitOrder
from engine.model import ConfigError, ReferenceData
from engine.portfolio import Portfolio
from risk import kernels as k
from risk.config import (
    ACCOUNT_LIMITS,
    CELL_LIMITS,
    MAX_AMOUNT_MINOR,
    MAX_LOTS,
    MAX_RATE,
    MAX_WINDOW_MS,
    USER_LIMITS,
    RiskConfig,
)

Refusal = tuple[int, str]

STATES = {"ACTIVE": k.ACTIVE, "REDUCING": k.REDUCING, "HALTED": k.HALTED}
_STATE_NAMES = {v: n for n, v in STATES.items()}
_CELL_COL = {"max_order_qty": k.L_MAX_QTY, "max_order_notional": k.L_MAX_NOTIONAL,
             "price_collar_pct": k.L_COLLAR_BPS, "max_position": k.L_MAX_POSITION}
_ACCOUNT_COL = {"max_gross_exposure": k.A_MAX_GROSS, "max_net_exposure": k.A_MAX_NET,
                "max_orders_per_window": k.A_ORDER_RATE,
                "max_modifies_per_window": k.A_MODIFY_RATE}
_INT_NAMES = {"max_order_qty", "max_position", "max_orders_per_window", "max_modifies_per_window"}
_NO_LIMIT_NAMES = {k.L_MAX_QTY: "max_order_qty", k.L_MAX_NOTIONAL: "max_order_notional",
                   k.L_COLLAR_BPS: "price_collar_pct", k.L_MAX_POSITION: "max_position",
                   10: "max_orders_per_window (account)", 11: "max_orders_per_window (user)",
                   12: "max_gross_exposure", 13: "max_net_exposure"}


def _check_codes() -> None:
    for name, value in vars(k).items():
        if name.startswith("R_") and RejectCode[f"RISK_{name[2:]}"] != value:
            raise AssertionError(f"risk.kernels.{name} drifted from RejectCode.RISK_{name[2:]}")


_check_codes()


# -- QUERY RESULTS -------------------------------------------------------------------------------


class CellView(msgspec.Struct, frozen=True):
    symbol: str
    state: str
    max_order_qty: int | None
    max_order_notional: str | None  # decimal, instrument currency
    price_collar_pct: str | None
    max_position: int | None
    position: int
    working_buy: int
    working_sell: int


class AccountView(msgspec.Struct, frozen=True):
    account: str
    kill_switch: bool
    state: str
    base_currency: str
    max_gross_exposure: str | None  # decimal, base currency
    max_net_exposure: str | None
    gross_exposure: float | None  # base currency; None = cannot be valued (price/FX/limit missing)
    net_exposure: float | None
    max_orders_per_window: int | None
    orders_in_window: int
    max_modifies_per_window: int | None
    modifies_in_window: int
    cells: list[CellView]  # instruments with a position, working orders, own limits or state


class RiskView(msgspec.Struct, frozen=True):
    global_kill_switch: bool
    global_state: str
    killed_users: list[str]
    throttle_window_ms: int
    as_of_ts: int  # the latest command time noted: "in window" counts are as of it
    accounts: list[AccountView]


class _Dump(msgspec.Struct, frozen=True):
    """What changes at run time: controls and throttle windows (canonical: sorted, by name)."""

    limits: list[tuple[str, str, str, str | None]]  # (account, symbol, name, value; None = unset)
    kill_global: bool
    kill_accounts: list[str]
    kill_users: list[str]
    states: list[tuple[str, str, str]]
    windows: list[tuple[str, str, int, list[int]]]  # ("account"|"user", id, kind, timestamps)


# -- THE ENGINE -----------------------------------------------------------------------------------


class RiskEngine:
    """Pre-trade risk for one shard. Checks are read-only; ``note_*`` and controls mutate.

    It reads the portfolio's arrays by reference: ``Portfolio`` must change them in place (it
    does: tick, open, fill, close, set_fx, load), never rebind them.
    """

    def __init__(self, config: RiskConfig, ref: ReferenceData, portfolio: Portfolio):
        self.config = config
        self.ref = ref
        self.portfolio = portfolio
        self._accounts = list(ref.accounts)
        self._account_index = ref.account_index
        self._inst_index = {sym: inst.index for sym, inst in ref.instruments.items()}
        self._symbols = [inst.symbol for inst in ref.by_index]
        if not 0 < config.throttle_window_ms <= MAX_WINDOW_MS:
            raise ConfigError(f"risk.throttle_window_ms: expected 1 to {MAX_WINDOW_MS}, "
                              f"got {config.throttle_window_ms}")
        self._window_ns = config.throttle_window_ms * 1_000_000
        # raw values by key, config first; controls override (None = unset at that level)
        self._cell_raw: dict[tuple[str, str], dict[str, object]] = {}
        self._acct_raw: dict[str, dict[str, object]] = {}
        self._user_raw: dict[str, dict[str, object]] = {}
        self._overrides: dict[tuple[str, str, str], object] = {}
        self._load_config_rows(config)
        self._kill_global = False
        self._kill_accounts: set[str] = set()
        self._kill_users: set[str] = set()
        self._states: dict[tuple[str, str], int] = {}
        self._users: list[str] = []
        self._user_index: dict[str, int] = {}
        self._user_cap = 16
        n_a, n_i = len(self._accounts), len(self._symbols)
        self._out = np.zeros(k.N_OUT, dtype=np.int64)
        self._out_ints = memoryview(self._out)  # reads Python ints without a copy (deny path)
        self._outf = np.zeros(2, dtype=np.float64)
        self._cell_state = np.zeros((n_a, n_i), dtype=np.int8)
        self._static_inst = self._instrument_statics()
        self._scale = self._currency_scale()
        self._text_tables()
        # the exposure cache (derived; see the module docstring): filled by refresh()
        self._mark = np.zeros(n_i, dtype=np.int64)
        self._cfx = np.full(portfolio.fx.shape, np.nan)
        self._c_long = np.zeros((n_a, n_i), dtype=np.int64)
        self._c_short = np.zeros((n_a, n_i), dtype=np.int64)
        self._expo = np.zeros((n_a, k.N_EXPO_COLS), dtype=np.int64)
        self._holders = np.zeros(n_i, dtype=np.int64)
        self._wmeta = np.zeros((0, k.N_WINDOW_COLS), dtype=np.int64)
        self._ring = np.zeros(0, dtype=np.int64)
        self._entries: dict[tuple[str, int, int], list[int]] = {}
        self._rebuild()  # raises ConfigError on a value that does not convert
        self.refresh()
        self._warm()

    # -- CONFIGURATION ----------------------------------------------------------------------------

    def _load_config_rows(self, config: RiskConfig) -> None:
        for n, row in enumerate(config.limits):
            where = f"risk.limits[{n}]"
            self._check_target(row.account, row.symbol, where)
            key = (row.account, row.symbol)
            if key in self._cell_raw:
                raise ConfigError(f"{where}: duplicate row for account {row.account!r}, "
                                  f"symbol {row.symbol!r}")
            self._cell_raw[key] = {name: getattr(row, name) for name in CELL_LIMITS
                                   if getattr(row, name) is not None}
        for n, row in enumerate(config.accounts):
            where = f"risk.accounts[{n}]"
            self._check_target(row.account, "*", where)
            if row.account in self._acct_raw:
                raise ConfigError(f"{where}.account: duplicate row for {row.account!r}")
            self._acct_raw[row.account] = {name: getattr(row, name) for name in ACCOUNT_LIMITS
                                           if getattr(row, name) is not None}
        for n, row in enumerate(config.users):
            where = f"risk.users[{n}]"
            if not row.user:
                raise ConfigError(f"{where}.user: expected a user name or '*'")
            if row.user in self._user_raw:
                raise ConfigError(f"{where}.user: duplicate row for {row.user!r}")
            self._user_raw[row.user] = {name: getattr(row, name) for name in USER_LIMITS
                                        if getattr(row, name) is not None}

    def _check_target(self, account: str, symbol: str, where: str) -> None:
        if account != "*" and account not in self._account_index:
            raise ConfigError(f"{where}.account: expected '*' or a configured account, got {account!r}")
        if symbol != "*" and symbol not in self._inst_index:
            raise ConfigError(f"{where}.symbol: expected '*' or a configured symbol, got {symbol!r}")

    def _instrument_statics(self) -> np.ndarray:
        pf = self.portfolio
        inst = np.zeros((len(self._symbols), k.N_INST_COLS), dtype=np.int64)
        for n, instrument in enumerate(self.ref.by_index):
            spec = instrument.spec
            ccy = int(pf.inst_currency[n])
            digits = int(pf.minor[ccy])
            if digits > k.NOTIONAL_DIGITS:
                raise ConfigError(f"instruments[{n}].currency: {spec.currency} has {digits} "
                                  f"decimals; risk supports at most {k.NOTIONAL_DIGITS}")
            frac = Fraction(spec.tick_size * spec.lot_size * spec.multiplier) * 10**digits
            inst[n, k.I_CCY] = ccy
            inst[n, k.I_NUM] = frac.numerator
            inst[n, k.I_DEN] = frac.denominator
            inst[n, k.I_NSCALE] = 10 ** (k.NOTIONAL_DIGITS - digits)
        return inst

    def _currency_scale(self) -> np.ndarray:
        minor = self.portfolio.minor
        return np.array([[10.0 ** int(minor[b] - minor[c]) for b in range(len(minor))]
                         for c in range(len(minor))], dtype=np.float64)

    def _convert(self, name: str, value, where: str, account: str | None = None) -> int:
        """A limit's value in table units: lots, counts, bps, notional at 10**-4, base minor
        units (``account`` names whose base currency; '*' checks every account's)."""
        if name in _INT_NAMES:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigError(f"{where}.{name}: expected a non-negative integer, got {value!r}")
            try:
                n = int(value)
            except ValueError:
                raise ConfigError(f"{where}.{name}: expected a non-negative integer, got {value!r}") from None
            top = MAX_RATE if name.endswith("_window") else MAX_LOTS
            if not 0 <= n <= top:
                raise ConfigError(f"{where}.{name}: expected 0 to {top}, got {n}")
            return n
        amount = _decimal(value, f"{where}.{name}")
        if name == "price_collar_pct":
            bps = amount * 100
            if bps != bps.to_integral_value() or not 0 <= bps <= 10_000:
                raise ConfigError(f"{where}.{name}: expected a percentage from 0 to 100 in steps "
                                  f"of 0.01, got {value}")
            return int(bps)
        if name == "max_order_notional":
            return _scaled(amount, k.NOTIONAL_DIGITS, f"{where}.{name}", "at most 4 decimals")
        accounts = self._accounts if account in (None, "*") else [account]
        scaled = 0
        for acc in accounts:
            ccy = self.ref.accounts[acc].base_currency
            digits = int(self.portfolio.minor[self.portfolio.currency_index[ccy]])
            scaled = _scaled(amount, digits, f"{where}.{name}",
                             f"at most {digits} decimals (account {acc} is in {ccy})")
        return scaled

    # -- TABLES ---------------------------------------------------------------------------------

    def _effective(self) -> tuple[dict, dict, dict]:
        cells = {key: dict(v) for key, v in self._cell_raw.items()}
        accts = {key: dict(v) for key, v in self._acct_raw.items()}
        for (account, symbol, name), value in self._overrides.items():
            table, key = (cells, (account, symbol)) if name in CELL_LIMITS else (accts, account)
            row = table.setdefault(key, {})
            if value is None:
                row.pop(name, None)
            else:
                row[name] = value
        return cells, accts, self._user_raw

    def _rebuild(self) -> None:
        """Rebuild every table from configuration + controls; windows keep their entries."""
        cells, accts, users = self._effective()
        acc_ix, inst_ix = self._account_index, self._inst_index
        n_a, n_i = len(self._accounts), len(self._symbols)
        specific = [key for key in cells if key[0] != "*" and key[1] != "*"]
        rows = np.full((n_a + n_i + 1 + len(specific), k.N_LIMIT_COLS), k.UNSET, dtype=np.int64)
        lim_cell = np.full((n_a, n_i), -1, dtype=np.int32)
        for (account, symbol), values in cells.items():
            if account == "*" and symbol == "*":
                r = n_a + n_i
            elif symbol == "*":
                r = acc_ix[account]
            elif account == "*":
                r = n_a + inst_ix[symbol]
            else:
                r = n_a + n_i + 1 + specific.index((account, symbol))
                lim_cell[acc_ix[account], inst_ix[symbol]] = r
            for name, value in values.items():
                where = f"risk.limits[{account}/{symbol}]"
                rows[r, _CELL_COL[name]] = self._convert(name, value, where)
        acct = np.full((n_a, k.N_ACCOUNT_COLS), k.UNSET, dtype=np.int64)
        for a, account in enumerate(self._accounts):
            merged = {**accts.get("*", {}), **accts.get(account, {})}
            for name, col in _ACCOUNT_COL.items():
                if name in merged:
                    acct[a, col] = self._convert(name, merged[name], f"risk.accounts[{account}]", account)
            acct[a, k.A_KILL] = account in self._kill_accounts
            acct[a, k.A_STATE] = self._states.get((account, "*"), k.ACTIVE)
            acct[a, k.A_BASE] = self.portfolio.account_base[a]
        inst = self._static_inst.copy()
        for i, symbol in enumerate(self._symbols):
            inst[i, k.I_STATE] = self._states.get(("*", symbol), k.ACTIVE)
        self._cell_state[:] = k.ACTIVE
        for (account, symbol), state in self._states.items():
            if account != "*" and symbol != "*":
                self._cell_state[acc_ix[account], inst_ix[symbol]] = state
        star = users.get("*", {})
        glob = np.zeros(k.N_GLOBAL_COLS, dtype=np.int64)
        glob[k.G_KILL] = self._kill_global
        glob[k.G_STATE] = self._states.get(("*", "*"), k.ACTIVE)
        glob[k.G_WINDOW_NS] = self._window_ns
        glob[k.G_ALLOW_NO_REF] = self.config.allow_no_reference_price
        for name, col in (("max_orders_per_window", k.G_USER_ORDER_RATE),
                          ("max_modifies_per_window", k.G_USER_MODIFY_RATE)):
            glob[col] = self._convert(name, star[name], "risk.users[*]") if name in star else k.UNSET
        glob[k.G_N_ACCOUNTS] = n_a
        glob[k.G_USER_CAP] = self._user_cap
        glob[k.G_CELL_CAP] = 2**62 // max(n_i, 1)
        user_tab = np.full((self._user_cap, k.N_USER_COLS), k.UNSET, dtype=np.int64)
        for u, user in enumerate(self._users):
            merged = {**star, **users.get(user, {})}
            for name, col in (("max_orders_per_window", k.U_ORDER_RATE),
                              ("max_modifies_per_window", k.U_MODIFY_RATE)):
                if name in merged:
                    user_tab[u, col] = self._convert(name, merged[name], f"risk.users[{user}]")
            user_tab[u, k.U_KILL] = user in self._kill_users
        self._lim_rows, self._lim_cell, self._acct, self._inst = rows, lim_cell, acct, inst
        self._glob, self._user_tab = glob, user_tab
        self._build_windows()

    def _entity_keys(self) -> list[tuple[str, int, int]]:
        """Window entities in row order: (who, index, kind)."""
        n_a = len(self._accounts)
        keys = [("account", a, kind) for kind in (k.K_SUBMIT, k.K_MODIFY) for a in range(n_a)]
        keys += [("user", u, kind) for kind in (k.K_SUBMIT, k.K_MODIFY) for u in range(self._user_cap)]
        return keys

    def _capture_windows(self) -> dict[tuple[str, str, int], list[int]]:
        """Each non-empty window's timestamps, oldest first, keyed by (who, name, kind)."""
        found = {}
        if not len(self._wmeta):
            return found
        for e, (who, idx, kind) in enumerate(self._old_keys):
            off, cap, head, count = (int(x) for x in self._wmeta[e])
            if count == 0:
                continue
            ring = self._ring[off:off + cap].tolist()
            start = head if count == cap else 0
            entries = [ring[(start + j) % cap] for j in range(count)]
            name = self._accounts[idx] if who == "account" else self._users[idx]
            found[(who, name, kind)] = entries
        return found

    def _build_windows(self, entries: dict | None = None) -> None:
        kept = self._capture_windows() if entries is None else entries
        keys = self._entity_keys()
        caps = []
        for who, idx, kind in keys:
            if who == "account":
                limit = self._acct[idx, k.A_ORDER_RATE if kind == k.K_SUBMIT else k.A_MODIFY_RATE]
            elif idx < len(self._users):
                limit = self._user_tab[idx, k.U_ORDER_RATE if kind == k.K_SUBMIT else k.U_MODIFY_RATE]
            else:  # a free row: laid out for the "*" user, so registering one is O(1)
                limit = self._glob[k.G_USER_ORDER_RATE if kind == k.K_SUBMIT else k.G_USER_MODIFY_RATE]
            caps.append(max(int(limit), 0))
        meta = np.zeros((len(keys), k.N_WINDOW_COLS), dtype=np.int64)
        meta[:, k.W_CAP] = caps
        meta[1:, k.W_OFF] = np.cumsum(caps)[:-1]
        ring = np.zeros(max(sum(caps), 1), dtype=np.int64)
        for e, (who, idx, kind) in enumerate(keys):
            name = (self._accounts[idx] if who == "account"
                    else self._users[idx] if idx < len(self._users) else None)
            ts = kept.get((who, name, kind)) if name is not None else None
            cap = caps[e]
            if not ts or not cap:
                continue
            ts = ts[-cap:]
            ring[meta[e, k.W_OFF]:meta[e, k.W_OFF] + len(ts)] = ts
            meta[e, k.W_COUNT] = len(ts)
            meta[e, k.W_HEAD] = len(ts) % cap
        self._wmeta, self._ring, self._old_keys = meta, ring, keys
        self._make_state()

    def _make_state(self) -> None:
        pf = self.portfolio
        self._st = k.make_state(
            position=pf.position, working_buy=pf.working_buy, working_sell=pf.working_sell,
            cash=pf.cash, held=pf.held, bid=pf.bid, ask=pf.ask, last=pf.last, fx=pf.fx,
            lim_cell=self._lim_cell, lim_rows=self._lim_rows, acct=self._acct, inst=self._inst,
            cell_state=self._cell_state, glob=self._glob, users=self._user_tab, wmeta=self._wmeta,
            ring=self._ring, scale=self._scale, out=self._out, outf=self._outf,
            mark=self._mark, cfx=self._cfx, c_long=self._c_long, c_short=self._c_short,
            expo=self._expo, holders=self._holders)

    def _warm(self) -> None:
        """Compile (or load from cache) the kernels, and bind the compiled entry points so a
        call skips numba's type dispatch (~0.8 µs with a structref argument)."""
        st = self._st
        k.check_submit(st, 0, 0, -1, 0, 0, 1, 0, 1, 0)
        k.check(st, k.K_MODIFY, 0, 0, -1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0)
        k.touch_cell(st, 0, 0)  # a no-op right after refresh()
        k.reprice(st, np.zeros(len(self._symbols), dtype=np.bool_))
        self._k_submit = _entry(k.check_submit)
        self._k_check = _entry(k.check)
        self._k_touch = _entry(k.touch_cell)
        self._k_note = k.note_command

    # -- CHECKS (read-only) ---------------------------------------------------------------------

    def check_submit(self, cmd: SubmitOrder) -> Refusal | None:
        """Every check on a new order; None to pass. Read-only. O(1) (O(instruments) for an
        account holding an instrument it cannot value: see ``risk.kernels.exposure_scan``)."""
        a = self._account_index.get(cmd.account)
        i = self._inst_index.get(cmd.symbol)
        if a is None or i is None:
            return self._unknown(cmd.account, cmd.symbol)
        code = self._k_submit(self._st, a, i, self._user_index.get(cmd.user, -1), cmd.side,
                              cmd.order_type, cmd.price, cmd.stop_price, cmd.qty, cmd.ts)
        if code == 0:
            return None
        return code, self._text(code, self._out_ints, a, i, cmd.user, cmd.side, cmd.qty,
                                k.K_SUBMIT)

    def check_modify(self, cmd: ModifyOrder, order) -> Refusal | None:
        """The checks on ``order`` as it would be after ``cmd``; None to pass. Read-only. O(1)
        (as ``check_submit``)."""
        a = self._account_index.get(order.account)
        if a is None or not 0 <= order.instrument < len(self._symbols):
            return self._unknown(order.account, str(order.symbol))
        i = order.instrument
        price = order.price if cmd.price is None else cmd.price
        qty = order.qty if cmd.qty is None else cmd.qty
        changed = cmd.price is not None and cmd.price != order.price
        code = self._k_check(self._st, k.K_MODIFY, a, i, self._user_index.get(cmd.user, -1),
                             int(order.side), int(order.order_type), price, order.stop_price, qty,
                             order.qty, order.qty - order.cum_qty, qty - order.cum_qty,
                             order.price, int(changed), cmd.ts)
        if code == 0:
            return None
        return code, self._text(code, self._out_ints, a, i, cmd.user, order.side, qty,
                                k.K_MODIFY)

    def check_batch(self, cmds: list[SubmitOrder]) -> list[Refusal | None]:
        """``check_submit`` for each command, in one jitted call over the batch. O(n).

        Assumes what ``Pipeline.process_batch`` does between the commands of a batch and nothing
        more: each command that passes is noted in the throttle windows and opened in the
        portfolio (its lots working, a buy's notional held at the price ``Portfolio.hold_price``
        uses) before the next is checked; no fills, cancels, price ticks or controls happen
        inside the batch. Those effects are simulated and undone: on return the state is
        unchanged (the pipeline still calls ``note_submit``, ``Portfolio.open`` and ``touch``).
        """
        n = len(cmds)
        rows = np.zeros((n, 9), dtype=np.int64)
        known = np.ones(n, dtype=bool)
        for r, cmd in enumerate(cmds):
            a = self._account_index.get(cmd.account)
            i = self._inst_index.get(cmd.symbol)
            if a is None or i is None:
                known[r] = False
                rows[r] = (0, 0, -1, 0, 0, 0, 0, 0, cmd.ts)  # qty 0: refused, never noted
                continue
            if cmd.user not in self._user_index:  # not state: only non-empty windows are dumped
                self._register_user(cmd.user)
            rows[r] = (a, i, self._user_index[cmd.user], cmd.side, cmd.order_type, cmd.price,
                       cmd.stop_price, cmd.qty, cmd.ts)
        codes = np.zeros(n, dtype=np.int64)
        outs = np.zeros((n, k.N_OUT), dtype=np.int64)
        k.check_batch(self._st, rows, codes, outs, np.zeros((n, 6), dtype=np.int64),
                      np.zeros(n, dtype=np.int64))
        result: list[Refusal | None] = [None] * n
        for r in np.flatnonzero(codes).tolist():
            cmd = cmds[r]
            if not known[r]:
                result[r] = self._unknown(cmd.account, cmd.symbol)
            else:
                code = int(codes[r])
                result[r] = code, self._text(code, outs[r].tolist(), int(rows[r, 0]),
                                             int(rows[r, 1]), cmd.user, cmd.side, cmd.qty,
                                             k.K_SUBMIT)
        return result

    # -- NOTES (the pipeline calls these for every command that passed, live and on replay) -------

    def note_submit(self, cmd: SubmitOrder) -> None:
        """Count a passed submit in its account's and user's order windows. O(1)."""
        self._note(cmd, k.K_SUBMIT)

    def note_modify(self, cmd: ModifyOrder) -> None:
        """Count a passed modify in its account's and user's modify windows. O(1)."""
        self._note(cmd, k.K_MODIFY)

    def _note(self, cmd, kind: int) -> None:
        a = self._account_index.get(cmd.account)
        if a is None:
            return
        if cmd.user not in self._user_index:
            self._register_user(cmd.user)
        self._k_note(self._st, kind, a, self._user_index[cmd.user], cmd.ts)

    def _register_user(self, user: str) -> None:
        """Give ``user`` a row. O(1) when its limits are the "*" user's and a row is free (the
        free rows' windows are laid out for the "*" limits); else the tables are rebuilt."""
        self._users.append(user)
        u = len(self._users) - 1
        self._user_index[user] = u
        if u < self._user_cap and user not in self._user_raw and user not in self._kill_users:
            self._user_tab[u, k.U_ORDER_RATE] = self._glob[k.G_USER_ORDER_RATE]
            self._user_tab[u, k.U_MODIFY_RATE] = self._glob[k.G_USER_MODIFY_RATE]
            self._user_tab[u, k.U_KILL] = 0
            return
        if u >= self._user_cap:
            self._user_cap *= 2
        self._rebuild()

    # -- EXPOSURE CACHE (the owner keeps it current: risk.stage does, live and on replay) --------

    def touch(self, account: int, instrument: int) -> None:
        """Revalue cell (account index, instrument index) in the exposure cache after its position
        or working lots changed (open, fill, cancel, replace, expiry, deny), at the cached mark.
        O(1)."""
        self._k_touch(self._st, account, instrument)

    def reprice(self, changed_instruments: np.ndarray) -> None:
        """After prices moved: each instrument flagged in ``changed_instruments`` (bool per
        instrument) takes its reference price now as its cached mark, and the accounts holding it
        are revalued. FX rates that moved since the last refresh rebuild everything.
        O(instruments + accounts × instruments whose mark moved); O(accounts × instruments) on an
        FX move."""
        if not np.array_equal(self._cfx, self.portfolio.fx, equal_nan=True):
            self.refresh()
            return
        k.reprice(self._st, np.ascontiguousarray(changed_instruments, dtype=np.bool_))

    def refresh(self) -> None:
        """Rebuild the exposure cache from the portfolio: lots, marks, FX rates, sums.
        O(accounts × instruments)."""
        self._cfx[:] = self.portfolio.fx
        k.refresh(self._st)

    def validate(self) -> None:
        """Check the exposure cache: cached lots are the portfolio's (every change touched), marks
        its reference prices (every move repriced), FX its rates, and the sums those a rebuild
        gives. Raises AssertionError naming the first difference; the cache is left as it was.
        O(accounts × instruments)."""
        kept = [a.copy() for a in self._cache_arrays()]
        self.refresh()
        rebuilt = [a.copy() for a in self._cache_arrays()]
        for array, old in zip(self._cache_arrays(), kept, strict=True):
            array[...] = old
        names = ("mark", "fx", "long lots", "short lots", "exposure sums", "holders")
        for name, old, new in zip(names, kept, rebuilt, strict=True):
            differ = old != new
            if old.dtype.kind == "f":
                differ &= ~(np.isnan(old) & np.isnan(new))
            if differ.any():
                bad = tuple(np.argwhere(differ)[0].tolist())
                raise AssertionError(f"risk exposure cache: {name} at {bad} is {old[bad]}, a rebuild "
                                     f"from the portfolio gives {new[bad]}")

    def _cache_arrays(self) -> list[np.ndarray]:
        return [self._mark, self._cfx, self._c_long, self._c_short, self._expo, self._holders]

    # -- CONTROLS (validate everything, then change) ----------------------------------------------

    def set_limit(self, account: str, symbol: str, name: str, value, apply: bool = True) -> Refusal | None:
        """Set (or with ``value`` None, unset) one limit at (account, symbol); either may be "*".
        Account-level names (exposure, rates) take symbol "*". With ``apply`` false only
        validates (the pipeline's stage 1). O(accounts × instruments)."""
        bad = RejectCode.INVALID_CONTROL
        if not isinstance(name, str) or (name not in CELL_LIMITS and name not in ACCOUNT_LIMITS):
            return bad, f"limit name must be one of {', '.join(CELL_LIMITS + ACCOUNT_LIMITS)}, got {name!r}"
        refusal = self._control_target(account, symbol)
        if refusal is not None:
            return refusal
        if name in ACCOUNT_LIMITS and symbol != "*":
            return bad, f"{name} is per account: symbol must be '*', got {symbol!r}"
        if value is not None:
            try:
                self._convert(name, value, f"set_limit {account}/{symbol}", account)
            except ConfigError as exc:
                return bad, str(exc)
            value = str(value) if not isinstance(value, int) else value
        if not apply:
            return None
        self._overrides[(account, symbol, name)] = value
        self._rebuild()
        return None

    def set_kill_switch(self, scope: str, target: str, on: bool, apply: bool = True) -> Refusal | None:
        """Turn a kill switch on or off: scope "global" (target ""), "account" or "user". While
        on, submits and modifies are denied; cancels pass (risk never sees them). With
        ``apply`` false only validates."""
        bad = RejectCode.INVALID_CONTROL
        if not isinstance(on, bool):
            return bad, f"on must be true or false, got {on!r}"
        if scope == "global":
            if target not in ("", "*"):
                return bad, f"a global kill switch takes target '' or '*', got {target!r}"
        elif scope == "account":
            if not isinstance(target, str) or target not in self._account_index:
                return bad, f"target must be a configured account, got {target!r}"
        elif scope == "user":
            if not isinstance(target, str) or not target or len(target) > 64:
                return bad, f"target must be a user name of 1 to 64 characters, got {target!r}"
        else:
            return bad, f"scope must be 'global', 'account' or 'user', got {scope!r}"
        if not apply:
            return None
        if scope == "global":
            self._kill_global = on
        elif scope == "account":
            (self._kill_accounts.add if on else self._kill_accounts.discard)(target)
        else:
            (self._kill_users.add if on else self._kill_users.discard)(target)
            if on and target not in self._user_index:
                self._register_user(target)
        self._rebuild()
        return None

    def set_trading_state(self, account: str, symbol: str, state: str, apply: bool = True) -> Refusal | None:
        """Set the trading state of (account, symbol), either may be "*". The most restrictive
        of the four rows that apply to an order wins (so a global HALTED cannot be lifted for one
        account). ACTIVE clears the row."""
        if not isinstance(state, str) or state not in STATES:
            return RejectCode.INVALID_CONTROL, f"state must be ACTIVE, REDUCING or HALTED, got {state!r}"
        refusal = self._control_target(account, symbol)
        if refusal is not None or not apply:
            return refusal
        if STATES[state] == k.ACTIVE:
            self._states.pop((account, symbol), None)
        else:
            self._states[(account, symbol)] = STATES[state]
        self._rebuild()
        return None

    def _control_target(self, account, symbol) -> Refusal | None:
        if not isinstance(account, str) or (account != "*" and account not in self._account_index):
            return RejectCode.INVALID_CONTROL, f"account must be '*' or a configured account, got {account!r}"
        if not isinstance(symbol, str) or (symbol != "*" and symbol not in self._inst_index):
            return RejectCode.INVALID_CONTROL, f"symbol must be '*' or a configured symbol, got {symbol!r}"
        return None

    # -- QUERIES --------------------------------------------------------------------------------

    def view(self, account: str | None = None) -> RiskView:
        """Limits in force, kill switches, states and utilisation (exposure at the cached marks);
        one account or all. O(accounts × instruments)."""
        if account is not None and account not in self._account_index:
            raise KeyError(f"unknown account {account!r}")
        as_of = int(self._ring.max()) if len(self._ring) else 0
        names = [account] if account is not None else self._accounts
        return RiskView(
            global_kill_switch=self._kill_global,
            global_state=_STATE_NAMES[int(self._glob[k.G_STATE])],
            killed_users=sorted(self._kill_users),
            throttle_window_ms=self.config.throttle_window_ms,
            as_of_ts=as_of,
            accounts=[self._account_view(name, as_of) for name in names],
        )

    def _account_view(self, account: str, as_of: int) -> AccountView:
        a = self._account_index[account]
        pf, st = self.portfolio, self._st
        base = pf.currencies[int(pf.account_base[a])]
        code = k.exposure(st, a, 0, BUY, 0, 0)
        valued = code not in (k.R_NO_REFERENCE_PRICE, k.R_NO_FX_RATE, k.R_NO_LIMIT)
        digits = int(pf.minor[int(pf.account_base[a])])
        cells = []
        own = {sym for (acc, sym) in list(self._effective()[0]) + list(self._states) if acc == account}
        for i, symbol in enumerate(self._symbols):
            busy = pf.position[a, i] or pf.working_buy[a, i] or pf.working_sell[a, i]
            if not busy and symbol not in own:
                continue
            state = max(int(self._glob[k.G_STATE]), int(self._acct[a, k.A_STATE]),
                        int(self._inst[i, k.I_STATE]), int(self._cell_state[a, i]))
            lim = [int(k.cell_limit(st, a, i, col)) for col in range(k.N_LIMIT_COLS)]
            cells.append(CellView(
                symbol=symbol, state=_STATE_NAMES[state],
                max_order_qty=_opt(lim[k.L_MAX_QTY]),
                max_order_notional=_amount(lim[k.L_MAX_NOTIONAL], k.NOTIONAL_DIGITS),
                price_collar_pct=_amount(lim[k.L_COLLAR_BPS], 2),
                max_position=_opt(lim[k.L_MAX_POSITION]),
                position=int(pf.position[a, i]), working_buy=int(pf.working_buy[a, i]),
                working_sell=int(pf.working_sell[a, i])))
        return AccountView(
            account=account, kill_switch=bool(self._acct[a, k.A_KILL]),
            state=_STATE_NAMES[max(int(self._glob[k.G_STATE]), int(self._acct[a, k.A_STATE]))],
            base_currency=base,
            max_gross_exposure=_amount(int(self._acct[a, k.A_MAX_GROSS]), digits),
            max_net_exposure=_amount(int(self._acct[a, k.A_MAX_NET]), digits),
            gross_exposure=float(self._outf[0]) / 10**digits if valued else None,
            net_exposure=float(self._outf[1]) / 10**digits if valued else None,
            max_orders_per_window=_opt(int(self._acct[a, k.A_ORDER_RATE])),
            orders_in_window=self._in_window(a, as_of),
            max_modifies_per_window=_opt(int(self._acct[a, k.A_MODIFY_RATE])),
            modifies_in_window=self._in_window(len(self._accounts) + a, as_of),
            cells=cells)

    def _in_window(self, e: int, as_of: int) -> int:
        off, cap, _head, count = (int(x) for x in self._wmeta[e])
        ring = self._ring[off:off + cap]
        return int(np.count_nonzero(ring[:count] > as_of - self._window_ns)) if count else 0

    # -- SNAPSHOTS ------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The run-time state (controls, throttle windows) as canonical msgpack. O(state)."""
        windows = [(who, name, kind, ts) for (who, name, kind), ts in
                   sorted(self._capture_windows().items())]
        state = _Dump(
            limits=sorted((a, s, n, None if v is None else str(v))
                          for (a, s, n), v in self._overrides.items()),
            kill_global=self._kill_global,
            kill_accounts=sorted(self._kill_accounts),
            kill_users=sorted(self._kill_users),
            states=sorted((a, s, _STATE_NAMES[v]) for (a, s), v in self._states.items()),
            windows=windows,
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        """Replace the run-time state with a dump's; the configuration stays this engine's. The
        exposure cache is rebuilt from the portfolio (load that first)."""
        state = msgspec.msgpack.decode(data, type=_Dump)
        self._overrides = {}
        for account, symbol, name, value in state.limits:
            if value is not None and name in _INT_NAMES:
                value = int(value)
            self._overrides[(account, symbol, name)] = value
        self._kill_global = state.kill_global
        self._kill_accounts = set(state.kill_accounts)
        self._kill_users = set(state.kill_users)
        self._states = {(a, s): STATES[v] for a, s, v in state.states}
        users = sorted({name for who, name, _, _ in state.windows if who == "user"} | self._kill_users)
        self._users = users
        self._user_index = {u: n for n, u in enumerate(users)}
        self._user_cap = max(16, 1 << max(len(users) - 1, 0).bit_length())
        self._rebuild_from({(who, name, kind): list(ts) for who, name, kind, ts in state.windows})
        self.refresh()

    def _rebuild_from(self, windows: dict) -> None:
        self._wmeta = np.zeros((0, k.N_WINDOW_COLS), dtype=np.int64)
        self._rebuild()
        self._build_windows(windows)

    def state_hash(self) -> bytes:
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    # -- TEXTS ----------------------------------------------------------------------------------

    def _unknown(self, account: str, symbol: str) -> Refusal:
        if account not in self._account_index:
            return RejectCode.RISK_NO_LIMIT, f"account {account!r} has no risk limits (not configured)"
        return RejectCode.RISK_NO_LIMIT, f"instrument {symbol!r} has no risk limits (not configured)"

    def _text_tables(self) -> None:
        """Names and digits the refusal texts use, as plain lists (no numpy on the deny path)."""
        pf = self.portfolio
        self._inst_ccy = [pf.currencies[c] for c in pf.inst_currency.tolist()]
        self._inst_digits = [int(pf.minor[c]) for c in pf.inst_currency.tolist()]
        self._base_ccy = [pf.currencies[c] for c in pf.account_base.tolist()]
        self._base_digits = [int(pf.minor[c]) for c in pf.account_base.tolist()]
        self._texts = {
            k.R_KILL_SWITCH: self._t_kill_switch, k.R_HALTED: self._t_halted,
            k.R_REDUCE_ONLY: self._t_reduce_only, k.R_ORDER_RATE: self._t_rate,
            k.R_MODIFY_RATE: self._t_rate, k.R_NO_LIMIT: self._t_no_limit,
            k.R_MAX_ORDER_QTY: self._t_max_qty, k.R_NO_REFERENCE_PRICE: self._t_no_reference,
            k.R_PRICE_COLLAR: self._t_collar, k.R_MAX_ORDER_NOTIONAL: self._t_max_notional,
            k.R_POSITION_LIMIT: self._t_position, k.R_GROSS_EXPOSURE: self._t_exposure,
            k.R_NET_EXPOSURE: self._t_exposure, k.R_BUYING_POWER: self._t_buying_power,
            k.R_NO_FX_RATE: self._t_no_fx,
        }

    def _text(self, code: int, out, a: int, i: int, user: str, side: int, qty: int,
              kind: int) -> str:
        """A refusal's text from its code and the kernel's figures ``out`` (N_OUT ints: a list or
        a memoryview): built only for a refusal, from nothing the portfolio holds now. O(1)."""
        text = self._texts.get(code)
        if text is None:
            return f"order qty must be positive, got {qty}"
        return text(code, out, a, i, user, side, qty, kind)

    def _t_kill_switch(self, code, out, a, i, user, side, qty, kind) -> str:
        which = out[k.O_WHICH]
        who = ("global kill switch is on" if which == 0 else
               f"kill switch is on for account {self._accounts[a]}" if which == 1 else
               f"kill switch is on for user {user!r}")
        return f"{who}: only cancels are accepted"

    def _t_halted(self, code, out, a, i, user, side, qty, kind) -> str:
        return f"trading is HALTED for {self._accounts[a]}/{self._symbols[i]}: only cancels are accepted"

    def _t_reduce_only(self, code, out, a, i, user, side, qty, kind) -> str:
        return (f"{self._accounts[a]}/{self._symbols[i]} is REDUCING: only orders that reduce the "
                f"position are accepted (position {out[k.O_POSITION]}, working buy "
                f"{out[k.O_WORKING_BUY]}, working sell {out[k.O_WORKING_SELL]}, order "
                f"{'buy' if side == BUY else 'sell'} {qty})")

    def _t_rate(self, code, out, a, i, user, side, qty, kind) -> str:
        what = "orders" if kind == k.K_SUBMIT else "modifies"
        who = f"account {self._accounts[a]}" if out[k.O_WHICH] == k.W_ACCOUNT else f"user {user!r}"
        return (f"{who} reached {out[k.O_LIMIT]} {what} per {self.config.throttle_window_ms} ms; "
                f"expected fewer in the window")

    def _t_no_limit(self, code, out, a, i, user, side, qty, kind) -> str:
        which = out[k.O_WHICH]
        name = _NO_LIMIT_NAMES.get(which, "a")
        if kind == k.K_MODIFY and which in (10, 11):
            name = f"max_modifies_per_window ({'account' if which == 10 else 'user'})"
        return (f"no {name} limit is configured for {self._accounts[a]}/{self._symbols[i]} "
                f"(fail-closed): set one for it or for '*'")

    def _t_max_qty(self, code, out, a, i, user, side, qty, kind) -> str:
        return (f"qty {out[k.O_VALUE]} exceeds max order qty {out[k.O_LIMIT]} for "
                f"{self._accounts[a]}/{self._symbols[i]}")

    def _t_no_reference(self, code, out, a, i, user, side, qty, kind) -> str:
        return (f"no reference price (last trade or two-sided quote) for "
                f"{self._symbols[out[k.O_INSTRUMENT]]}; {self._accounts[a]}/{self._symbols[i]} "
                f"needs one to price the order or the account's exposure")

    def _t_collar(self, code, out, a, i, user, side, qty, kind) -> str:
        ref, limit = out[k.O_REF], out[k.O_LIMIT]
        off = limit * ref // 10_000
        return (f"price {out[k.O_VALUE]} is more than {_amount(limit, 2)}% off the reference {ref} "
                f"for {self._accounts[a]}/{self._symbols[i]}: expected {ref - off} to {ref + off} ticks")

    def _t_max_notional(self, code, out, a, i, user, side, qty, kind) -> str:
        ccy = self._inst_ccy[i]
        return (f"order notional {_fixed(out[k.O_VALUE], self._inst_digits[i])} {ccy} exceeds max "
                f"order notional {_amount(out[k.O_LIMIT], k.NOTIONAL_DIGITS)} {ccy} for "
                f"{self._accounts[a]}/{self._symbols[i]}")

    def _t_position(self, code, out, a, i, user, side, qty, kind) -> str:
        return (f"projected position {out[k.O_VALUE]} lots exceeds position limit {out[k.O_LIMIT]} "
                f"for {self._accounts[a]}/{self._symbols[i]}")

    def _t_exposure(self, code, out, a, i, user, side, qty, kind) -> str:
        digits, base = self._base_digits[a], self._base_ccy[a]
        what, amount = (("gross", out[k.O_GROSS]) if code == k.R_GROSS_EXPOSURE
                        else ("net", out[k.O_NET]))
        amount /= out[k.O_EXPO_SCALE]
        return (f"projected {what} exposure {amount / 10**digits:.2f} {base} exceeds max "
                f"{_amount(out[k.O_LIMIT], digits)} {base} for account {self._accounts[a]} "
                f"(order on {self._symbols[i]})")

    def _t_buying_power(self, code, out, a, i, user, side, qty, kind) -> str:
        digits, ccy = self._inst_digits[i], self._inst_ccy[i]
        return (f"buy needs {_fixed(out[k.O_VALUE], digits)} {ccy} but {self._accounts[a]} has "
                f"{_fixed(out[k.O_LIMIT], digits)} {ccy} available")

    def _t_no_fx(self, code, out, a, i, user, side, qty, kind) -> str:
        held = out[k.O_INSTRUMENT]
        return (f"no FX rate {self._inst_ccy[held]}{self._base_ccy[a]} to value "
                f"{self._symbols[held]} in account {self._accounts[a]}'s base currency")


# -- HELPERS ---------------------------------------------------------------------------------------


def _decimal(value, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ConfigError(f"{where}: expected a decimal number (string or integer), got {value!r}")
    try:
        amount = Decimal(value)
    except (InvalidOperation, ValueError):
        raise ConfigError(f"{where}: expected a decimal number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{where}: expected a finite, non-negative amount, got {value}")
    return amount


def _scaled(amount: Decimal, digits: int, where: str, expected: str) -> int:
    try:
        scaled = amount.scaleb(digits)
        integral = scaled == scaled.to_integral_value()
    except InvalidOperation:
        integral = False
    if not integral:
        raise ConfigError(f"{where}: expected {expected}, got {amount}")
    if scaled > MAX_AMOUNT_MINOR:
        raise ConfigError(f"{where}: expected at most {Decimal(MAX_AMOUNT_MINOR).scaleb(-digits)}, got {amount}")
    return int(scaled)


def _opt(value: int) -> int | None:
    return None if value == k.UNSET else int(value)


def _amount(value: int, digits: int) -> str | None:
    """A limit in units of 10**-digits as a decimal string; None if unset."""
    return None if value == k.UNSET else _fixed(int(value), digits)


def _fixed(value: int, digits: int) -> str:
    """``value`` × 10**-digits with exactly ``digits`` decimals, as ``str(Decimal.scaleb)`` gives
    for 0 to 6 digits ("-0.05", "12.3400", "7"). Integer arithmetic only."""
    if digits == 0:
        return str(value)
    whole, frac = divmod(-value if value < 0 else value, 10**digits)
    return f"{'-' if value < 0 else ''}{whole}.{frac:0{digits}d}"
