"""``kilat`` commands for compliance officers, risk controls and prices.

    kilat alerts [--state OPEN] [--severity SOFT] [--rule R] [--account A]
    kilat alert show|ack|escalate|resolve|dismiss|comment ID [--comment TEXT] [--assignee U]
    kilat approve ORDER [--reason TEXT]      kilat reject ORDER --reason TEXT
    kilat restricted add|remove ISSUER [--reason TEXT]   kilat watch add|remove ISSUER
    kilat locate ACCOUNT SYMBOL QTY
    kilat price SYMBOL [--bid P] [--ask P] [--last P]
    kilat risk [--account A]     kilat positions [--account A]
    kilat limit ACCOUNT SYMBOL NAME VALUE
    kilat kill-switch on|off global|account|user [TARGET] [--reason TEXT]
    kilat trading-state ACCOUNT SYMBOL active|reducing|halted
    kilat audit [--account A] [--of-user U] [--kind K]     (reads the journal file)
    kilat recon FILE [--location L] [--format text|csv|json]
    kilat report blotter|positions|pnl|allocations|tca|forecast [--format] [--out] [--chart]

Each command acts as ``--user`` (default: the KILAT_USER environment variable); the engine
checks the user's role.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import msgspec

from kilat.cli import CliError, _client, _config, _instrument, _print_replies, _ticks, as_dict

_ACTIONS = {"ack": "acknowledge", "escalate": "escalate", "resolve": "resolve",
            "dismiss": "dismiss", "comment": "comment"}


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def cmd_alerts(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        alerts = kc.alerts(args.state or "", (args.severity or "").upper(), args.rule or "",
                           args.account or "", 0, args.limit)
    if args.json:
        print(msgspec.json.encode([as_dict(a) for a in alerts]).decode())
        return 0
    print(f"{'id':>5} {'state':12} {'severity':8} {'source':12} {'rule':22} {'account':8} "
          f"{'symbol':6} {'raised':19}  text")
    for a in alerts:
        flag = " (recovered)" if a.recovered else ""
        print(f"{a.alert_id:>5} {a.state:12} {a.severity:8} {a.source:12} {a.rule_id[:22]:22} "
              f"{a.account:8} {a.symbol:6} {_when(a.raised_ts)}  {a.text}{flag}")
    print(f"{len(alerts)} alert(s)")
    return 0


def cmd_alert(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        if args.action == "show":
            found = kc.alerts(alert_id=args.alert_id)
            if not found:
                raise CliError(f"no alert {args.alert_id}")
            alert = found[0]
            if args.json:
                print(msgspec.json.encode(as_dict(alert)).decode())
                return 0
            print(f"alert {alert.alert_id}: {alert.state}{' (recovered)' if alert.recovered else ''}"
                  f"  severity {alert.severity}  source {alert.source}")
            print(f"  rule {alert.rule_id} v{alert.rule_version}  account {alert.account or '-'}  "
                  f"symbol {alert.symbol or '-'}  assignee {alert.assignee or '-'}")
            print(f"  {alert.text}")
            print(f"  evidence: orders {alert.order_ids or '-'}  executions {alert.exec_ids or '-'}")
            for h in alert.history:
                print(f"  {_when(h.ts)}  {h.user:10} {h.action:12} -> {h.state:12} {h.comment}")
            return 0
        replies = kc.alert_action(_ACTIONS[args.action], args.alert_id, args.comment or "",
                                  args.assignee or "")
    return _print_replies(replies, config, args.json)


def cmd_approve(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_replies(kc.approve(args.order_id, args.reason or ""), config, args.json)


def cmd_reject(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_replies(kc.reject(args.order_id, args.reason), config, args.json)


def cmd_issuer_list(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        replies = kc.issuer_list(args.list_name, args.issuer, args.change == "add", args.reason or "")
    return _print_replies(replies, config, args.json)


def cmd_locate(args) -> int:
    config = _config(args)
    _instrument(config, args.symbol)
    with _client(args, config) as kc:
        return _print_replies(kc.set_locate(args.account, args.symbol, args.qty), config, args.json)


def cmd_price(args) -> int:
    config = _config(args)
    spec = _instrument(config, args.symbol)
    bid, ask, last = (_ticks(spec, v, f"--{n}") if v else 0
                      for n, v in (("bid", args.bid), ("ask", args.ask), ("last", args.last)))
    if not (bid or ask or last):
        raise CliError("give --bid, --ask or --last")
    with _client(args, config) as kc:
        return _print_replies(kc.price(args.symbol, bid, ask, last), config, args.json)


def _print_table(view, as_json: bool, config) -> int:
    if type(view).__name__ == "CommandError":
        return _print_replies([view], config, as_json)
    if as_json:
        print(msgspec.json.encode([dict(zip(view.columns, row, strict=True)) for row in view.rows]).decode())
        return 0
    widths = [max([len(c)] + [len(str(r[k])) for r in view.rows]) for k, c in enumerate(view.columns)]
    print("  ".join(c.ljust(w) for c, w in zip(view.columns, widths, strict=True)))
    for row in view.rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"{len(view.rows)} row(s) — {view.title}")
    return 0


def cmd_risk(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_table(kc.risk(args.account or ""), args.json, config)


def cmd_positions(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_table(kc.positions(args.account or ""), args.json, config)


def cmd_limit(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        return _print_replies(kc.set_limit(args.account, args.symbol, args.name, args.value), config, args.json)


def cmd_kill_switch(args) -> int:
    config = _config(args)
    if args.scope != "global" and not args.target:
        raise CliError(f"a {args.scope} kill switch needs the {args.scope} it applies to")
    with _client(args, config) as kc:
        replies = kc.kill_switch(args.scope, args.target or "", args.state == "on", args.reason or "")
    return _print_replies(replies, config, args.json)


def cmd_trading_state(args) -> int:
    config = _config(args)
    with _client(args, config) as kc:
        replies = kc.trading_state(args.account, args.symbol, args.state.upper())
    return _print_replies(replies, config, args.json)


def add_commands(add) -> None:
    """Register the commands with the main parser's ``add(name, func, help)``."""
    sp = add("alerts", cmd_alerts, "list alerts, newest first")
    sp.add_argument("--state", choices=["OPEN", "ACKNOWLEDGED", "ESCALATED", "RESOLVED", "DISMISSED"])
    sp.add_argument("--severity")
    sp.add_argument("--rule")
    sp.add_argument("--account")
    sp.add_argument("--limit", type=int, default=1000)
    sp = add("alert", cmd_alert, "show one alert, or act on it")
    sp.add_argument("action", choices=["show", *_ACTIONS])
    sp.add_argument("alert_id", type=int)
    sp.add_argument("--comment")
    sp.add_argument("--assignee")
    sp = add("approve", cmd_approve, "release an order held for approval (four eyes)")
    sp.add_argument("order_id", type=int)
    sp.add_argument("--reason")
    sp = add("reject", cmd_reject, "refuse an order held for approval")
    sp.add_argument("order_id", type=int)
    sp.add_argument("--reason", required=True)
    for name in ("restricted", "watch"):
        sp = add(name, cmd_issuer_list, f"add an issuer to, or remove it from, the {name} list")
        sp.set_defaults(list_name=name)
        sp.add_argument("change", choices=["add", "remove"])
        sp.add_argument("issuer")
        sp.add_argument("--reason")
    sp = add("locate", cmd_locate, "record the borrow located for short sales")
    sp.add_argument("account")
    sp.add_argument("symbol")
    sp.add_argument("qty", type=int, help="lots")
    sp = add("price", cmd_price, "inject a price tick (until the live feed lands)")
    sp.add_argument("symbol")
    sp.add_argument("--bid")
    sp.add_argument("--ask")
    sp.add_argument("--last")
    sp = add("risk", cmd_risk, "risk limits, controls and utilisation")
    sp.add_argument("--account")
    sp = add("positions", cmd_positions, "positions and working lots")
    sp.add_argument("--account")
    sp = add("limit", cmd_limit, "change a risk limit at run time")
    sp.add_argument("account", help='account id or "*"')
    sp.add_argument("symbol", help='symbol or "*"')
    sp.add_argument("name")
    sp.add_argument("value")
    sp = add("kill-switch", cmd_kill_switch, "stop (on) or resume (off) new orders; on cancels working ones")
    sp.add_argument("state", choices=["on", "off"])
    sp.add_argument("scope", choices=["global", "account", "user"])
    sp.add_argument("target", nargs="?")
    sp.add_argument("--reason")
    sp = add("trading-state", cmd_trading_state, "ACTIVE, REDUCING or HALTED per account and instrument")
    sp.add_argument("account", help='account id or "*"')
    sp.add_argument("symbol", help='symbol or "*"')
    sp.add_argument("state", choices=["active", "reducing", "halted"])
    add_audit(add)
    add_recon(add)
    from kilat.report import add_report

    add_report(add)


# -- AUDIT: read from the journal file, the record of every decision ------------------------------

#: What the audit trail shows: refusals, holds and warnings, and every officer or admin action.
AUDIT_KINDS = ("DeniedOrder", "ScreenedOrder", "ApproveOrder", "RejectHeldOrder", "AcknowledgeAlert",
               "EscalateAlert", "ResolveAlert", "DismissAlert", "CommentAlert", "UpdateIssuerList",
               "SetLocate", "SetRiskLimit", "SetKillSwitch", "SetTradingState", "EndOfDay")


def audit_entries(journal_path, account: str = "", user: str = "", kinds=AUDIT_KINDS):
    """(seq, record) for the audit kinds in the journal, oldest first. O(journal)."""
    from engine.journal import read_journal
    from engine.messages import JOURNAL_DECODER

    decode = JOURNAL_DECODER.decode
    for seq, payload in read_journal(journal_path):
        record = decode(payload)
        name = type(record).__name__
        if name not in kinds:
            continue
        inner = getattr(record, "request", None) or getattr(record, "order", None) or record
        if account and getattr(inner, "account", account) != account:
            continue
        if user and getattr(inner, "user", "") != user:
            continue
        yield seq, record


def _audit_line(seq: int, record) -> dict:
    name = type(record).__name__
    inner = getattr(record, "request", None) or getattr(record, "order", None) or record
    entry = {"seq": seq, "ts": _when(getattr(inner, "ts", 0)), "kind": name,
             "user": getattr(inner, "user", "")}
    if name == "DeniedOrder":
        entry |= {"account": inner.account, "cl_ord_id": inner.cl_ord_id, "request": type(inner).__name__,
                  "code": record.code, "reason": record.reason}
    elif name == "ScreenedOrder":
        entry |= {"account": inner.account, "cl_ord_id": inner.cl_ord_id, "symbol": inner.symbol,
                  "outcome": "held" if record.hold_code else "warned",
                  "findings": [as_dict(f) for f in record.findings]}
    else:
        entry |= {k: v for k, v in as_dict(record).items() if k not in ("ts", "user")}
    return entry


def cmd_audit(args) -> int:
    from pathlib import Path

    from engine.journal import JournalError

    config = _config(args)
    path = Path(args.data_dir or config.server.data_dir) / "journal.kjl"
    if not path.exists():
        raise CliError(f"no journal at {path}")
    kinds = tuple(k for k in AUDIT_KINDS if not args.kind or k in args.kind)
    try:
        entries = [_audit_line(seq, r) for seq, r in audit_entries(path, args.account or "",
                                                                    args.of_user or "", kinds)]
    except JournalError as exc:
        print(f"kilat: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(entries).decode())
        return 0
    for e in entries:
        rest = {k: v for k, v in e.items() if k not in ("seq", "ts", "kind", "user")}
        print(f"{e['seq']:>8} {e['ts']} {e['kind']:17} {e['user'] or '-':8} "
              + " ".join(f"{k}={v}" for k, v in rest.items()))
    print(f"{len(entries)} record(s)")
    return 0


def add_audit(add) -> None:
    sp = add("audit", cmd_audit, "the audit trail from the journal: refusals, holds, warnings, "
                                 "officer and admin actions")
    sp.add_argument("--data-dir", help="where the journal is (default: from the config)")
    sp.add_argument("--account")
    sp.add_argument("--of-user", help="only what this user sent")
    sp.add_argument("--kind", action="append", choices=AUDIT_KINDS)


# -- RECONCILIATION -------------------------------------------------------------------------------


def cmd_recon(args) -> int:
    """Compare Kilat's positions with a custodian's or broker's file; reads only."""
    from kilat.recon import positions_from_table, run_recon

    config = _config(args)
    custodians = {a.id: a.custodian or "CUSTODY" for a in config.accounts}
    with _client(args, config) as kc:
        view = kc.positions("")
    if type(view).__name__ == "CommandError":
        return _print_replies([view], config, args.json)
    ours = positions_from_table(view, custodians=custodians)
    code, text = run_recon(args.file, ours, {a.id for a in config.accounts},
                           {i.symbol for i in config.instruments},
                           "json" if args.json else args.format,
                           scope=set(args.location) if args.location else None)
    print(text, file=sys.stderr if code == 2 else sys.stdout)
    return code


def add_recon(add) -> None:
    sp = add("recon", cmd_recon, "reconcile positions with a custodian or broker file "
                                 "(CSV: account,instrument,location,quantity); exit 1 on breaks")
    sp.add_argument("file")
    sp.add_argument("--location", action="append",
                    help="compare only these locations (repeat); default: all")
    sp.add_argument("--format", choices=["text", "csv", "json"], default="text")
