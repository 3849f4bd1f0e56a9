"""Risk + compliance pre-trade together, as the pipeline calls them (stages 3 and 4), on the
issue's universe: 1,000 rules, 1,000 accounts, 10,000 positions (2,000 instruments).

Per order: ``RiskStage.check`` then ``ComplianceStage.check`` on a SubmitOrder, timed one by one
with perf_counter_ns (p50 / p99 / p99.9); the baseline in the same run is the dict lookups every
check starts with. Batch: ``RiskEngine.check_batch`` + ``ComplianceRules.check_batch`` over the
same orders. After timing, the per-order answers are checked against the batch answers.

Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compliance import build  # noqa: E402

from compliance.rules import Severity  # noqa: E402
from compliance.stage import ComplianceStage  # noqa: E402
from engine.constants import OrderType, Side  # noqa: E402
from engine.messages import SubmitOrder  # noqa: E402
from risk.config import AccountLimits, LimitRow, RiskConfig, UserLimits  # noqa: E402
from risk.engine import RiskEngine  # noqa: E402
from risk.stage import RiskStage  # noqa: E402

N_ORDERS = 50_000


class _PipelineView:
    """What the stages read from the pipeline on a submit: the portfolio."""

    def __init__(self, portfolio):
        self.portfolio = portfolio


def pct(samples) -> dict:
    a = np.asarray(samples, dtype=np.float64)
    return {"p50_ns": float(np.percentile(a, 50)), "p99_ns": float(np.percentile(a, 99)),
            "p99_9_ns": float(np.percentile(a, 99.9)), "n": len(a)}


def main() -> None:
    rules, pf, orders, _ = build()
    ref = rules.ref
    config = RiskConfig(
        limits=[LimitRow(max_order_qty=10_000, max_order_notional=Decimal("100000000"),
                         price_collar_pct=Decimal(5), max_position=1_000_000)],
        accounts=[AccountLimits(max_gross_exposure=Decimal("1e12"), max_net_exposure=Decimal("1e12"),
                                max_orders_per_window=5_000, max_modifies_per_window=5_000)],
        users=[UserLimits(max_orders_per_window=5_000, max_modifies_per_window=5_000)],
    )
    risk = RiskStage(RiskEngine(config, ref, pf))
    compliance = ComplianceStage(rules, None, ref)
    view = _PipelineView(pf)
    accounts = list(ref.account_index)
    rows = orders[:N_ORDERS]
    cmds = [SubmitOrder(accounts[a], f"o{k}", ref.by_index[i].symbol, Side(s), int(q),
                        order_type=OrderType.LIMIT, price=int(p), ts=k * 1_000_000, user="u")  # 1 ms apart
            for k, (a, i, s, q, p) in enumerate(rows.tolist())]

    for cmd in cmds[:2_000]:  # warm
        risk.check(cmd, view)
        compliance.check(cmd, view)
    answers, samples, clock = [], [], time.perf_counter_ns
    check_risk, check_compliance = risk.check, compliance.check
    for cmd in cmds:
        t0 = clock()
        refusal = check_risk(cmd, view)
        outcome = check_compliance(cmd, view) if refusal is None else None
        samples.append(clock() - t0)
        answers.append((refusal, outcome))

    instruments, index = ref.instruments, ref.account_index
    floor = []
    for cmd in cmds:
        t0 = clock()
        _ = instruments[cmd.symbol].index, index[cmd.account]
        floor.append(clock() - t0)

    t0 = time.perf_counter()
    risk_batch = risk.engine.check_batch(cmds)
    t_risk = time.perf_counter() - t0
    t0 = time.perf_counter()
    compliance_batch = rules.check_batch(rows)
    t_compliance = time.perf_counter() - t0

    # the check: risk answers agree, and compliance's worst severity agrees where risk passed
    for k, (refusal, outcome) in enumerate(answers):
        assert (refusal is None) == (risk_batch[k] is None), k
        if refusal is None:
            severity = int(compliance_batch[k, 0])
            if outcome is None:
                assert severity == Severity.PASS, k
            elif type(outcome) is tuple:  # a denial; a Screening (hold or warning) is a NamedTuple
                assert severity == Severity.HARD, (k, severity, outcome, compliance_batch[k])
            else:
                assert severity in (Severity.SOFT, Severity.WARN), k
    denied = sum(1 for r, o in answers if r is not None or o is not None)
    result = {
        "benchmark": "pretrade",
        "universe": {"rules": len(rules.rules), "accounts": len(accounts), "instruments": len(ref.by_index),
                     "positions": int(np.count_nonzero(pf.position))},
        "orders": len(cmds),
        "refused_held_or_warned_share": round(denied / len(cmds), 4),
        "per_order_risk_plus_compliance": pct(samples),
        "baseline_dict_lookups": pct(floor),
        "p50_ratio_to_baseline": float(np.percentile(samples, 50) / max(1.0, np.percentile(floor, 50))),
        "batch_orders_per_s": {"risk": len(cmds) / t_risk, "compliance": len(cmds) / t_compliance,
                               "both": len(cmds) / (t_risk + t_compliance)},
        "target_p99_ns": 5_000,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
