"""Risk as a pipeline stage: the pre-trade check (stage 3), the run-time controls (limits, kill
switch, trading states, all journaled), the throttle notes, the exposure cache's upkeep and the
risk query.

The exposure cache (``RiskEngine.touch`` / ``reprice`` / ``refresh``) follows the portfolio,
live and on replay alike:

- ``note``: a new order's cell as soon as it is opened (the next check in the batch sees it), a
  modified order's cell as soon as the modify is applied (live: the cell ``check`` looked up),
  and an instrument's mark as soon as its ``PriceTick`` is applied;
- ``observe`` (once per batch): every cell an order event of the batch names (fills, cancels,
  expiries, replaces, rejects), the marks of instruments that ticked or traded, and a full
  rebuild after ``EndOfDay``, ``MassCancel`` or ``SetKillSwitch``.

So inside one batch, other cells the book changed (fills, cancels, expiries) count from the
batch's end; until then the cached figures are the earlier ones, which at unchanged marks never
understate (those only narrow a cell's [S, L] range), and marks moved by the batch's fills lag
until then. The checked order's own cell is always read live.
"""

from __future__ import annotations

import numpy as np

from engine.constants import RejectCode
from engine.messages import (
    AllocationMade,
    EndOfDay,
    MassCancel,
    ModifyOrder,
    OrderFilled,
    PriceTick,
    QueryRisk,
    ScreenedOrder,
    SetKillSwitch,
    SetRiskLimit,
    SetTradingState,
    SubmitOrder,
    TableView,
)
from risk.engine import RiskEngine

_COLUMNS = ["account", "symbol", "state", "kill_switch", "position", "working_buy", "working_sell",
            "max_order_qty", "max_order_notional", "price_collar_pct", "max_position",
            "gross_exposure", "max_gross_exposure", "net_exposure", "max_net_exposure",
            "orders_in_window", "max_orders_per_window"]

# Commands after which the whole exposure cache is rebuilt (they change many cells at once).
_REFRESH_ALL = (EndOfDay, MassCancel, SetKillSwitch)


class RiskStage:
    controls = (SetRiskLimit, SetKillSwitch, SetTradingState)

    def __init__(self, engine: RiskEngine):
        self.engine = engine
        self._check_submit = engine.check_submit
        ref = engine.ref
        self._account_index = ref.account_index
        self._inst_index = {symbol: inst.index for symbol, inst in ref.instruments.items()}
        self._n_instruments = len(ref.by_index)
        self._one = np.zeros(self._n_instruments, dtype=np.bool_)  # scratch: one instrument ticked
        self._modified: tuple[int, int] | None = None  # the cell of the modify last checked

    # -- STAGE 3 --

    def check(self, cmd, pipeline):
        if type(cmd) is SubmitOrder:
            return self._check_submit(cmd)
        order = pipeline.find_order(cmd)
        if order is None:
            return None
        self._modified = (self._account_index[order.account], order.instrument)
        return self.engine.check_modify(cmd, order)

    # -- CONTROLS --

    def check_control(self, cmd, pipeline):
        return self._control(cmd, apply=False)

    def apply_control(self, cmd, pipeline) -> list:
        refusal = self._control(cmd, apply=True)
        if refusal is not None:  # validated in stage 1: failing now is a bug
            raise RuntimeError(f"a checked risk control failed to apply: {refusal}")
        if type(cmd) is SetKillSwitch and cmd.on:
            if cmd.scope == "global":
                match = _everything
            elif cmd.scope == "account":
                match = lambda o: o.account == cmd.target  # noqa: E731
            else:
                match = lambda o: o.user == cmd.target  # noqa: E731
            return pipeline.cancel_orders(match, int(RejectCode.RISK_KILL_SWITCH), cmd.ts)
        return []

    def _control(self, cmd, apply: bool):
        engine = self.engine
        if type(cmd) is SetRiskLimit:
            value = None if cmd.value.strip().lower() in ("", "none") else cmd.value
            return engine.set_limit(cmd.account, cmd.symbol, cmd.name, value, apply=apply)
        if type(cmd) is SetKillSwitch:
            return engine.set_kill_switch(cmd.scope, cmd.target, cmd.on, apply=apply)
        return engine.set_trading_state(cmd.account, cmd.symbol, cmd.state, apply=apply)

    # -- STAGE 5: throttle windows count what was journaled, as soon as it is; so does the
    # -- exposure cache for a new order's lots and a price tick ---

    def note(self, record) -> None:
        kind = type(record)
        if kind is SubmitOrder or kind is ScreenedOrder:
            submit = record if kind is SubmitOrder else record.order
            self.engine.note_submit(submit)
            # opened in the portfolio already (a held order's lots count as working too)
            self.engine.touch(self._account_index[submit.account], self._inst_index[submit.symbol])
        elif kind is ModifyOrder:
            self.engine.note_modify(record)
            if self._modified is not None:  # applied already: a larger order widens its cell
                self.engine.touch(*self._modified)
                self._modified = None
        elif kind is PriceTick:
            i = self._inst_index[record.symbol]
            self._one[i] = True
            self.engine.reprice(self._one)
            self._one[i] = False

    # -- STAGE 8: the batch's order events move cells and marks; risk raises no alerts ---

    def observe(self, done: list, pipeline) -> list:
        """Touch every (account, instrument) cell the batch's order events (and records naming
        an order) refer to, reprice instruments that ticked or traded, or rebuild everything
        after a mass change. Returns [] (risk raises no alerts). O(events + accounts × moved
        instruments)."""
        refresh = False
        changed = None
        cells: set[tuple[str, int]] = set()
        orders = pipeline.orders
        for record, events in done:
            kind = type(record)
            if kind in _REFRESH_ALL:
                refresh = True
            elif kind is PriceTick:
                if changed is None:
                    changed = np.zeros(self._n_instruments, dtype=np.bool_)
                changed[self._inst_index[record.symbol]] = True
            order = orders.get(getattr(record, "order_id", 0))  # e.g. RejectHeldOrder: no event names it
            if order is not None:
                cells.add((order.account, order.instrument))
            for event in events:
                order = orders.get(getattr(event, "order_id", 0))
                if order is None:
                    continue
                cells.add((order.account, order.instrument))
                if type(event) is AllocationMade:  # the allocated account's cell moved too
                    cells.add((event.account, order.instrument))
                if type(event) is OrderFilled:
                    if changed is None:
                        changed = np.zeros(self._n_instruments, dtype=np.bool_)
                    changed[order.instrument] = True
        engine = self.engine
        if refresh:
            engine.refresh()
            return []
        index, touch = self._account_index, engine.touch
        for account, instrument in cells:
            touch(index[account], instrument)
        if changed is not None:
            engine.reprice(changed)
        return []

    # -- QUERIES, STATE --

    def query(self, query, pipeline):
        if type(query) is not QueryRisk:
            return None
        if query.account and query.account not in pipeline.ref.account_index:
            from engine.messages import CommandError

            return CommandError(int(RejectCode.UNKNOWN_ACCOUNT), f"unknown account {query.account!r}")
        view = self.engine.view(query.account or None)
        rows = []
        for acc in view.accounts:
            account_part = [acc.gross_exposure, acc.max_gross_exposure, acc.net_exposure,
                            acc.max_net_exposure, acc.orders_in_window, acc.max_orders_per_window]
            rows.append([acc.account, "*", acc.state, acc.kill_switch or view.global_kill_switch,
                         "", "", "", "", "", "", "", *account_part])
            for c in acc.cells:
                rows.append([acc.account, c.symbol, c.state, "", c.position, c.working_buy,
                             c.working_sell, c.max_order_qty, c.max_order_notional,
                             c.price_collar_pct, c.max_position, "", "", "", "", "", ""])
        rows = [["" if v is None else v for v in row] for row in rows]
        title = (f"risk (global kill switch {'ON' if view.global_kill_switch else 'off'}, "
                 f"global state {view.global_state}, killed users {view.killed_users or '-'})")
        return TableView(title, _COLUMNS, rows)

    def dump(self) -> bytes:
        return self.engine.dump()

    def load(self, data: bytes) -> None:
        self.engine.load(data)  # rebuilds the exposure cache from the (restored) portfolio

    def state_hash(self) -> bytes:
        return self.engine.state_hash()


def _everything(order) -> bool:
    return True
