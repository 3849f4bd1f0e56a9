"""Risk as a pipeline stage: the pre-trade check (stage 3), the run-time controls (limits, kill
switch, trading states, all journaled), the throttle notes (stage 8) and the risk query."""

from __future__ import annotations

from engine.constants import RejectCode
from engine.messages import (
    ModifyOrder,
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


class RiskStage:
    controls = (SetRiskLimit, SetKillSwitch, SetTradingState)

    def __init__(self, engine: RiskEngine):
        self.engine = engine
        self._check_submit = engine.check_submit

    # -- STAGE 3 --

    def check(self, cmd, pipeline):
        if type(cmd) is SubmitOrder:
            return self._check_submit(cmd)
        order = pipeline.find_order(cmd)
        return None if order is None else self.engine.check_modify(cmd, order)

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

    # -- STAGE 5: throttle windows count what was journaled, as soon as it is ---

    def note(self, record) -> None:
        kind = type(record)
        if kind is SubmitOrder:
            self.engine.note_submit(record)
        elif kind is ScreenedOrder:
            self.engine.note_submit(record.order)
        elif kind is ModifyOrder:
            self.engine.note_modify(record)

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
        self.engine.load(data)

    def state_hash(self) -> bytes:
        return self.engine.state_hash()


def _everything(order) -> bool:
    return True
