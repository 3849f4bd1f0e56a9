"""Compliance rules benchmark: pre-trade latency and post-trade re-check; prints one JSON document.

    .venv/bin/python benchmarks/bench_compliance.py [--orders 200000] [--batches 300]

A seeded book of 1,000 rules, 1,000 accounts (50 funds of 20), 2,000 instruments and 10,000
positions (plus working orders), every rule kind present.

- pre-trade: ``check_order`` per order (Python call included), p50 / p99 / p99.9 in ns, alone and
  with what stage 4 (compliance/stage.py) then reads: a HARD outcome's code and text, a SOFT / WARN
  outcome's failures with their texts (so work deferred to first access is timed too); against a
  baseline measured in the same run: the same compiled entry point on a kernel that returns at
  once (the floor of a jitted call with these arguments); ``check_batch`` throughput;
- post-trade: ``recheck`` after a price batch moving every instrument (and one moving 5 %),
  p50 / p99 in µs, against a dense numpy revaluation of every position (the naive baseline);
- ``touch`` (stage-7 sync of one cell) latency.

After timing it checks the results: batch == per-order on a sample, the incrementally kept
aggregates == a rebuild (``validate``), and an incremental recheck leaves nothing for a full one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from decimal import Decimal

import numpy as np
from numba import njit, typeof

from compliance.rules import ComplianceRules, RuleSpec
from engine.model import AccountSpec, InstrumentSpec, ReferenceData
from engine.portfolio import Portfolio

SEED = 20261126
N_FUNDS, PER_FUND, N_INST, N_POS = 50, 20, 2000, 10_000
SECTORS = [f"S{k}" for k in range(11)]
COUNTRIES = [f"C{k}" for k in range(20)]


def _percentiles(ns) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64)
    return {f"p{p}": float(np.percentile(a, p)) for p in (50, 99, 99.9)} | {"n": len(a)}


def build(seed: int = SEED):
    rng = np.random.default_rng(seed)
    instruments = []
    for i in range(N_INST):
        cls = "government" if i % 50 == 0 else "equity"
        instruments.append(InstrumentSpec(
            symbol=f"I{i}", currency="USD", tick_size=Decimal("0.01"), lot_size=1,
            price_band=(Decimal("0.01"), Decimal("100000")), issuer=f"U{i - i % 4 if i % 3 == 0 else i}",
            sector=SECTORS[i % len(SECTORS)], country=COUNTRIES[i % len(COUNTRIES)],
            asset_class=cls, shares_outstanding=int(rng.integers(10**6, 10**8)) if cls == "equity" else 0,
            adv=int(rng.integers(10**4, 10**6))))
    accounts = [AccountSpec(id=f"A{f}_{k}", fund=f"F{f}", cash={"USD": Decimal(10**7)})
                for f in range(N_FUNDS) for k in range(PER_FUND)]
    ref = ReferenceData(instruments, accounts)
    pf = Portfolio(ref)
    for i in range(N_INST):
        pf.tick(i, 0, 0, int(rng.integers(1000, 20000)), 1)
    n_acc = len(accounts)
    cells = rng.choice(n_acc * N_INST, N_POS, replace=False)
    for cell in cells.tolist():
        a, i = divmod(cell, N_INST)
        pf.position[a, i] = int(rng.integers(-50, 2000))
        if rng.random() < 0.3:
            pf.working_buy[a, i] = int(rng.integers(1, 200))
        if rng.random() < 0.2:
            pf.working_sell[a, i] = int(rng.integers(1, 200))
    rules = [
        RuleSpec(id="restricted", kind="restricted_list", scope="firm", severity="HARD"),
        RuleSpec(id="watch", kind="watch_list", scope="firm", severity="WARN"),
        RuleSpec(id="locate", kind="short_sale_locate", scope="firm", severity="HARD"),
        RuleSpec(id="adv", kind="max_adv_pct", scope="firm", severity="SOFT", max_pct=25),
        RuleSpec(id="so-firm", kind="shares_outstanding", scope="firm", severity="HARD", max_pct=5),
    ]
    for f in range(N_FUNDS):
        t = f"F{f}"
        rules += [
            RuleSpec(id=f"{t}-ic", kind="issuer_concentration", scope="fund", target=t,
                     severity="HARD", max_pct=8),
            RuleSpec(id=f"{t}-reg", kind="ucits_5_10_40" if f % 2 else "act40_75_5_10",
                     scope="fund", target=t, severity="SOFT"),
            RuleSpec(id=f"{t}-so", kind="shares_outstanding", scope="fund", target=t,
                     severity="HARD", max_pct=2),
        ]
        rules += [RuleSpec(id=f"{t}-sec{k}", kind="weight_range", scope="fund", target=t,
                           severity="SOFT", by="sector", key=SECTORS[k], min_pct=0, max_pct=30)
                  for k in range(8)]
        rules += [RuleSpec(id=f"{t}-cty{k}", kind="weight_range", scope="fund", target=t,
                           severity="WARN", by="country", key=COUNTRIES[k], max_pct=15)
                  for k in range(4)]
    k = 0
    while len(rules) < 1000:
        acc = accounts[k * 4 % n_acc].id
        rules.append(RuleSpec(id=f"{acc}-adv", kind="max_adv_pct", scope="account", target=acc,
                              severity="HARD", max_pct=10) if k % 2 else
                     RuleSpec(id=f"{acc}-ic", kind="issuer_concentration", scope="account",
                              target=acc, severity="SOFT", max_pct=20))
        k += 1
    issuers = sorted({inst.spec.issuer_id for inst in ref.by_index})
    cr = ComplianceRules(rules, ref, pf, restricted=issuers[::97], watch=issuers[5::83],
                         locates={(accounts[a].id, f"I{i}"): 100 for a, i in
                                  zip(rng.integers(0, n_acc, 500).tolist(),
                                      rng.integers(0, N_INST, 500).tolist(), strict=True)})
    # order flow: 70 % buys or sells of lines the account holds, 30 % buys of any instrument;
    # 1-200 lots at the mark ± 2 % (sells beyond a small position run short: locates)
    held = np.argwhere(pf.position > 0)
    n = 400_000
    pick = held[rng.integers(0, len(held), n)]
    use_held = rng.random(n) < 0.7
    accounts_ = np.where(use_held, pick[:, 0], rng.integers(0, n_acc, n))
    insts = np.where(use_held, pick[:, 1], rng.integers(0, N_INST, n))
    marks = pf.marks()[insts]
    price = (marks * (1 + rng.uniform(-0.02, 0.02, n))).astype(np.int64)
    side = np.where(use_held, rng.integers(0, 2, n), 0)  # sells only of held lines
    orders = np.column_stack([accounts_, insts, side, rng.integers(1, 200, n),
                              price]).astype(np.int64)
    return cr, pf, orders, rng


@njit(cache=True)
def _floor(IB, FB, pos, wsell, a, i, side, qty, price, full):
    return 0


def _stage_reads(out) -> object:
    """What compliance/stage.py reads of an outcome (HARD: code and text; SOFT / WARN: every
    failure's fields and text, and the worst one)."""
    if out.severity == 0:
        return None
    if out.severity == 3:
        return out.code, out.text
    failed = out.failures
    worst = max(failed, key=lambda e: e.severity)
    return [(e.rule_id, e.version, e.severity, e.code, e.text, e.value, e.limit) for e in failed], worst


def pre_trade(cr: ComplianceRules, pf: Portfolio, orders: np.ndarray, n: int) -> dict:
    args = (cr.IB, cr.FB, pf.position, pf.working_sell, 0, 0, 0, 1, 1, 0)
    _floor(*args)
    want = tuple(typeof(x) for x in args)
    floor = next(c.entry_point for s, c in _floor.overloads.items() if tuple(s) == want)
    check, clock = cr.check_order, time.perf_counter_ns
    IB, FB, pos, ws = cr.IB, cr.FB, pf.position, pf.working_sell
    rows = orders[:n].tolist()
    times, read, base, sev = [], [], [], []
    gc.collect()
    gc.disable()  # the engine's loop runs with the cyclic GC out of the way (see the report)
    try:
        for a, i, side, qty, price in rows:
            t0 = clock()
            floor(IB, FB, pos, ws, a, i, side, qty, price, 0)
            t1 = clock()
            out = check(a, i, side, qty, price)
            t2 = clock()
            _stage_reads(out)
            t3 = clock()
            base.append(t1 - t0)
            times.append(t2 - t1)
            read.append(t3 - t1)
            sev.append(out.severity)
    finally:
        gc.enable()
    sev = np.asarray(sev)
    times = np.asarray(times)
    read = np.asarray(read)
    outcomes = np.bincount(sev, minlength=4)
    t0 = time.perf_counter()
    result = cr.check_batch(orders)
    batch_s = time.perf_counter() - t0
    sample = orders[:: max(1, len(orders) // 20000)]
    expect = cr.check_batch(sample)
    for row, (worst, code, _) in zip(sample.tolist(), expect.tolist(), strict=True):
        out = cr.check_order(*row)
        assert (out.severity, out.code) == (worst, code), row
    lat, flo = _percentiles(times), _percentiles(base)
    return {
        "check_order_ns": lat,
        "check_order_passing_ns": _percentiles(times[sev == 0]),
        "check_order_failing_ns": _percentiles(times[sev > 0]) if (sev > 0).any() else None,
        "with_stage_reads_ns": _percentiles(read),
        "with_stage_reads_passing_ns": _percentiles(read[sev == 0]),
        "with_stage_reads_failing_ns": _percentiles(read[sev > 0]) if (sev > 0).any() else None,
        "baseline_empty_kernel_call_ns": flo,
        "ratio_p50": lat["p50"] / flo["p50"],
        "outcomes_pass_warn_soft_hard": outcomes.tolist(),
        "batch_orders_per_s": len(orders) / batch_s,
        "batch_orders": len(orders),
        "batch_fail_rate": float(np.mean(result[:, 0] > 0)),
        "verified_batch_equals_per_order": len(sample),
    }


def post_trade(cr: ComplianceRules, pf: Portfolio, rng, batches: int) -> dict:
    n_inst = len(pf.last)
    everything = np.ones(n_inst, dtype=bool)
    out = {}
    for name, frac in (("all_instruments", 1.0), ("5pct_instruments", 0.05)):
        times, naive, transitions = [], [], 0
        for _ in range(batches):
            moved = rng.random(n_inst) < frac
            drift = rng.integers(-30, 31, n_inst)
            new = np.maximum(pf.last + np.where(moved, drift, 0), 100)
            pf.last[:] = new
            pf.refresh_marks()  # as the batch's ticks would have
            t0 = time.perf_counter_ns()
            transitions += len(cr.recheck(moved if frac < 1 else everything))
            t1 = time.perf_counter_ns()
            value = (pf.position * (pf.marks() * pf.unit_value)).sum(axis=1)  # naive baseline
            t2 = time.perf_counter_ns()
            times.append((t1 - t0) / 1000)
            naive.append((t2 - t1) / 1000)
            assert value.shape == (pf.position.shape[0],)
        p, q = _percentiles(times), _percentiles(naive)
        out[name] = {"recheck_us": p, "baseline_dense_numpy_revaluation_us": q,
                     "ratio_p50": p["p50"] / q["p50"], "transitions": transitions}
    cr.validate()
    assert cr.recheck(None) == [], "an incremental recheck missed a transition"
    out["verified"] = "validate() and a full recheck agree with the incremental state"
    out["breaches_in_force"] = len(cr.breaches())
    return out


def touch_latency(cr: ComplianceRules, pf: Portfolio, rng, n: int) -> dict:
    held = np.argwhere(pf.position != 0)
    cells = held[rng.integers(0, len(held), n)].tolist()
    times, clock = [], time.perf_counter_ns
    for a, i in cells:
        pf.working_buy[a, i] += 1
        t0 = clock()
        cr.touch(a, i)
        times.append(clock() - t0)
    cr.validate()
    return {"touch_ns": _percentiles(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    t0 = time.perf_counter()
    cr, pf, orders, rng = build()
    build_s = time.perf_counter() - t0
    cr.recheck()
    result = {
        "benchmark": "compliance",
        "machine": {"platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "book": {"rules": len(cr.rules), "accounts": len(pf.ref.accounts),
                 "instruments": N_INST, "positions": int(np.count_nonzero(pf.position)),
                 "scopes": len(cr.entities), "seed": SEED, "build_s": build_s},
        "pre_trade": pre_trade(cr, pf, orders, args.orders),
        "post_trade": post_trade(cr, pf, rng, args.batches),
        "stage7": touch_latency(cr, pf, rng, 50_000),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
