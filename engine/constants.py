"""Enumerations and reason codes shared by every stage of the engine.

Jitted code cannot use Python enums, so each enumeration exists twice: as module-level ``int``
constants (used inside ``@njit`` functions and array columns) and as an ``IntEnum`` with the same
values (used at the edges: messages, queries, logs). The two are checked against each other at
import time, so they cannot drift.
"""

from __future__ import annotations

from enum import IntEnum

# -- SIDES ---------------------------------------------------------------------------------------

BUY = 0
SELL = 1

# -- ORDER TYPES ---------------------------------------------------------------------------------

LIMIT = 0
MARKET = 1
STOP = 2  # becomes a MARKET order when triggered
STOP_LIMIT = 3  # becomes a LIMIT order when triggered

# -- TIME IN FORCE -------------------------------------------------------------------------------

DAY = 0
GTC = 1
IOC = 2
FOK = 3
GTD = 4

# -- SELF-TRADE PREVENTION (the incoming order's mode decides) ------------------------------------

STP_NONE = 0
STP_CANCEL_RESTING = 1
STP_CANCEL_INCOMING = 2
STP_CANCEL_BOTH = 3


class Side(IntEnum):
    BUY = BUY
    SELL = SELL


class OrderType(IntEnum):
    LIMIT = LIMIT
    MARKET = MARKET
    STOP = STOP
    STOP_LIMIT = STOP_LIMIT


class TimeInForce(IntEnum):
    DAY = DAY
    GTC = GTC
    IOC = IOC
    FOK = FOK
    GTD = GTD


class SelfTradePrevention(IntEnum):
    NONE = STP_NONE
    CANCEL_RESTING = STP_CANCEL_RESTING
    CANCEL_INCOMING = STP_CANCEL_INCOMING
    CANCEL_BOTH = STP_CANCEL_BOTH


class RejectCode(IntEnum):
    """Why a command was refused, or why an order left the book.

    One numeric range per stage, so a code alone tells where the decision was made:

    ====== ==========================================================
    range  stage
    ====== ==========================================================
    1xxx   validation (1100-1199: duplicate detection)
    2xxx   pre-trade risk
    3xxx   pre-trade compliance
    4xxx   matching (the book); 41xx cancel reasons, 42xx expiry
    5xxx   venue
    6xxx   gateway (transport, decoding, authentication, throttling)
    9xxx   system
    ====== ==========================================================
    """

    NONE = 0

    # -- 1xxx validation --
    UNKNOWN_INSTRUMENT = 1001
    UNKNOWN_ACCOUNT = 1002
    INVALID_QUANTITY = 1003
    INVALID_PRICE = 1004
    PRICE_OUTSIDE_BAND = 1005
    INVALID_DISPLAY_QUANTITY = 1006
    INVALID_TIME_IN_FORCE = 1007
    INVALID_STOP_PRICE = 1008
    EXPIRE_TIME_IN_PAST = 1009
    MISSING_EXPIRE_TIME = 1010
    INVALID_ORDER_COMBINATION = 1011
    UNKNOWN_ORDER = 1012
    ORDER_NOT_WORKING = 1013
    NOTHING_TO_MODIFY = 1014
    QUANTITY_BELOW_FILLED = 1015
    INVALID_CL_ORD_ID = 1016
    ORDER_ACCOUNT_MISMATCH = 1017
    UNKNOWN_USER = 1018
    NOT_ENTITLED = 1019  # the user may not act on this account, or lacks the role
    ORDER_HELD = 1020  # a held order cannot be modified until it is approved
    FOUR_EYES = 1021  # the approver submitted the order
    INVALID_CONTROL = 1022  # a control command's fields are invalid
    UNKNOWN_EXECUTION = 1023  # a bust or correction names no execution of the day
    INVALID_ALLOCATION = 1024  # a block order's allocation instruction does not add up
    # -- 11xx duplicate detection --
    DUPLICATE_CL_ORD_ID = 1101

    # -- 2xxx risk (risk/) --
    RISK_DENIED = 2000
    RISK_MAX_ORDER_QTY = 2001
    RISK_MAX_ORDER_NOTIONAL = 2002
    RISK_PRICE_COLLAR = 2003
    RISK_NO_REFERENCE_PRICE = 2004
    RISK_POSITION_LIMIT = 2005
    RISK_GROSS_EXPOSURE = 2006
    RISK_NET_EXPOSURE = 2007
    RISK_BUYING_POWER = 2008
    RISK_ORDER_RATE = 2009
    RISK_MODIFY_RATE = 2010
    RISK_KILL_SWITCH = 2011
    RISK_HALTED = 2012
    RISK_REDUCE_ONLY = 2013
    RISK_NO_LIMIT = 2014  # fail-closed: no limit is configured for the account or instrument
    RISK_NO_FX_RATE = 2015

    # -- 3xxx compliance (compliance/) --
    COMPLIANCE_DENIED = 3000
    COMPLIANCE_RESTRICTED = 3001
    COMPLIANCE_CONCENTRATION = 3002
    COMPLIANCE_WEIGHT_RANGE = 3003
    COMPLIANCE_SHARES_OUTSTANDING = 3004
    COMPLIANCE_UCITS = 3005
    COMPLIANCE_ACT40 = 3006
    COMPLIANCE_NO_LOCATE = 3007
    COMPLIANCE_ADV = 3008
    COMPLIANCE_NO_PRICE = 3009  # fail-closed: a value the rule needs is unknown
    COMPLIANCE_HELD = 3010  # a SOFT breach: held for a compliance officer's approval
    COMPLIANCE_REJECTED_BY_OFFICER = 3011
    COMPLIANCE_WATCH_LIST = 3012

    # -- 4xxx matching --
    POST_ONLY_WOULD_CROSS = 4001
    BOOK_FULL = 4002
    PRICE_LEVELS_FULL = 4003
    UNKNOWN_BOOK_ORDER = 4004
    DUPLICATE_BOOK_ORDER = 4005
    UNKNOWN_BOOK_INSTRUMENT = 4006
    # -- 41xx why an order left the book without trading --
    CANCEL_REQUESTED = 4100
    MASS_CANCEL = 4101
    IOC_REMAINDER = 4102
    FOK_NOT_FILLABLE = 4103
    SELF_TRADE_PREVENTED = 4104
    NO_LIQUIDITY = 4105
    MATCH_LIMIT_REACHED = 4106
    # -- 42xx expiry --
    END_OF_DAY = 4200
    GTD_EXPIRED = 4201

    # -- 5xxx venue and routing --
    VENUE_REJECTED = 5000  # the venue refused the child order
    NO_VENUE = 5001  # no venue is up, lists the instrument and can take the rest
    UNKNOWN_VENUE = 5002  # the route names a venue the config does not have
    VENUE_DOWN = 5003  # the venue's session is down
    ROUTE_NOT_SUPPORTED = 5004  # stop, iceberg and post-only orders are not routed
    VENUE_CANCELED = 5005  # the venue ended the child order on its own
    UNKNOWN_CHILD_ORDER = 5006  # a venue report names no child order of Kilat's

    # -- 6xxx gateway --
    MALFORMED_MESSAGE = 6001
    UNKNOWN_MESSAGE_TYPE = 6002
    MESSAGE_TOO_LARGE = 6003
    THROTTLED = 6004
    NOT_AUTHORIZED = 6005

    # -- 9xxx system --
    INTERNAL_ERROR = 9001
    ENGINE_UNAVAILABLE = 9002


# Module-level copies of the codes the jitted book emits (numba reads globals as constants).
R_NONE = 0
R_POST_ONLY_WOULD_CROSS = 4001
R_BOOK_FULL = 4002
R_PRICE_LEVELS_FULL = 4003
R_UNKNOWN_BOOK_ORDER = 4004
R_DUPLICATE_BOOK_ORDER = 4005
R_UNKNOWN_BOOK_INSTRUMENT = 4006
R_CANCEL_REQUESTED = 4100
R_MASS_CANCEL = 4101
R_IOC_REMAINDER = 4102
R_FOK_NOT_FILLABLE = 4103
R_SELF_TRADE_PREVENTED = 4104
R_NO_LIQUIDITY = 4105
R_MATCH_LIMIT_REACHED = 4106
R_END_OF_DAY = 4200
R_GTD_EXPIRED = 4201


def _check_mirrors() -> None:
    pairs = [
        (Side, {"BUY": BUY, "SELL": SELL}),
        (OrderType, {"LIMIT": LIMIT, "MARKET": MARKET, "STOP": STOP, "STOP_LIMIT": STOP_LIMIT}),
        (TimeInForce, {"DAY": DAY, "GTC": GTC, "IOC": IOC, "FOK": FOK, "GTD": GTD}),
    ]
    for enum, values in pairs:
        for name, value in values.items():
            if enum[name] != value:
                raise AssertionError(f"{enum.__name__}.{name} drifted from its constant")
    for name, value in globals().items():
        if name.startswith("R_") and RejectCode[name[2:]] != value:
            raise AssertionError(f"{name} drifted from RejectCode.{name[2:]}")


_check_mirrors()
