"""Compliance rules: restricted and watch lists, concentration, weights, regulatory diversification,
short-sale locates and ADV, evaluated pre-trade on the projected portfolio and post-trade on live
prices.

``RuleSpec`` is one ``[[compliance.rules]]`` table. ``ComplianceRules`` turns the specs into rule
tables in numpy arrays (``compliance.rule_kernels``) and keeps per-scope aggregates cached: NAV,
and per issuer, sector, country and asset class the value of positions, working buys and working
sells at the cached marks in the scope's currency. Pre-trade reads them and adds the order's
delta; ``touch`` (after every change to a cell: accept, fill, cancel, replace) and ``recheck``
(after a price batch) keep them current.

What "projected" means, per rule (values at the cached marks, the order at ``price``):

- issuer_concentration: buy: Σ_scope issuer position value + working buys + this buy ≤ max_pct of
  NAV; sell: position value − working sells − this sell ≥ −max_pct of NAV (a short is an exposure
  too). An order that reduces the exposure always passes.
- weight_range: the bucket's (sector / country / asset class) value, the same way: a buy checks
  max_pct (position + working buys + this buy), a sell checks min_pct (position − working sells −
  this sell). Orders in other buckets do not change it and are not evaluated.
- shares_outstanding: buy of an equity line (asset_class "equity"; other classes have no shares
  outstanding and are not evaluated): Σ_scope (position + working buys + this buy) × lot_size ≤
  max_pct of the line's shares outstanding (each share line against its own count). Sells: not
  evaluated (they cannot raise a holding).
- ucits_5_10_40: buy: the issuer's projected value (position + working buys + this buy) ≤
  max_pct (10) of NAV, and the sum over issuers whose projected value exceeds threshold_pct (5)
  ≤ aggregate_pct (40) of NAV. Sells: not evaluated.
- act40_75_5_10: buy: an issuer is non-qualifying when its projected value exceeds issuer_pct (5)
  of total assets or any of its equity lines exceeds voting_pct (10) of its shares outstanding;
  the non-qualifying issuers' projected values together must stay ≤ 100 − diversified_pct (25) %
  of total assets (total assets = NAV here: cash + positions at marks; no liabilities modelled).
- short_sale_locate: sell: the ACCOUNT's position − its working sells − this sell; below zero the
  short must be ≤ the account's locate for the instrument (lots). Buys: not evaluated.
- max_adv_pct: qty ≤ max_pct of the instrument's ADV (lots), either side.
- restricted_list / watch_list: any order in an instrument of a listed issuer.

NAV is cash (all currencies, converted) + positions at marks; working orders and the order itself
swap cash for securities, so they leave NAV unchanged (the price-vs-mark difference is ignored).
Issuers whose instruments are all in ``exempt_classes`` are skipped by the issuer rules.
Anything a rule needs that is unknown (mark, FX, NAV ≤ 0, shares outstanding, ADV, order price)
fails the rule closed with COMPLIANCE_NO_PRICE at the rule's own severity. Limits are compared
cross-multiplied (100 × value ≤ pct × base), so a value equal to the limit passes.

Post-trade (``recheck``) evaluates the same caps on current positions only (no working orders):
issuer_concentration per issuer (|value|), weight_range per bucket, shares_outstanding per line,
UCITS per issuer and in aggregate, Act40 in aggregate. Lists, locates and ADV are pre-trade only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Literal

import msgspec
import numpy as np
from numba import typeof

from compliance import rule_kernels as rk
from engine.constants import BUY, RejectCode
from engine.model import ConfigError, ReferenceData
from engine.portfolio import Portfolio

Kind = Literal["restricted_list", "watch_list", "issuer_concentration", "weight_range",
               "shares_outstanding", "ucits_5_10_40", "act40_75_5_10", "short_sale_locate",
               "max_adv_pct"]
ScopeName = Literal["firm", "fund", "account"]
SeverityName = Literal["HARD", "SOFT", "WARN"]
Dimension = Literal["sector", "country", "asset_class"]

Refusal = tuple[int, str]

_OC_NCOLS, _OC_CODE, _OC_VALUE, _OC_LIMIT = rk.OC_NCOLS, rk.OC_CODE, rk.OC_VALUE, rk.OC_LIMIT
_H_WORST, _NO_PRICE = rk.H_WORST, rk.R_NO_PRICE
_TEXT_CACHE = 4096  # failure texts kept; the cache is emptied when full


class Severity(IntEnum):
    """Ordered: the worst failing evaluation decides an order's outcome."""

    PASS = rk.S_PASS
    WARN = rk.S_WARN  # alert and pass
    SOFT = rk.S_SOFT  # hold for a compliance officer's approval
    HARD = rk.S_HARD  # deny


KIND_CODES: dict[str, int] = {
    "restricted_list": rk.K_RESTRICTED,
    "watch_list": rk.K_WATCH,
    "issuer_concentration": rk.K_ISSUER_CONC,
    "weight_range": rk.K_WEIGHT,
    "shares_outstanding": rk.K_SHARES,
    "ucits_5_10_40": rk.K_UCITS,
    "act40_75_5_10": rk.K_ACT40,
    "short_sale_locate": rk.K_LOCATE,
    "max_adv_pct": rk.K_ADV,
}
REJECT_CODES: dict[str, RejectCode] = {
    "restricted_list": RejectCode.COMPLIANCE_RESTRICTED,
    "watch_list": RejectCode.COMPLIANCE_WATCH_LIST,
    "issuer_concentration": RejectCode.COMPLIANCE_CONCENTRATION,
    "weight_range": RejectCode.COMPLIANCE_WEIGHT_RANGE,
    "shares_outstanding": RejectCode.COMPLIANCE_SHARES_OUTSTANDING,
    "ucits_5_10_40": RejectCode.COMPLIANCE_UCITS,
    "act40_75_5_10": RejectCode.COMPLIANCE_ACT40,
    "short_sale_locate": RejectCode.COMPLIANCE_NO_LOCATE,
    "max_adv_pct": RejectCode.COMPLIANCE_ADV,
}
_PCT_FIELDS = ("max_pct", "min_pct", "threshold_pct", "aggregate_pct", "issuer_pct",
               "voting_pct", "diversified_pct")
# parameters each kind takes: name -> default (None: required; "opt": optional, no default)
_PARAMS: dict[str, dict[str, object]] = {
    "restricted_list": {},
    "watch_list": {},
    "issuer_concentration": {"max_pct": None, "exempt_classes": []},
    "weight_range": {"by": None, "key": None, "min_pct": "opt", "max_pct": "opt"},
    "shares_outstanding": {"max_pct": None},
    "ucits_5_10_40": {"max_pct": 10.0, "threshold_pct": 5.0, "aggregate_pct": 40.0,
                      "exempt_classes": ["government", "cash"]},
    "act40_75_5_10": {"issuer_pct": 5.0, "voting_pct": 10.0, "diversified_pct": 75.0,
                      "exempt_classes": ["government", "cash", "fund"]},
    "short_sale_locate": {},
    "max_adv_pct": {"max_pct": None},
}
_UNSET = {"max_pct": None, "min_pct": None, "threshold_pct": None, "aggregate_pct": None,
          "issuer_pct": None, "voting_pct": None, "diversified_pct": None, "by": None, "key": "",
          "exempt_classes": None}


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One compliance rule, decoded from a ``[[compliance.rules]]`` table and checked on
    construction (a ConfigError names the rule id and the field)."""

    id: str
    kind: Kind
    scope: ScopeName
    severity: SeverityName
    target: str = ""  # the fund or account id for scope "fund" / "account"
    version: int = 1
    description: str = ""
    max_pct: float | None = None
    min_pct: float | None = None
    by: Dimension | None = None  # weight_range: the dimension of ``key``
    key: str = ""  # weight_range: the sector, country or asset class
    exempt_classes: list[str] | None = None  # issuer rules: asset classes not counted
    threshold_pct: float | None = None  # ucits: issuers above it count towards aggregate_pct
    aggregate_pct: float | None = None  # ucits
    issuer_pct: float | None = None  # act40
    voting_pct: float | None = None  # act40
    diversified_pct: float | None = None  # act40

    def __post_init__(self) -> None:
        _check_rule(self)


def _check_rule(rule: RuleSpec) -> None:
    rid = rule.id if isinstance(rule.id, str) and rule.id else "?"
    where = f"compliance rule {rid!r}"

    def bad(field: str, expected: str, got: object) -> ConfigError:
        return ConfigError(f"{where}.{field}: expected {expected}, got {got!r}")

    if not isinstance(rule.id, str) or not rule.id.strip():
        raise bad("id", "a non-empty string", rule.id)
    if not isinstance(rule.kind, str) or rule.kind not in KIND_CODES:
        raise bad("kind", f"one of {sorted(KIND_CODES)}", rule.kind)
    if not isinstance(rule.scope, str) or rule.scope not in ("firm", "fund", "account"):
        raise bad("scope", "'firm', 'fund' or 'account'", rule.scope)
    if not isinstance(rule.severity, str) or rule.severity not in ("HARD", "SOFT", "WARN"):
        raise bad("severity", "'HARD', 'SOFT' or 'WARN'", rule.severity)
    if type(rule.version) is not int or rule.version < 1:
        raise bad("version", "a positive integer", rule.version)
    if not isinstance(rule.target, str):
        raise bad("target", "a string", rule.target)
    if not isinstance(rule.description, str):
        raise bad("description", "a string", rule.description)
    if rule.scope == "firm" and rule.target:
        raise bad("target", "no target for scope 'firm'", rule.target)
    if rule.scope != "firm" and not rule.target:
        raise bad("target", f"the {rule.scope} id for scope {rule.scope!r}", rule.target)
    if rule.kind == "watch_list" and rule.severity != "WARN":
        raise bad("severity", "'WARN' for a watch_list (alert only)", rule.severity)
    params = _PARAMS[rule.kind]
    for field, unset in _UNSET.items():
        value = getattr(rule, field)
        if value != unset and field not in params:
            raise bad(field, f"no {field} for kind {rule.kind!r}", value)
    for field in _PCT_FIELDS:
        value = getattr(rule, field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad(field, "a finite number of percent", value)
        low = -100.0 if field == "min_pct" else 0.0
        high = 1000.0 if rule.kind == "max_adv_pct" else 100.0
        if not (low < value <= high or (field == "min_pct" and value == low)):
            raise bad(field, f"a percent in ({low:g}, {high:g}]", value)
    for field, default in params.items():
        value = getattr(rule, field)
        if value is None or (field == "key" and value == ""):
            if default is None:
                raise bad(field, f"a value (required by kind {rule.kind!r})", value)
            if default != "opt":
                value = list(default) if isinstance(default, list) else default
                msgspec.structs.force_setattr(rule, field, value)
    if rule.exempt_classes is not None and (
        not isinstance(rule.exempt_classes, list)
        or not all(isinstance(c, str) and c for c in rule.exempt_classes)
    ):
        raise bad("exempt_classes", "a list of asset class names", rule.exempt_classes)
    if rule.kind == "weight_range":
        if rule.by not in ("sector", "country", "asset_class"):
            raise bad("by", "'sector', 'country' or 'asset_class'", rule.by)
        if not isinstance(rule.key, str) or not rule.key:
            raise bad("key", f"a non-empty {rule.by}", rule.key)
        if rule.min_pct is None and rule.max_pct is None:
            raise bad("max_pct", "min_pct and/or max_pct for a weight_range", None)
        if rule.min_pct is not None and rule.max_pct is not None and rule.min_pct > rule.max_pct:
            raise bad("min_pct", f"min_pct <= max_pct ({rule.max_pct})", rule.min_pct)
    if rule.kind == "ucits_5_10_40":
        if not rule.threshold_pct <= rule.max_pct <= rule.aggregate_pct:
            raise bad("max_pct", "threshold_pct <= max_pct <= aggregate_pct",
                      [rule.threshold_pct, rule.max_pct, rule.aggregate_pct])


class LocateSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Lots of ``symbol`` the ``account`` may be short (a borrow located for it)."""

    account: str
    symbol: str
    qty: int


def parse_rule(raw: Mapping) -> RuleSpec:
    """A RuleSpec from a decoded table (dict); ConfigError on anything invalid."""
    try:
        return msgspec.convert(raw, RuleSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"compliance rule {raw.get('id', '?')!r}: {exc}") from exc


# -- RESULTS -------------------------------------------------------------------------------------


class Evaluation(msgspec.Struct, frozen=True, gc=False):
    """One rule evaluated for one order. ``value`` and ``limit`` are percent (lots for locates);
    ``base`` is what the percent is of (NAV in the scope's currency, shares outstanding, ADV or
    the locate), ``exposure`` the projected value / units / position it was computed from."""

    rule_id: str
    version: int
    severity: int
    passed: bool
    code: int
    value: float
    limit: float
    base: float
    exposure: float
    scope: str
    text: str


class Outcome(msgspec.Struct, gc=False):
    """The worst severity among the failing evaluations (PASS if none), its reason code and
    text; ``failures`` lists every failing evaluation (WARN ones included: the caller raises
    their alerts), built on first access from a copy of the kernel's rows, so a denial costs
    no more than its own text. A Struct: built in C, a third of a slotted class's cost."""

    severity: int
    code: int
    text: str
    _rows: list | None = None  # the failing rows, flat (OC_NCOLS floats each)
    _book: object = None  # the ComplianceRules that built it
    _instrument: int = -1
    _failures: tuple | None = None

    @property
    def failures(self) -> tuple[Evaluation, ...]:
        if self._failures is None:
            rows, i = self._rows or [], self._instrument
            evaluation = self._book._evaluation if rows else None
            self._failures = tuple(evaluation(rows[k : k + _OC_NCOLS], i)
                                   for k in range(0, len(rows), _OC_NCOLS))
        return self._failures

    @property
    def denied(self) -> bool:
        return self.severity == Severity.HARD

    @property
    def held(self) -> bool:
        return self.severity == Severity.SOFT

    def __repr__(self) -> str:
        return f"Outcome(severity={self.severity!r}, code={self.code}, text={self.text!r})"


PASSED = Outcome(Severity.PASS, 0, "")


class BreachChange(msgspec.Struct, frozen=True):
    """A post-trade transition: a (rule, scope key) started failing (breached) or recovered."""

    rule_id: str
    version: int
    severity: int
    scope_key: str
    breached: bool
    code: int
    value: float
    limit: float
    text: str


class _State(msgspec.Struct, array_like=True):
    restricted: list[str]
    watch: list[str]
    locates: list[tuple[str, str, int]]
    breaches: list[BreachChange]


# -- THE RULE BOOK -------------------------------------------------------------------------------


class ComplianceRules:
    """Rule tables, cached aggregates and post-trade breach state for one engine shard."""

    def __init__(
        self,
        rules: list[RuleSpec],
        ref: ReferenceData,
        portfolio: Portfolio,
        restricted: Iterable[str] = (),
        watch: Iterable[str] = (),
        locates: Iterable[LocateSpec] | Mapping[tuple[str, str], int] = (),
        max_holdings: int | None = None,
    ):
        self.ref, self.portfolio = ref, portfolio
        self.rules = list(rules)
        self._check_references()
        self._restricted: set[str] = set()
        self._watch: set[str] = set()
        self._locates: dict[tuple[str, str], int] = {}
        self._breaches: dict[int, BreachChange] = {}  # rule × KEYS + key + 1 -> when it began
        self._breach_keys = np.zeros(0, dtype=np.int64)  # the same keys, sorted
        self._index_reference_data()
        self._index_entities()
        cells = int(np.count_nonzero(portfolio.position | portfolio.working_buy | portfolio.working_sell))
        cap = max_holdings or max(1 << 14, 2 * cells)
        self._allocate(min(cap, max(1, len(ref.account_index) * len(ref.by_index))))
        for issuer in restricted:
            self._set_list(self._restricted, rk.F_RESTRICTED, issuer, True)
        for issuer in watch:
            self._set_list(self._watch, rk.F_WATCH, issuer, True)
        items = locates.items() if isinstance(locates, Mapping) else (
            ((x.account, x.symbol), x.qty) for x in locates)
        for (account, symbol), qty in items:
            refusal = self.set_locate(account, symbol, qty)
            if refusal:
                raise ConfigError(f"compliance.locates: {refusal[1]}")
        self._post = np.zeros((max(64, len(self.rules)), rk.OC_NCOLS))  # post-trade failing rows
        self.refresh()
        self._bind_entry_point()

    # -- BUILD -----------------------------------------------------------------------------------

    def _check_references(self) -> None:
        ids: set[str] = set()
        funds = {acc.fund_id for acc in self.ref.accounts.values()}
        values = {dim: {getattr(inst.spec, dim) for inst in self.ref.by_index}
                  for dim in ("sector", "country", "asset_class")}
        for rule in self.rules:
            where = f"compliance rule {rule.id!r}"
            if rule.id in ids:
                raise ConfigError(f"{where}.id: duplicate rule id")
            ids.add(rule.id)
            if rule.scope == "fund" and rule.target not in funds:
                raise ConfigError(f"{where}.target: unknown fund {rule.target!r}, "
                                  f"expected one of {sorted(funds)}")
            if rule.scope == "account" and rule.target not in self.ref.accounts:
                raise ConfigError(f"{where}.target: unknown account {rule.target!r}")
            if rule.kind == "weight_range" and rule.key not in values[rule.by]:
                raise ConfigError(f"{where}.key: no instrument has {rule.by} {rule.key!r}, "
                                  f"expected one of {sorted(values[rule.by])}")

    def _index_reference_data(self) -> None:
        insts = self.ref.by_index
        self.issuers = list(dict.fromkeys(inst.spec.issuer_id for inst in insts))
        self.issuer_index = {u: k for k, u in enumerate(self.issuers)}
        dims = {d: list(dict.fromkeys(getattr(inst.spec, d) for inst in insts))
                for d in ("sector", "country", "asset_class")}
        if len(dims["asset_class"]) > 62:
            raise ConfigError("instruments: at most 62 distinct asset classes are supported")
        self.bucket_names = [f"issuer:{u}" for u in self.issuers]
        self.bucket_of: dict[tuple[str, str], int] = {}
        for d, names in dims.items():
            for name in names:
                self.bucket_of[(d, name)] = len(self.bucket_names)
                self.bucket_names.append(f"{d}:{name}")
        self.class_index = {c: k for k, c in enumerate(dims["asset_class"])}
        self._span = len(self.bucket_names) + len(insts) + 1  # post-trade keys per rule
        self._symbols = [inst.spec.symbol for inst in insts]

    def _index_entities(self) -> None:
        ref = self.ref
        accounts = list(ref.accounts.values())
        keys: list[tuple[str, str]] = []
        for rule in self.rules:
            if (rule.scope, rule.target) not in keys:
                keys.append((rule.scope, rule.target))
        order = {"firm": 0, "fund": 1, "account": 2}
        keys.sort(key=lambda k: (order[k[0]], k[1]))
        self.entities = keys
        self.entity_index = {k: s for s, k in enumerate(keys)}
        self.rules.sort(key=lambda r: self.entity_index[(r.scope, r.target)])
        self._meta = [(r.id, r.version, int(Severity[r.severity]), self._scope_text(r), r)
                      for r in self.rules]
        self._severity = [m[2] for m in self._meta]
        self._heads = [f"{r.id} v{r.version} {r.kind} ({scope})" for r, scope in
                       ((m[4], m[3]) for m in self._meta)]
        # failure texts: a template per rule (its head filled in), and the texts that can repeat
        self._templates = [_template(m[4].kind, head) for m, head in zip(self._meta, self._heads,
                                                                          strict=True)]
        self._listed = [m[4].kind in ("restricted_list", "watch_list") for m in self._meta]
        self._texts: dict[tuple[int, int], str] = {}  # (rule, instrument or -1) -> text
        self.acct_ent = np.full((len(accounts), 3), -1, dtype=np.int64)
        for a, acc in enumerate(accounts):
            for lvl, key in enumerate((("firm", ""), ("fund", acc.fund_id), ("account", acc.id))):
                self.acct_ent[a, lvl] = self.entity_index.get(key, -1)
        cidx = self.portfolio.currency_index
        self.entity_ccy = []
        for scope, target in keys:
            if scope == "account":
                ccy = ref.accounts[target].base_currency
            elif scope == "fund":
                ccy = (ref.accounts[target].base_currency if target in ref.accounts
                       else next(a.base_currency for a in accounts if a.fund_id == target))
            else:
                ccy = accounts[0].base_currency
            self.entity_ccy.append(cidx[ccy])

    def _allocate(self, hcap: int) -> None:
        ref, pf = self.ref, self.portfolio
        R, E = len(self.rules), len(self.entities)
        A, N, U = len(ref.account_index), len(ref.by_index), len(self.issuers)
        B, C = len(self.bucket_names), len(pf.currencies)
        isegs = [(rk.H_RULE_I, R * rk.RI_NCOLS), (rk.H_ENT_PTR, E + 1), (rk.H_ACCT_ENT, A * 3),
                 (rk.H_INST, N * rk.IN_NCOLS), (rk.H_ISS, U * rk.IS_NCOLS), (rk.H_ISS_INST, N),
                 (rk.H_LOCATE, A * N), (rk.H_AGG_MISS, E * B), (rk.H_SEEN, E * B),
                 (rk.H_BLIST, E * B), (rk.H_UP, E * N), (rk.H_UW, E * N), (rk.H_SEEN_I, E * N),
                 (rk.H_ILIST, E * N), (rk.H_ENT_I, E * rk.EI_NCOLS),
                 (rk.H_HOLD, hcap * rk.HO_NCOLS), (rk.H_CELL, A * N), (rk.H_SHCASH, A * C),
                 (rk.H_RULE_EVAL, R), (rk.H_VOTE, E * U)]
        fsegs = [(rk.H_RULE_F, R * rk.RF_NCOLS), (rk.H_UNIT, N), (rk.H_MARK, N), (rk.H_FX, C * C),
                 (rk.H_CASH_SCALE, C), (rk.H_ENT_F, E * rk.EF_NCOLS), (rk.H_AGG, E * B * 3),
                 (rk.H_OUT, (R + 1) * rk.OC_NCOLS)]
        size = rk.H_NCOLS + sum(n for _, n in isegs)
        IB = np.zeros(size, dtype=np.int64)
        FB = np.zeros(sum(n for _, n in fsegs), dtype=np.float64)
        dims = (rk.H_R, rk.H_E, rk.H_A, rk.H_N, rk.H_U, rk.H_B, rk.H_C, rk.H_HCAP)
        IB[list(dims)] = (R, E, A, N, U, B, C, hcap)
        views: dict[int, np.ndarray] = {}
        off = rk.H_NCOLS
        for h, n in isegs:
            IB[h] = off
            views[h] = IB[off : off + n]
            off += n
        off = 0
        for h, n in fsegs:
            IB[h] = off
            views[h] = FB[off : off + n]
            off += n
        self.IB, self.FB = IB, FB
        # check_order reads its answer through memoryviews: an item costs a third of numpy's
        self._ib, self._fb, self._oout = memoryview(IB), memoryview(FB), int(IB[rk.H_OUT])
        v = views
        self._rule_i = v[rk.H_RULE_I].reshape(R, rk.RI_NCOLS)
        self._rule_f = v[rk.H_RULE_F].reshape(R, rk.RF_NCOLS)
        self._iss = v[rk.H_ISS].reshape(U, rk.IS_NCOLS)
        self._locate = v[rk.H_LOCATE].reshape(A, N)
        self._ent_i = v[rk.H_ENT_I].reshape(E, rk.EI_NCOLS)
        self._ent_f = v[rk.H_ENT_F].reshape(E, rk.EF_NCOLS)
        self._agg = v[rk.H_AGG].reshape(E, B, 3)
        self._miss = v[rk.H_AGG_MISS].reshape(E, B)
        self._seen = v[rk.H_SEEN].reshape(E, B)
        self._up = v[rk.H_UP].reshape(E, N)
        self._uw = v[rk.H_UW].reshape(E, N)
        self._seen_i = v[rk.H_SEEN_I].reshape(E, N)
        self._out = v[rk.H_OUT].reshape(R + 1, rk.OC_NCOLS)
        self._evaluated = v[rk.H_RULE_EVAL]
        self._mark = v[rk.H_MARK]
        self._fx = v[rk.H_FX].reshape(C, C)
        # static tables
        v[rk.H_ACCT_ENT][:] = self.acct_ent.ravel()
        ptr = v[rk.H_ENT_PTR]
        for r, rule in enumerate(self.rules):
            ptr[self.entity_index[(rule.scope, rule.target)] + 1] = r + 1
        np.maximum.accumulate(ptr, out=ptr)
        for r, rule in enumerate(self.rules):
            self._fill_rule(r, rule)
        inst = v[rk.H_INST].reshape(N, rk.IN_NCOLS)
        by_issuer = sorted(range(N), key=lambda i: self.issuer_index[ref.by_index[i].spec.issuer_id])
        v[rk.H_ISS_INST][:] = by_issuer
        for k, i in enumerate(by_issuer):
            spec = ref.by_index[i].spec
            u = self.issuer_index[spec.issuer_id]
            if self._iss[u, rk.IS_END] == 0:
                self._iss[u, rk.IS_START] = k
            self._iss[u, rk.IS_END] = k + 1
            self._iss[u, rk.IS_CLS_MASK] |= 1 << self.class_index[spec.asset_class]
            inst[i] = (u, self.bucket_of[("sector", spec.sector)],
                       self.bucket_of[("country", spec.country)],
                       self.bucket_of[("asset_class", spec.asset_class)],
                       self.class_index[spec.asset_class], pf.inst_currency[i], spec.lot_size,
                       spec.shares_outstanding, spec.adv, spec.asset_class == "equity")
        v[rk.H_UNIT][:] = pf.unit_value
        v[rk.H_CASH_SCALE][:] = 10.0 ** -pf.minor.astype(np.float64)
        self._ent_i[:, rk.EI_CCY] = self.entity_ccy
        self._ent_f[:, rk.EF_VOTE_PCT] = np.nan
        for rule in self.rules:
            s = self.entity_index[(rule.scope, rule.target)]
            self._ent_i[s, rk.EI_DIMS] |= _dims(rule)
            if rule.kind == "act40_75_5_10" and np.isnan(self._ent_f[s, rk.EF_VOTE_PCT]):
                self._ent_f[s, rk.EF_VOTE_PCT] = rule.voting_pct
        self._ent_i[:, rk.EI_EPOCH] = 1  # SEEN starts at 0: every bucket reads as empty
        for issuer in self._restricted:
            self._write_flag(rk.F_RESTRICTED, issuer, True)
        for issuer in self._watch:
            self._write_flag(rk.F_WATCH, issuer, True)
        for (account, symbol), qty in self._locates.items():
            self._locate[self.ref.account_index[account], self.ref.instruments[symbol].index] = qty

    def _fill_rule(self, r: int, rule: RuleSpec) -> None:
        row, frow = self._rule_i[r], self._rule_f[r]
        row[rk.RI_KIND] = KIND_CODES[rule.kind]
        row[rk.RI_ENTITY] = self.entity_index[(rule.scope, rule.target)]
        row[rk.RI_SEV] = Severity[rule.severity]
        row[rk.RI_BUCKET] = self.bucket_of[(rule.by, rule.key)] if rule.kind == "weight_range" else -1
        row[rk.RI_EXEMPT] = sum(1 << self.class_index[c] for c in set(rule.exempt_classes or ())
                                if c in self.class_index)
        row[rk.RI_CODE] = REJECT_CODES[rule.kind]
        row[rk.RI_HAS_MIN] = rule.min_pct is not None
        row[rk.RI_HAS_MAX] = rule.max_pct is not None
        frow[rk.RF_MAX] = rule.max_pct if rule.max_pct is not None else np.nan
        frow[rk.RF_MIN] = rule.min_pct if rule.min_pct is not None else np.nan
        if rule.kind == "ucits_5_10_40":
            frow[rk.RF_P1], frow[rk.RF_P2] = rule.threshold_pct, rule.aggregate_pct
        elif rule.kind == "act40_75_5_10":
            frow[rk.RF_P1], frow[rk.RF_P2] = rule.issuer_pct, rule.voting_pct
            frow[rk.RF_P3] = rule.diversified_pct
        frow[rk.RF_DERIVED] = np.nan

    def _bind_entry_point(self) -> None:
        """Bind the compiled entry of check_order for these argument types (skips the
        dispatcher's typing: about half of a per-order call); fall back to the dispatcher."""
        pf = self.portfolio
        args = (self.IB, self.FB, pf.position, pf.working_sell, 0, 0, BUY, 1, 1, 0)
        rk.check_order(*args)
        self._check = rk.check_order
        try:
            want = tuple(typeof(x) for x in args)
            for sig, cres in rk.check_order.overloads.items():
                if tuple(sig) == want:
                    self._check = cres.entry_point
        except Exception:  # noqa: BLE001 - numba without these internals: keep the dispatcher
            pass

    # -- PRE-TRADE -------------------------------------------------------------------------------

    def check_order(self, account: int, instrument: int, side: int, qty: int, price: int) -> Outcome:
        """Every rule for the order's account, fund and firm on the projected portfolio (see the
        module docstring); ``price`` is the limit, or the reference price for a market order
        (0 = none: value rules fail closed). O(rules of the order's scopes); a failure adds its
        worst rule's text (the kernel names the row; see _fail_text) and a copy of the failing
        rows (``failures`` are built from them on first access)."""
        pf = self.portfolio
        n = self._check(self.IB, self.FB, pf.position, pf.working_sell, account, instrument,
                        side, qty, price, 0)
        if n == 0:
            return PASSED
        o = self._oout
        rows = self._fb[o : o + n * _OC_NCOLS].tolist()
        w = self._ib[_H_WORST] * _OC_NCOLS
        r, code = int(rows[w]), int(rows[w + _OC_CODE])
        text = self._fail_text(r, code, rows[w + _OC_VALUE], rows[w + _OC_LIMIT], instrument)
        return Outcome(self._severity[r], code, text, rows, self, instrument)

    def evaluate_order(self, account: int, instrument: int, side: int, qty: int,
                       price: int) -> list[Evaluation]:
        """Every applicable evaluation, passed or not, for the audit trail. O(rules)."""
        pf = self.portfolio
        n = rk.check_order(self.IB, self.FB, pf.position, pf.working_sell, account, instrument,
                           side, qty, price, 1)
        return self._evaluations(n, account, instrument)

    def check_batch(self, orders: np.ndarray) -> np.ndarray:
        """Rows (account, instrument, side, qty, price), each against the portfolio as given;
        returns int64 rows (worst severity, its reason code, its rule index or -1) — the same
        answer as check_order. O(orders × rules of their scopes)."""
        orders = np.ascontiguousarray(orders, dtype=np.int64)
        result = np.zeros((len(orders), 3), dtype=np.int64)
        pf = self.portfolio
        rk.check_batch(self.IB, self.FB, pf.position, pf.working_sell, orders, result)
        return result

    def _evaluations(self, n: int, account: int, instrument: int) -> list[Evaluation]:
        return [self._evaluation(row, instrument) for row in self._out[:n].tolist()]

    def _evaluation(self, row: list[float], instrument: int) -> Evaluation:
        r, passed, code, value, limit, base, exposure, _ = row
        r, code = int(r), int(code)
        rule_id, version, severity, scope, _ = self._meta[r]
        text = "" if passed else self._fail_text(r, code, value, limit, instrument)
        return Evaluation(rule_id, version, severity, passed == 1.0, code, value, limit, base,
                          exposure, scope, text)

    # -- POST-TRADE ------------------------------------------------------------------------------

    def touch(self, account: int, instrument: int) -> None:
        """Sync cell (account, instrument) and the account's cash after stage 7 changed them
        (accept, fill, cancel, replace, expiry). O(1). Pre-trade reads the cached aggregates, so
        every change to working orders or positions must be touched (or refresh() called)."""
        pf = self.portfolio
        status = rk.touch_cell(self.IB, self.FB, pf.position, pf.working_buy, pf.working_sell,
                               pf.cash, account, instrument)
        if status == rk.ST_HOLDINGS_FULL:
            self._grow()

    def refresh(self) -> None:
        """Rebuild every aggregate from the portfolio (positions, working orders, cash, marks,
        FX); breach state is untouched and the next recheck evaluates every scope.
        O(accounts × instruments)."""
        pf = self.portfolio
        while rk.rebuild_holdings(self.IB, pf.position, pf.working_buy, pf.working_sell,
                                  pf.cash) == rk.ST_HOLDINGS_FULL:
            self._grow(resync=False)
        self._fx[:] = pf.fx
        self._mark[:] = pf.marks()
        rk.recompute_stale(self.IB, self.FB)

    def recheck(self, changed_instruments: np.ndarray | None = None) -> list[BreachChange]:
        """Post-trade: re-evaluate the current portfolio (positions, no working orders) and
        return the breach transitions only (a (rule, scope key) that starts failing, or
        recovers). With ``changed_instruments`` (bool per instrument: prices or positions moved;
        mark moves are also found by comparing marks): holdings in moved instruments shift the
        cached aggregates by their mark delta (O(holdings)); a scope is re-summed from scratch
        only when FX moved, a mark appeared or vanished, or after MAX_DELTAS batches; only
        scopes holding a changed instrument or touched since the last recheck are re-evaluated,
        their issuer rules in one pass over their issuers. No transition (the common case)
        costs no Python work per rule or breach. None: full refresh (O(accounts × instruments))
        and every scope."""
        pf = self.portfolio
        if changed_instruments is None:
            self.refresh()
            n = rk.settle(self.IB, self.FB, self._post, self._breach_keys, self._span)
        else:
            changed = np.asarray(changed_instruments, dtype=np.bool_)
            if changed.shape != self._mark.shape:
                raise ValueError(f"changed_instruments: expected {len(self._mark)} flags (one per "
                                 f"instrument), got shape {changed.shape}")
            n = rk.recheck_batch(self.IB, self.FB, pf.marks(), pf.fx, changed, self._post,
                                 self._breach_keys, self._span)
        while n > len(self._post):
            self._post = np.zeros((2 * n, rk.OC_NCOLS))
            n = rk.settle(self.IB, self.FB, self._post, self._breach_keys, self._span)
        if n < 0:
            return []  # the same breaches as before; settle cleared the dirty flags
        changes = self._transitions(self._post[:n])
        rk.clear_dirty(self.IB)
        return changes

    def _transitions(self, rows: np.ndarray) -> list[BreachChange]:
        """Diff the failing (rule, key) rows against the breaches in force of the rules just
        evaluated; objects are built only for transitions. O(breaches)."""
        span = self._span
        keys = rows[:, rk.OC_RULE].astype(np.int64) * span + rows[:, rk.OC_KEY].astype(np.int64) + 1
        now = dict(zip(keys.tolist(), range(len(rows)), strict=True))
        evaluated = self._evaluated.tolist()
        changes: list[BreachChange] = []
        for key in [k for k in self._breaches if evaluated[k // span] and k not in now]:
            was = self._breaches.pop(key)
            rule = self.rules[key // span]
            changes.append(msgspec.structs.replace(
                was, breached=False, text=f"{rule.id} v{rule.version} recovered: {was.scope_key}"))
        for key, n in now.items():
            if key in self._breaches:
                continue
            row = rows[n].tolist()
            rule = self.rules[key // span]
            scope_key = self._key_text(rule, key % span - 1)
            code, value, limit = int(row[rk.OC_CODE]), row[rk.OC_VALUE], row[rk.OC_LIMIT]
            change = BreachChange(rule.id, rule.version, Severity[rule.severity], scope_key, True,
                                  code, value, limit,
                                  self._text(rule, code, value, limit, scope_key, -1))
            self._breaches[key] = change
            changes.append(change)
        self._breach_keys = np.array(sorted(self._breaches), dtype=np.int64)
        return changes

    def breaches(self) -> list[BreachChange]:
        """The breaches in force (as recorded when each began). O(breaches)."""
        return sorted(self._breaches.values(), key=lambda c: (c.rule_id, c.scope_key))

    # -- CONTROLS --------------------------------------------------------------------------------

    def restrict(self, issuer: str, on: bool) -> Refusal | None:
        """Add or remove an issuer on the firm's restricted list; applies to every instrument of
        the issuer (an issuer not traded yet is kept for when it is). O(1)."""
        return self._set_list(self._restricted, rk.F_RESTRICTED, issuer, on)

    def watch(self, issuer: str, on: bool) -> Refusal | None:
        """Add or remove an issuer on the watch list (alert only). O(1)."""
        return self._set_list(self._watch, rk.F_WATCH, issuer, on)

    def set_locate(self, account: str, symbol: str, qty: int) -> Refusal | None:
        """Set the lots of ``symbol`` the account may be short (0 removes it). O(1)."""
        if account not in self.ref.accounts:
            return RejectCode.INVALID_CONTROL, f"locate: unknown account {account!r}"
        if symbol not in self.ref.instruments:
            return RejectCode.INVALID_CONTROL, f"locate: unknown instrument {symbol!r}"
        if type(qty) is not int or qty < 0:
            return RejectCode.INVALID_CONTROL, (
                f"locate {account}/{symbol}: expected a non-negative integer of lots, got {qty!r}")
        if qty:
            self._locates[(account, symbol)] = qty
        else:
            self._locates.pop((account, symbol), None)
        self._locate[self.ref.account_index[account], self.ref.instruments[symbol].index] = qty
        return None

    def _set_list(self, members: set[str], flag: int, issuer: str, on: bool) -> Refusal | None:
        if not isinstance(issuer, str) or not issuer:
            return RejectCode.INVALID_CONTROL, f"expected a non-empty issuer id, got {issuer!r}"
        if on:
            members.add(issuer)
        else:
            members.discard(issuer)
        self._write_flag(flag, issuer, on)
        return None

    def _write_flag(self, flag: int, issuer: str, on: bool) -> None:
        u = self.issuer_index.get(issuer)
        if u is None:
            return
        if on:
            self._iss[u, rk.IS_FLAGS] |= flag
        else:
            self._iss[u, rk.IS_FLAGS] &= ~flag

    # -- STATE -----------------------------------------------------------------------------------

    def dump(self) -> bytes:
        """Lists, locates and breach state (aggregates are derived from the portfolio)."""
        state = _State(
            restricted=sorted(self._restricted),
            watch=sorted(self._watch),
            locates=sorted((a, s, q) for (a, s), q in self._locates.items()),
            breaches=self.breaches(),
        )
        return msgspec.msgpack.encode(state)

    def load(self, data: bytes) -> None:
        """Restore a dump, then rebuild the aggregates from the (already restored) portfolio."""
        state = msgspec.msgpack.decode(data, type=_State)
        for issuer in list(self._restricted):
            self.restrict(issuer, False)
        for issuer in list(self._watch):
            self.watch(issuer, False)
        for account, symbol in list(self._locates):
            self.set_locate(account, symbol, 0)
        for issuer in state.restricted:
            self.restrict(issuer, True)
        for issuer in state.watch:
            self.watch(issuer, True)
        for account, symbol, qty in state.locates:
            self.set_locate(account, symbol, qty)
        self._breaches = {self._breach_key(c): c for c in state.breaches}
        self._breach_keys = np.array(sorted(self._breaches), dtype=np.int64)
        self.refresh()

    def _breach_key(self, change: BreachChange) -> int:
        """The internal key of a restored breach, from its rule id and scope key text."""
        r = next(k for k, rule in enumerate(self.rules) if rule.id == change.rule_id)
        _, _, name = change.scope_key.partition("/")
        if not name:
            key = -1
        elif name.startswith("instrument:"):
            key = len(self.bucket_names) + self.ref.instruments[name[len("instrument:"):]].index
        else:
            key = self.bucket_names.index(name)
        return r * self._span + key + 1

    def state_hash(self) -> bytes:
        return hashlib.blake2b(self.dump(), digest_size=16).digest()

    def validate(self) -> None:
        """Compare the incrementally kept aggregates with a rebuild from the portfolio; raises
        AssertionError on a difference. O(accounts × instruments)."""
        fresh = ComplianceRules(self.rules, self.ref, self.portfolio)
        fresh._mark[:] = self._mark
        fresh._fx[:] = self._fx
        fresh._ent_i[:, rk.EI_STALE] = 1
        rk.recompute_stale(fresh.IB, fresh.FB)
        mine, theirs = self.aggregates(), fresh.aggregates()
        for key in set(mine) | set(theirs):
            a, b = mine.get(key, 0.0), theirs.get(key, 0.0)
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6):
                raise AssertionError(f"compliance aggregate {key}: kept {a}, rebuilt {b}")

    def aggregates(self) -> dict[tuple, float]:
        """Nonzero cached aggregates by (scope, name, field), for queries and validate()."""
        result: dict[tuple, float] = {}
        for s, (scope, target) in enumerate(self.entities):
            name = f"{scope}:{target}" if target else scope
            ep = self._ent_i[s, rk.EI_EPOCH]
            result[(name, "NAV")] = float(self._ent_f[s, rk.EF_NAV])
            result[(name, "NAV unknown")] = float(self._ent_i[s, rk.EI_NAV_MISS])
            for b in np.flatnonzero(self._seen[s] == ep).tolist():
                for k, field in enumerate(("position", "working buy", "working sell")):
                    if self._agg[s, b, k]:
                        result[(name, self.bucket_names[b], field)] = float(self._agg[s, b, k])
                if self._miss[s, b]:
                    result[(name, self.bucket_names[b], "unknown")] = float(self._miss[s, b])
            for i in np.flatnonzero(self._seen_i[s] == ep).tolist():
                sym = self.ref.by_index[i].symbol
                for field, arr in (("lots", self._up), ("working lots", self._uw)):
                    if arr[s, i]:
                        result[(name, sym, field)] = float(arr[s, i])
        return {k: v for k, v in result.items() if v}

    def _grow(self, resync: bool = True) -> None:
        self._allocate(2 * int(self.IB[rk.H_HCAP]))
        self._bind_entry_point()
        if resync:
            self.refresh()

    # -- TEXT ------------------------------------------------------------------------------------

    @staticmethod
    def _scope_text(rule: RuleSpec) -> str:
        return f"{rule.scope}:{rule.target}" if rule.target else rule.scope

    def _key_text(self, rule: RuleSpec, key: int) -> str:
        scope = self._scope_text(rule)
        if key < 0:
            return scope
        if key < len(self.bucket_names):
            return f"{scope}/{self.bucket_names[key]}"
        return f"{scope}/instrument:{self.ref.by_index[key - len(self.bucket_names)].symbol}"

    def _fail_text(self, r: int, code: int, value: float, limit: float, instrument: int) -> str:
        """The text of rule r failing pre-trade: one %-format of the rule's template; the texts
        that can repeat (a listed issuer's line, a missing price) are cached. O(1)."""
        if code == _NO_PRICE:
            key = (r, -1)
        elif self._listed[r]:
            key = (r, instrument)
        elif self._templates[r][1]:  # short_sale_locate: names the line
            return self._templates[r][0] % (value, self._symbols[instrument], limit)
        else:
            return self._templates[r][0] % (value, "below" if value < limit else "above", limit)
        text = self._texts.get(key)
        if text is None:
            rule, scope = self._meta[r][4], self._meta[r][3]
            text = self._text(rule, code, value, limit, scope, instrument)
            if len(self._texts) >= _TEXT_CACHE:
                self._texts.clear()
            self._texts[key] = text
        return text

    def _text(self, rule: RuleSpec, code: int, value: float, limit: float, scope: str,
              instrument: int) -> str:
        head = f"{rule.id} v{rule.version} {rule.kind} ({scope})"
        if code == _NO_PRICE:
            return f"{head}: a value the rule needs is unknown (mark, FX, NAV, shares outstanding or ADV)"
        kind = rule.kind
        if kind in ("restricted_list", "watch_list", "short_sale_locate"):
            spec = self.ref.by_index[instrument].spec
            if kind == "short_sale_locate":
                return (f"{head}: projected short of {_fmt(value)} lots of {spec.symbol} exceeds "
                        f"the locate of {_fmt(limit)}")
            listed = "restricted" if kind == "restricted_list" else "on the watch list"
            return f"{head}: issuer {spec.issuer_id} of {spec.symbol} is {listed}"
        cmp = "below" if value < limit else "above"
        return f"{head}: {_fmt(value)} % {_WHAT.get(kind, 'of NAV')} is {cmp} the limit of {_fmt(limit)} %"


def _template(kind: str, head: str) -> tuple[str, bool]:
    """The %-template of a rule's numeric failure text (the same text as ``_text``), and whether
    it names the line (short_sale_locate)."""
    head = head.replace("%", "%%")
    if kind == "short_sale_locate":
        return head + ": projected short of %.6g lots of %s exceeds the locate of %.6g", True
    return head + f": %.6g %% {_WHAT.get(kind, 'of NAV')} is %s the limit of %.6g %%", False


_WHAT = {"max_adv_pct": "of ADV", "shares_outstanding": "of shares outstanding"}


def _dims(rule: RuleSpec) -> int:
    """The aggregates a rule reads (rule_kernels.D_* bits)."""
    if rule.kind == "weight_range":
        return rk.D_NAV | {"sector": rk.D_SECTOR, "country": rk.D_COUNTRY,
                           "asset_class": rk.D_CLASS}[rule.by]
    return {"issuer_concentration": rk.D_ISSUER | rk.D_NAV, "ucits_5_10_40": rk.D_ISSUER | rk.D_NAV,
            "act40_75_5_10": rk.D_ISSUER | rk.D_UNITS | rk.D_NAV | rk.D_VOTES,
            "shares_outstanding": rk.D_UNITS}.get(rule.kind, 0)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _check_mirrors() -> None:
    for name, code in REJECT_CODES.items():
        if code != {"restricted_list": rk.R_RESTRICTED, "watch_list": rk.R_WATCH_LIST,
                    "issuer_concentration": rk.R_CONCENTRATION, "weight_range": rk.R_WEIGHT_RANGE,
                    "shares_outstanding": rk.R_SHARES_OUTSTANDING, "ucits_5_10_40": rk.R_UCITS,
                    "act40_75_5_10": rk.R_ACT40, "short_sale_locate": rk.R_NO_LOCATE,
                    "max_adv_pct": rk.R_ADV}[name]:
            raise AssertionError(f"rule_kernels code of {name} drifted from RejectCode")
    if rk.R_NO_PRICE != RejectCode.COMPLIANCE_NO_PRICE:
        raise AssertionError("rule_kernels.R_NO_PRICE drifted from RejectCode")


_check_mirrors()

__all__ = ["BreachChange", "ComplianceRules", "Evaluation", "LocateSpec", "Outcome", "RuleSpec",
           "Severity", "parse_rule"]
