"""Trade surveillance: six post-trade detectors over the pipeline's events, in batches.

The pipeline's msgspec events go through ``Surveillance.encode`` into int64 rows (the ``R_*``
columns of ``compliance.surveillance_kernels``); ``Surveillance.process`` runs every enabled
detector over a batch of rows in one jitted call and returns ``Finding`` s. The windows are state:
``dump`` / ``load`` carry them across a restart and ``state_hash`` proves they came back whole.

The detectors (parameters in ``[compliance.surveillance.<name>]``):

1. ``wash_trades``: a fill opposite a fill of the same beneficial owner in the same instrument
   (any of its accounts, the same trade included) within ``window_ms``, at prices at most
   ``max_price_ticks`` apart. One finding per episode: matches that follow within ``window_ms``
   of the previous match belong to it.
2. ``spoofing``: a voluntary cancel of at least ``min_qty`` lots, of an order that was working
   before a fill of the same owner on the other side, at most ``cancel_within_ms`` after that
   fill. One finding per fill.
3. ``layering``: when a fill arrives, the other side holds at least ``min_orders`` working orders
   of the same owner at ``min_levels`` or more prices, all entered within ``stack_window_ms``
   before it (and the fill's own side holds fewer than ``min_orders``); then at least
   ``min_cancel_pct`` percent of them are canceled within ``cancel_within_ms`` of the fill.
4. ``marking_close``: an account's aggressive (taker) executions in the ``window_minutes``
   before the session close (``close_time`` in ``timezone``), judged when the window ends:
   at least ``min_qty`` lots and either ``min_share_pct`` percent of the instrument's volume in
   the window or ``min_count`` executions (0 turns either test off).
5. ``order_to_trade``: per account and instrument over a rolling ``window_s`` (10 buckets, so
   the window spans 90-100% of ``window_s``), order messages (new, replace, voluntary cancel)
   ``>= min_orders`` and ``> max_ratio`` times the executions. Once per window.
6. ``front_running``: while a block order (``>= block_qty`` lots from one of
   ``client_accounts``) works, from its arrival to its last execution, a non-client account of
   another owner executes on the same side of the same instrument with an order entered after
   the block arrived. Once per (block, account).

Capacities are fixed (``max_owner_instruments``, ``max_account_instruments``, and the kernel's
ring sizes: the last 8 fills and 32 orders per owner and instrument, 4 working blocks per
instrument); what did not fit is counted in ``stats()``, never a crash.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import numpy as np

from compliance import surveillance_kernels as sk
from compliance.surveillance_kernels import (
    D_CLOSE,
    D_FRONT,
    D_LAYER,
    D_OTR,
    D_SPOOF,
    D_WASH,
    F_A,
    F_ACCOUNT,
    F_B,
    F_C,
    F_D,
    F_DET,
    F_E,
    F_EXECS,
    F_F,
    F_INSTR,
    F_NEXECS,
    F_NOIDS,
    F_OIDS,
    F_TS,
    K_CANCEL,
    K_EXPIRE,
    K_FILL,
    K_NEW,
    K_REPLACE,
    R_NCOLS,
    R_TS,
    ST_OK,
)
from engine.jit import entry_point as _entry
from engine.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderReplaced,
)
from engine.model import ConfigError, ReferenceData

Severity = Literal["low", "medium", "high"]

MS = 1_000_000
S = 1_000_000_000
DAY_NS = 86_400 * S
PREFIX = "compliance.surveillance"

# -- CONFIGURATION ---------------------------------------------------------------------------------


class WashTradesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    window_ms: int = 60_000
    max_price_ticks: int = 0
    severity: Severity = "high"


class SpoofingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    min_qty: int = 5_000
    cancel_within_ms: int = 2_000
    severity: Severity = "high"


class LayeringConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    min_orders: int = 4
    min_levels: int = 3
    stack_window_ms: int = 10_000
    cancel_within_ms: int = 5_000
    min_cancel_pct: int = 75
    severity: Severity = "medium"


class MarkingCloseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    close_time: str = "16:00"
    timezone: str = "America/New_York"
    window_minutes: int = 10
    min_share_pct: int = 40
    min_count: int = 0
    min_qty: int = 1_000
    severity: Severity = "medium"


class OrderToTradeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    window_s: int = 60
    min_orders: int = 100
    max_ratio: int = 25
    severity: Severity = "low"


class FrontRunningConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    block_qty: int = 10_000
    client_accounts: list[str] = []
    severity: Severity = "high"


class SurveillanceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[compliance.surveillance]`` table: one sub-table per detector."""

    wash_trades: WashTradesConfig = WashTradesConfig()
    spoofing: SpoofingConfig = SpoofingConfig()
    layering: LayeringConfig = LayeringConfig()
    marking_close: MarkingCloseConfig = MarkingCloseConfig()
    order_to_trade: OrderToTradeConfig = OrderToTradeConfig()
    front_running: FrontRunningConfig = FrontRunningConfig()
    max_owner_instruments: int = 16_384  # (owner, instrument) pairs tracked; ~2.4 KB each
    max_account_instruments: int = 16_384  # (account, instrument) pairs tracked; ~0.5 KB each

    @classmethod
    def from_table(cls, table: dict) -> SurveillanceConfig:
        """Decode the ``[compliance.surveillance]`` table (a dict) and check its values."""
        try:
            config = msgspec.convert(table, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{PREFIX}: {exc}") from exc
        config.check()
        return config

    @classmethod
    def from_toml(cls, raw: bytes | str) -> SurveillanceConfig:
        """Decode the ``[compliance.surveillance]`` table of a whole TOML file (defaults if absent)."""
        try:
            doc = msgspec.toml.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not valid TOML ({exc})") from exc
        table = doc.get("compliance", {}).get("surveillance", {})
        return cls.from_table(table)

    def check(self, ref: ReferenceData | None = None) -> None:
        """Raise ConfigError naming the first invalid field; with ``ref``, accounts must exist."""
        positive = [
            ("wash_trades.window_ms", self.wash_trades.window_ms),
            ("spoofing.min_qty", self.spoofing.min_qty),
            ("spoofing.cancel_within_ms", self.spoofing.cancel_within_ms),
            ("layering.min_orders", self.layering.min_orders),
            ("layering.min_levels", self.layering.min_levels),
            ("layering.stack_window_ms", self.layering.stack_window_ms),
            ("layering.cancel_within_ms", self.layering.cancel_within_ms),
            ("marking_close.window_minutes", self.marking_close.window_minutes),
            ("order_to_trade.window_s", self.order_to_trade.window_s),
            ("order_to_trade.min_orders", self.order_to_trade.min_orders),
            ("order_to_trade.max_ratio", self.order_to_trade.max_ratio),
            ("front_running.block_qty", self.front_running.block_qty),
            ("max_owner_instruments", self.max_owner_instruments),
            ("max_account_instruments", self.max_account_instruments),
        ]
        for name, value in positive:
            if value <= 0:
                raise ConfigError(f"{PREFIX}.{name}: expected a positive integer, got {value}")
        for name, value in [("wash_trades.max_price_ticks", self.wash_trades.max_price_ticks),
                            ("marking_close.min_count", self.marking_close.min_count),
                            ("marking_close.min_qty", self.marking_close.min_qty)]:
            if value < 0:
                raise ConfigError(f"{PREFIX}.{name}: expected 0 or a positive integer, got {value}")
        for name, value in [("layering.min_cancel_pct", self.layering.min_cancel_pct),
                            ("marking_close.min_share_pct", self.marking_close.min_share_pct)]:
            if not 0 <= value <= 100:
                raise ConfigError(f"{PREFIX}.{name}: expected a percentage 0..100, got {value}")
        if self.layering.min_cancel_pct == 0:
            raise ConfigError(f"{PREFIX}.layering.min_cancel_pct: expected 1..100, got 0")
        if self.layering.min_orders > sk.LR or self.layering.min_levels > self.layering.min_orders:
            raise ConfigError(
                f"{PREFIX}.layering: expected min_levels <= min_orders <= {sk.LR} (orders remembered "
                f"per owner and instrument), got min_levels {self.layering.min_levels}, min_orders "
                f"{self.layering.min_orders}"
            )
        mc = self.marking_close
        if mc.window_minutes > 12 * 60:
            raise ConfigError(f"{PREFIX}.marking_close.window_minutes: expected at most 720, "
                              f"got {mc.window_minutes}")
        if mc.min_share_pct == 0 and mc.min_count == 0:
            raise ConfigError(f"{PREFIX}.marking_close: set min_share_pct or min_count (both are 0)")
        parse_close_time(mc.close_time)
        zone(mc.timezone)
        if ref is not None:
            for i, account in enumerate(self.front_running.client_accounts):
                if account not in ref.accounts:
                    raise ConfigError(f"{PREFIX}.front_running.client_accounts[{i}]: unknown "
                                      f"account {account!r}")

    def params(self, n_accounts: int, n_owners: int, n_instr: int) -> np.ndarray:
        """The kernel's parameter vector (``P_*``), in ns, lots, ticks and percent."""
        p = np.zeros(sk.P_NCOLS, dtype=np.int64)
        detectors = [(D_WASH, self.wash_trades), (D_SPOOF, self.spoofing), (D_LAYER, self.layering),
                     (D_CLOSE, self.marking_close), (D_OTR, self.order_to_trade),
                     (D_FRONT, self.front_running)]
        p[sk.P_N_ACCOUNTS], p[sk.P_N_OWNERS], p[sk.P_N_INSTR] = n_accounts, n_owners, n_instr
        p[sk.P_ENABLED] = sum(1 << d for d, c in detectors if c.enabled)
        p[sk.P_WASH_WINDOW] = self.wash_trades.window_ms * MS
        p[sk.P_WASH_TICKS] = self.wash_trades.max_price_ticks
        p[sk.P_SPOOF_QTY] = self.spoofing.min_qty
        p[sk.P_SPOOF_WINDOW] = self.spoofing.cancel_within_ms * MS
        lay = self.layering
        p[sk.P_LAYER_ORDERS], p[sk.P_LAYER_LEVELS] = lay.min_orders, lay.min_levels
        p[sk.P_LAYER_STACK_WINDOW] = lay.stack_window_ms * MS
        p[sk.P_LAYER_CANCEL_WINDOW] = lay.cancel_within_ms * MS
        p[sk.P_LAYER_CANCEL_PCT] = lay.min_cancel_pct
        mc = self.marking_close
        p[sk.P_CLOSE_WINDOW] = mc.window_minutes * 60 * S
        p[sk.P_CLOSE_SHARE_PCT], p[sk.P_CLOSE_COUNT], p[sk.P_CLOSE_QTY] = (
            mc.min_share_pct, mc.min_count, mc.min_qty)
        otr = self.order_to_trade
        p[sk.P_OTR_BUCKET] = max(1, otr.window_s * S // sk.OTR_BUCKETS)
        p[sk.P_OTR_MIN], p[sk.P_OTR_RATIO] = otr.min_orders, otr.max_ratio
        p[sk.P_FRONT_QTY] = self.front_running.block_qty
        return p


def parse_close_time(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}.marking_close.close_time: expected HH:MM or HH:MM:SS, "
                          f"got {text!r}") from exc


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{PREFIX}.marking_close.timezone: expected an IANA time zone such as "
                          f"'America/New_York', got {name!r}") from exc


# -- FINDINGS --------------------------------------------------------------------------------------

DETECTOR_NAMES = {D_WASH: "wash_trades", D_SPOOF: "spoofing", D_LAYER: "layering",
                  D_CLOSE: "marking_close", D_OTR: "order_to_trade", D_FRONT: "front_running"}
_SIDE = ("buy", "sell")


class Finding(msgspec.Struct, frozen=True):
    """One suspected episode: which detector, who, where, when, and the orders and fills behind it."""

    detector: str
    account: str
    symbol: str
    ts: int
    order_ids: tuple[int, ...]
    exec_ids: tuple[int, ...]
    text: str
    severity: Severity


# -- THE SURVEILLANCE ------------------------------------------------------------------------------


class Surveillance:
    """All detectors over one shard's event stream. Not thread-safe: one writer, like the pipeline.

    ``encode`` keeps a map of working orders (instrument, side, owner, arrival) because cancels
    and expiries do not carry them; it is state, dumped and hashed with the detectors' windows.
    """

    FOUND_CAPACITY = 1024  # finding rows per kernel call; the wrapper drains and calls again

    def __init__(self, config: SurveillanceConfig, ref: ReferenceData):
        config.check(ref)
        self.config = config
        self.ref = ref
        self.accounts = list(ref.account_index)
        owner_index: dict[str, int] = {}
        for acc in ref.accounts.values():
            owner_index.setdefault(acc.owner_id, len(owner_index))
        self.owners = list(owner_index)
        self._owner_of = [owner_index[ref.accounts[a].owner_id] for a in self.accounts]
        self._instr_index = {sym: inst.index for sym, inst in ref.instruments.items()}
        self._severity = {D_WASH: config.wash_trades.severity, D_SPOOF: config.spoofing.severity,
                          D_LAYER: config.layering.severity, D_CLOSE: config.marking_close.severity,
                          D_OTR: config.order_to_trade.severity,
                          D_FRONT: config.front_running.severity}
        n_acc, n_instr = len(self.accounts), len(ref.by_index)
        self.params = config.params(n_acc, len(self.owners), n_instr)
        self.is_client = np.zeros(max(n_acc, 1), dtype=np.int64)
        for account in config.front_running.client_accounts:
            self.is_client[ref.account_index[account]] = 1
        self._close_time = parse_close_time(config.marking_close.close_time)
        self._zone = zone(config.marking_close.timezone)
        self._close_cache: dict[int, int] = {}
        self._closes_key: tuple[int, int] | None = None
        self._closes_value = np.zeros(0, dtype=np.int64)
        self._kernel = sk.run  # its entry point after the first call
        self._orders: dict[int, list[int]] = {}  # oid -> [account, owner, instr, side, qty, price, ts]
        self._arrays = _new_state(_pow2(config.max_owner_instruments),
                                  _pow2(config.max_account_instruments), max(n_instr, 1))
        self._found = np.zeros((self.FOUND_CAPACITY, sk.F_NCOLS), dtype=np.int64)

    # -- COMMANDS ----------------------------------------------------------------------------------

    def encode(self, events: list) -> np.ndarray:
        """Turn pipeline events into (n, R_NCOLS) int64 rows; other events are skipped. O(n).

        Orders this object never saw accepted (before a restart without ``load``) are skipped
        for cancels, expiries and replaces, and taken from the event itself for fills."""
        out: list[tuple] = []
        append = out.append
        orders = self._orders
        acc_index, owner_of, instr_index = self.ref.account_index, self._owner_of, self._instr_index
        for e in events:
            kind = type(e)
            if kind is OrderFilled:
                o = orders.get(e.order_id)
                if o is None:
                    acc = acc_index.get(e.account)
                    ins = instr_index.get(e.symbol)
                    if acc is None or ins is None:
                        continue
                    o = [acc, owner_of[acc], ins, int(e.side), e.cum_qty + e.leaves_qty, e.last_px, e.ts]
                append((K_FILL, e.ts, o[0], o[1], o[2], o[3], e.order_id, e.exec_id, e.last_qty,
                        e.last_px, 1 if e.maker else 0, o[4], e.leaves_qty, o[6], 0))
                if e.leaves_qty <= 0:
                    orders.pop(e.order_id, None)
            elif kind is OrderAccepted:
                acc = acc_index.get(e.account)
                ins = instr_index.get(e.symbol)
                if acc is None or ins is None:
                    continue
                o = [acc, owner_of[acc], ins, int(e.side), e.qty, e.price, e.ts]
                orders[e.order_id] = o
                append((K_NEW, e.ts, acc, o[1], ins, o[3], e.order_id, 0, e.qty, e.price, 0, e.qty,
                        e.qty, e.ts, 0))
            elif kind is OrderCanceled or kind is OrderExpired:
                o = orders.pop(e.order_id, None)
                if o is None:
                    continue
                if kind is OrderCanceled:
                    row_kind, qty = K_CANCEL, e.canceled_qty
                else:
                    row_kind, qty = K_EXPIRE, e.expired_qty
                append((row_kind, e.ts, o[0], o[1], o[2], o[3], e.order_id, 0, qty, o[5], 0, o[4],
                        0, o[6], e.code))
            elif kind is OrderReplaced:
                o = orders.get(e.order_id)
                if o is None:
                    continue
                o[4], o[5] = e.qty, e.price
                append((K_REPLACE, e.ts, o[0], o[1], o[2], o[3], e.order_id, 0, e.qty, e.price, 0,
                        e.qty, e.leaves_qty, o[6], 1 if e.priority_kept else 0))
            elif kind is OrderRejected and e.order_id:
                orders.pop(e.order_id, None)
        if not out:
            return np.zeros((0, R_NCOLS), dtype=np.int64)
        return np.array(out, dtype=np.int64)

    def process(self, rows: np.ndarray) -> list[Finding]:
        """Run every enabled detector over the rows (time-ordered). O(rows); findings in order.

        Rows outside the column domains (kind, side, indices, 0 <= ts < 2**61) are skipped and
        counted in ``stats()["bad_rows"]``."""
        if type(rows) is not np.ndarray or rows.dtype != np.int64 or not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != R_NCOLS:
            raise ValueError(f"rows must be an (n, {R_NCOLS}) int64 array, got shape {rows.shape}")
        n = len(rows)
        if n == 0:
            return []
        if n <= 32:  # the per-command path: Python's min/max beat two numpy reductions here
            ts = rows[:, R_TS].tolist()
            low, high = min(ts), max(ts)
        else:
            ts = rows[:, R_TS]
            low, high = int(ts.min()), int(ts.max())
        return self._run(rows, high, self._closes(low, high))

    def advance(self, now: int) -> list[Finding]:
        """Let time pass to ``now`` (ns) with no events: judges close windows that have ended."""
        empty = np.zeros((0, R_NCOLS), dtype=np.int64)
        return self._run(empty, now, self._closes(now, now))

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the kernel, on a throwaway copy of the state."""
        saved = self.dump()
        self.process(np.zeros((1, R_NCOLS), dtype=np.int64))
        self.load(saved)

    # -- SNAPSHOTS -------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """The windows and the order map as bytes (used table slots only). O(state)."""
        a = self._arrays
        pairs_used = np.flatnonzero(a["pkeys"] != sk.EMPTY)
        accts_used = np.flatnonzero(a["akeys"] != sk.EMPTY)
        state = _Dump(
            version=1,
            shapes=[list(a[name].shape) for name in _ARRAY_NAMES],
            pkeys=a["pkeys"].tobytes(), akeys=a["akeys"].tobytes(),
            pairs=a["pairs"][pairs_used].tobytes(), wring=a["wring"][pairs_used].tobytes(),
            lring=a["lring"][pairs_used].tobytes(), accts=a["accts"][accts_used].tobytes(),
            instr=a["instr"].tobytes(), blocks=a["blocks"].tobytes(),
            pending=a["pending"].tobytes(), glob=a["glob"].tobytes(),
            orders=sorted([oid, *o] for oid, o in self._orders.items()),
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        """Restore what ``dump`` wrote; the capacities and reference data must be the same."""
        state = msgspec.msgpack.decode(data, type=_Dump)
        a = self._arrays
        now = [list(a[name].shape) for name in _ARRAY_NAMES]
        if state.version != 1 or state.shapes != now:
            raise ValueError(f"surveillance state of shapes {state.shapes} does not fit this "
                             f"configuration's {now} (capacities and reference data must match)")
        fresh = _new_state(len(a["pkeys"]), len(a["akeys"]), a["instr"].shape[0])
        pkeys = np.frombuffer(state.pkeys, dtype=np.int64).copy()
        akeys = np.frombuffer(state.akeys, dtype=np.int64).copy()
        pairs_used = np.flatnonzero(pkeys != sk.EMPTY)
        accts_used = np.flatnonzero(akeys != sk.EMPTY)
        fresh["pkeys"][:], fresh["akeys"][:] = pkeys, akeys
        for name, used, raw in [("pairs", pairs_used, state.pairs), ("wring", pairs_used, state.wring),
                                ("lring", pairs_used, state.lring),
                                ("accts", accts_used, state.accts)]:
            shape = (len(used), *fresh[name].shape[1:])
            fresh[name][used] = np.frombuffer(raw, dtype=np.int64).reshape(shape)
        for name, raw in [("instr", state.instr), ("blocks", state.blocks),
                          ("pending", state.pending), ("glob", state.glob)]:
            fresh[name][...] = np.frombuffer(raw, dtype=np.int64).reshape(fresh[name].shape)
        self._arrays = fresh
        self._orders = {row[0]: list(row[1:]) for row in state.orders}

    # -- QUERIES ---------------------------------------------------------------------------------

    def state_hash(self) -> bytes:
        """A digest of every window, counter and the order map. O(state)."""
        h = hashlib.blake2b(digest_size=16)
        for name in _ARRAY_NAMES:
            h.update(self._arrays[name].tobytes())
        h.update(msgspec.msgpack.encode(sorted([oid, *o] for oid, o in self._orders.items())))
        return h.digest()

    def stats(self) -> dict[str, int]:
        """Counters: rows seen, rows skipped, and what did not fit a fixed capacity. O(1)."""
        g = self._arrays["glob"]
        return {"rows": int(g[sk.G_ROWS]), "bad_rows": int(g[sk.G_BAD_ROWS]),
                "owner_instruments": int(g[sk.G_PAIRS_USED]),
                "account_instruments": int(g[sk.G_ACCTS_USED]),
                "owner_instruments_full": int(g[sk.G_PAIRS_FULL]),
                "account_instruments_full": int(g[sk.G_ACCTS_FULL]),
                "blocks_full": int(g[sk.G_BLOCKS_FULL]), "reports_full": int(g[sk.G_REPORTS_FULL]),
                "working_orders": len(self._orders)}

    # -- INTERNALS -------------------------------------------------------------------------------

    def _run(self, rows: np.ndarray, now: int, closes: np.ndarray) -> list[Finding]:
        a, found, findings = self._arrays, self._found, []
        glob = a["glob"]
        glob[sk.G_NEXT] = 0
        while True:
            status = self._kernel(rows, now, self.params, closes, self.is_client, a["pkeys"], a["pairs"],
                                  a["wring"], a["lring"], a["akeys"], a["accts"], a["instr"], a["blocks"],
                                  a["pending"], glob, found)
            if self._kernel is sk.run:  # compiled (or loaded) now: call its entry point from here on
                self._kernel = _entry(sk.run)
            n_found = int(glob[sk.G_NFOUND])
            if n_found:
                findings.extend(self._finding(row) for row in found[:n_found].tolist())
            if status == ST_OK:
                break
        glob[sk.G_NEXT] = 0
        glob[sk.G_NFOUND] = 0
        return findings

    def _closes(self, low: int, high: int) -> np.ndarray:
        """Close instants (ns) from the day before ``low`` to the day after ``high``, in the
        session's time zone (DST included). A batch spanning over 10 days gets only its ends."""
        low, high = max(low, 0), min(max(high, 0), sk.TS_LIMIT - 1)
        first, last = low // DAY_NS - 1, high // DAY_NS + 1
        if (first, last) == self._closes_key:  # the common case: a batch within today
            return self._closes_value
        self._closes_key = (first, last)
        days = range(first, last + 1) if last - first <= 12 else [*range(first, first + 3),
                                                                    *range(last - 2, last + 1)]
        self._closes_value = np.array(sorted({self._close_on(d) for d in days}), dtype=np.int64)
        return self._closes_value

    def _close_on(self, day: int) -> int:
        ns = self._close_cache.get(day)
        if ns is None:
            local = datetime.combine(date(1970, 1, 1) + timedelta(days=day), self._close_time,
                                     tzinfo=self._zone)
            ns = int(local.timestamp()) * S + local.microsecond * 1000
            self._close_cache[day] = ns
        return ns

    def _finding(self, r: list[int]) -> Finding:
        det = r[F_DET]
        account = self.accounts[r[F_ACCOUNT]]
        symbol = self.ref.by_index[r[F_INSTR]].symbol
        oids = tuple(dict.fromkeys(r[F_OIDS:F_OIDS + r[F_NOIDS]]))  # an order may fill many times
        execs = tuple(r[F_EXECS:F_EXECS + r[F_NEXECS]])
        a, b, c, d, e, f = r[F_A], r[F_B], r[F_C], r[F_D], r[F_E], r[F_F]
        owner = self.owners[r[sk.F_OWNER]]
        if det == D_WASH:
            text = (f"wash trade: owner {owner} traded both sides of {symbol} {f / MS:.3f} ms apart: "
                    f"{account} {b} lots @ {d} and {self.accounts[a]} {c} lots @ {e} (orders "
                    f"{oids[0]} and {oids[-1]})")
        elif det == D_SPOOF:
            text = (f"spoofing: {account} canceled {a} of {b} lots to {_SIDE[f]} {symbol} @ {c}, "
                    f"{d / MS:.3f} ms after its own opposite fill (order worked {e / MS:.3f} ms)")
        elif det == D_LAYER:
            text = (f"layering: {account} stacked {a} {_SIDE[c]} orders in {symbol}, traded the other "
                    f"side, then canceled {b} of them within {d / MS:.3f} ms")
        elif det == D_CLOSE:
            text = (f"marking the close: {account} took {a} of {b} lots ({d / 100:.2f}%) of {symbol} "
                    f"in {c} aggressive executions in the {e // (60 * S)} minutes before the close")
        elif det == D_OTR:
            text = (f"order-to-trade: {account} sent {a} order messages for {b} executions in "
                    f"{symbol} within {c // S} s")
        else:
            text = (f"front running: {account} ({owner}) {_SIDE[f]} {c} lots of {symbol} @ {d}, "
                    f"{e / MS:.3f} ms after the client block order {oids[0]} of {b} lots from "
                    f"{self.accounts[a]} arrived")
        return Finding(DETECTOR_NAMES[det], account, symbol, r[F_TS], oids, execs, text,
                       self._severity[det])


_ARRAY_NAMES = ("pkeys", "pairs", "wring", "lring", "akeys", "accts", "instr", "blocks", "pending",
                "glob")


class _Dump(msgspec.Struct):
    version: int
    shapes: list[list[int]]
    pkeys: bytes
    akeys: bytes
    pairs: bytes
    wring: bytes
    lring: bytes
    accts: bytes
    instr: bytes
    blocks: bytes
    pending: bytes
    glob: bytes
    orders: list[list[int]]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _zeros(shape, dtype=np.int64) -> np.ndarray:
    """Zeros written now, so the pages are faulted in at start-up, not on the hot path."""
    a = np.empty(shape, dtype=dtype)
    a.fill(0)
    return a


def _full(shape, value, dtype=np.int64) -> np.ndarray:
    a = np.empty(shape, dtype=dtype)
    a.fill(value)
    return a


def _new_state(pair_cap: int, acct_cap: int, n_instr: int) -> dict[str, np.ndarray]:
    """Fresh state arrays; time fields start at NEVER, ids at NO_ID."""
    pairs = _zeros((pair_cap, sk.PS_NCOLS), dtype=np.int64)
    pairs[:, sk.PS_WASH_LAST] = sk.NEVER
    pairs[:, sk.PS_LAST_FILL] = sk.NEVER
    pairs[:, sk.PS_LAST_FILL + 3] = sk.NEVER
    pairs[:, sk.PS_SPOOF_EXEC] = sk.NO_ID
    accts = _zeros((acct_cap, sk.AS_NCOLS), dtype=np.int64)
    accts[:, sk.AS_OTR_BID:sk.AS_OTR_BID + sk.OTR_BUCKETS] = sk.NEVER
    accts[:, sk.AS_OTR_LAST_FIRE] = sk.NEVER
    accts[:, sk.AS_MC_CLOSE] = sk.NEVER
    instr = _zeros((n_instr, sk.IS_NCOLS), dtype=np.int64)
    instr[:, sk.IS_VOL_CLOSE] = sk.NEVER
    glob = _zeros(sk.G_NCOLS, dtype=np.int64)
    glob[sk.G_CUR_CLOSE] = sk.NEVER
    return {
        "pkeys": _full(pair_cap, sk.EMPTY, dtype=np.int64),
        "pairs": pairs,
        "wring": _zeros((pair_cap, sk.WR, sk.W_NF), dtype=np.int64),
        "lring": _zeros((pair_cap, sk.L_NF, sk.LR), dtype=np.int64),
        "akeys": _full(acct_cap, sk.EMPTY, dtype=np.int64),
        "accts": accts,
        "instr": instr,
        "blocks": _zeros((n_instr, sk.MAXB, sk.B_NF), dtype=np.int64),
        "pending": _zeros(acct_cap, dtype=np.int64),
        "glob": glob,
    }


__all__ = ["Finding", "Surveillance", "SurveillanceConfig", "DETECTOR_NAMES"]
