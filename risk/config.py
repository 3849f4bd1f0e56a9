"""Pre-trade risk configuration: the ``[risk]`` table of the Kilat TOML file.

Amounts are decimals: order notionals in the instrument's currency, exposures in the account's
base currency. ``RiskEngine`` converts them to integer ticks, lots and minor units when it is
built and raises ``engine.model.ConfigError`` naming the field if one does not convert.

A row whose ``account`` or ``symbol`` is ``"*"`` is a default. For each limit the most specific
row that sets it wins: (account, symbol), then (account, "*"), then ("*", symbol), then
("*", "*"). A limit no row sets denies every order it would apply to (fail-closed,
``RISK_NO_LIMIT``).
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class LimitRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Order-level and position limits for an (account, instrument); ``None`` = inherit."""

    account: str = "*"
    symbol: str = "*"
    max_order_qty: int | None = None  # lots per order
    max_order_notional: Decimal | None = None  # price × qty, in the instrument's currency
    price_collar_pct: Decimal | None = None  # how far (percent) a limit price may be off reference
    max_position: int | None = None  # lots, long or short, working orders included


class AccountLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-account exposure (base currency) and rate limits (commands per throttle window)."""

    account: str = "*"
    max_gross_exposure: Decimal | None = None
    max_net_exposure: Decimal | None = None
    max_orders_per_window: int | None = None
    max_modifies_per_window: int | None = None


class UserLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-user (session) rate limits, commands per throttle window."""

    user: str = "*"
    max_orders_per_window: int | None = None
    max_modifies_per_window: int | None = None


class RiskConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    allow_no_reference_price: bool = False  # limit orders may pass the collar with no reference
    throttle_window_ms: int = 1000  # the sliding window of the rate throttles, on command ts
    limits: list[LimitRow] = []
    accounts: list[AccountLimits] = []
    users: list[UserLimits] = []


#: Names ``RiskEngine.set_limit`` accepts, by the table they live in.
CELL_LIMITS = ("max_order_qty", "max_order_notional", "price_collar_pct", "max_position")
ACCOUNT_LIMITS = ("max_gross_exposure", "max_net_exposure", "max_orders_per_window",
                  "max_modifies_per_window")
USER_LIMITS = ("max_orders_per_window", "max_modifies_per_window")

#: Bounds that keep the integer arithmetic inside int64.
MAX_LOTS = 10**12
MAX_RATE = 100_000  # commands per throttle window: each window keeps one int64 per allowed command
MAX_WINDOW_MS = 86_400_000
MAX_AMOUNT_MINOR = 2**62 - 1
