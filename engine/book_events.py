"""The book's narrow interface: event and command columns, event types, op codes.

Both books (``engine.book.NumbaBook`` and ``engine.refbook.ReferenceBook``) speak exactly this
interface and produce identical event streams for identical inputs.

Events are rows of 8 int64 columns (``EV_*``); commands for the batch path are rows of 14 int64
columns (``C_*``). The constants are plain module-level ints so jitted code can use them.
"""

from __future__ import annotations

from typing import NamedTuple

# -- EVENT COLUMNS -------------------------------------------------------------------------------

EV_TYPE = 0
EV_OID = 1  # the subject (the taker, for a trade)
EV_OTHER = 2  # the maker's oid for a trade, else 0
EV_PRICE = 3
EV_QTY = 4
EV_LEAVES = 5  # the subject's leaves after the event
EV_OTHER_LEAVES = 6  # the maker's leaves after a trade
EV_REASON = 7  # a RejectCode value, 0 if none
EV_NCOLS = 8

# -- EVENT TYPES ---------------------------------------------------------------------------------

TRADE = 1  # one maker-taker fill; price = maker's price
REST = 2  # the order now works in the book (price, leaves)
PENDING_STOP = 3  # a stop was accepted and waits; EV_PRICE = stop price
TRIGGER = 4  # a stop triggered; EV_PRICE = last trade price
CANCEL = 5  # left the book without trading; EV_QTY = canceled leaves
REJECT = 6  # never entered the book
EXPIRE = 7  # R_END_OF_DAY or R_GTD_EXPIRED; EV_QTY = expired leaves
REPLACE = 8  # EV_PRICE new price, EV_LEAVES new leaves, EV_REASON 1 if time priority kept
MODIFY_REJECT = 9
CANCEL_REJECT = 10

EVENT_NAMES = {
    TRADE: "TRADE",
    REST: "REST",
    PENDING_STOP: "PENDING_STOP",
    TRIGGER: "TRIGGER",
    CANCEL: "CANCEL",
    REJECT: "REJECT",
    EXPIRE: "EXPIRE",
    REPLACE: "REPLACE",
    MODIFY_REJECT: "MODIFY_REJECT",
    CANCEL_REJECT: "CANCEL_REJECT",
}

# -- BATCH COMMANDS ------------------------------------------------------------------------------

OP_SUBMIT = 0
OP_CANCEL = 1  # OID
OP_MODIFY = 2  # OID, PRICE = new price, QTY = new leaves
OP_MASS_CANCEL = 3  # INSTR, ACCOUNT, SIDE (-1 = any)
OP_END_OF_DAY = 4
OP_EXPIRE = 5  # EXPIRE_TS = now

C_OP = 0
C_OID = 1
C_INSTR = 2
C_ACCOUNT = 3
C_SIDE = 4
C_OTYPE = 5
C_TIF = 6
C_PRICE = 7
C_QTY = 8
C_DISPLAY = 9
C_STOP_PRICE = 10
C_EXPIRE_TS = 11
C_POST_ONLY = 12
C_STP = 13
C_NCOLS = 14


def worst_case_rows(max_fills_per_order: int) -> int:
    """Event rows one order (with its STP cancels and remainder) can emit at most. O(1)."""
    return 2 * max_fills_per_order + 16


class OrderView(NamedTuple):
    """What ``book.order(oid)`` returns."""

    instr: int
    account: int
    side: int
    price: int
    leaves: int
    visible: int
    display: int
    otype: int
    tif: int
    is_pending_stop: bool
    stop_price: int
    expire_ts: int


def format_events(events) -> list[str]:
    """Readable rows, for test failure messages and debugging. O(n)."""
    out = []
    for row in events:
        t, oid, other, price, qty, leaves, oleaves, reason = (int(x) for x in row)
        out.append(
            f"{EVENT_NAMES.get(t, t)} oid={oid} other={other} px={price} qty={qty} "
            f"leaves={leaves} other_leaves={oleaves} reason={reason}"
        )
    return out
