"""Instruments, accounts and users: the static reference data the engine trades on.

The specs are msgspec Structs decoded from configuration; ``ReferenceData`` turns them into the
dense integer indices the books use and converts between decimal prices and integer ticks.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Literal

import msgspec

from engine.constants import SelfTradePrevention

Role = Literal["pm", "trader", "compliance", "admin"]
StpName = Literal["none", "cancel_resting", "cancel_incoming", "cancel_both"]

_STP_BY_NAME = {
    "none": SelfTradePrevention.NONE,
    "cancel_resting": SelfTradePrevention.CANCEL_RESTING,
    "cancel_incoming": SelfTradePrevention.CANCEL_INCOMING,
    "cancel_both": SelfTradePrevention.CANCEL_BOTH,
}


#: The user Kilat's own commands carry (timer, recovery); no client may claim it.
SYSTEM_USER = "kilat"

#: The tick sizes an instrument may have (prices travel as int64 ticks of it).
MIN_TICK, MAX_TICK = Decimal("1e-9"), Decimal("1e6")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what was expected."""


class InstrumentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One tradable instrument. Prices on the wire are ticks of ``tick_size``; quantities are lots
    of ``lot_size`` units. ``price_band`` is the static [low, high] band a limit price must lie in.
    """

    symbol: str
    currency: str
    tick_size: Decimal
    lot_size: int
    price_band: tuple[Decimal, Decimal]
    name: str = ""
    multiplier: Decimal = Decimal(1)  # currency units per price point per unit (futures: 50)
    issuer: str = ""  # "" = the symbol is its own issuer
    sector: str = ""
    country: str = ""
    asset_class: str = "equity"
    shares_outstanding: int = 0  # units the issuer has out; 0 = unknown (rules on it fail closed)
    adv: int = 0  # average daily volume in lots; 0 = unknown (rules on it fail closed)
    mic: str = ""  # the exchange whose calendar sets trade and settlement dates (ISO 10383)
    settlement_days: int = 1  # T+n business days on that calendar

    @property
    def issuer_id(self) -> str:
        return self.issuer or self.symbol


class AccountSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    base_currency: str = "USD"
    stp: StpName = "cancel_resting"
    fund: str = ""  # the fund this account trades for; "" = the account is its own fund
    owner: str = ""  # beneficial owner (surveillance); "" = the account itself
    cash: dict[str, Decimal] = {}  # opening cash per ISO 4217 currency, in major units
    pnl_method: Literal["average", "fifo"] = "average"  # realised P&L; one method per fund
    custodian: str = ""  # where settled positions are held (a location); "" = "CUSTODY"

    @property
    def fund_id(self) -> str:
        return self.fund or self.id

    @property
    def owner_id(self) -> str:
        return self.owner or self.id


class UserSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    roles: list[Role]
    accounts: list[str] = []


class Instrument(msgspec.Struct, frozen=True):
    """An instrument with its dense index and its band in ticks."""

    index: int
    spec: InstrumentSpec
    band_low: int
    band_high: int

    @property
    def symbol(self) -> str:
        return self.spec.symbol


class ReferenceData:
    """Instruments and accounts with dense integer indices for the books. Lookups are O(1)."""

    def __init__(self, instruments: list[InstrumentSpec], accounts: list[AccountSpec],
                 users: list[UserSpec] = ()):
        self.instruments: dict[str, Instrument] = {}
        self.by_index: list[Instrument] = []
        for field, spec in _indexed("instruments", instruments):
            _check_instrument(field, spec)
            if spec.symbol in self.instruments:
                raise ConfigError(f"{field}.symbol: duplicate symbol {spec.symbol!r}")
            low = price_to_ticks(spec, spec.price_band[0], f"{field}.price_band[0]")
            high = price_to_ticks(spec, spec.price_band[1], f"{field}.price_band[1]")
            if not 0 < low < high:
                raise ConfigError(
                    f"{field}.price_band: expected 0 < low < high, got {list(spec.price_band)}"
                )
            inst = Instrument(len(self.by_index), spec, low, high)
            self.instruments[spec.symbol] = inst
            self.by_index.append(inst)
        self.accounts: dict[str, AccountSpec] = {}
        self.account_index: dict[str, int] = {}
        for field, acc in _indexed("accounts", accounts):
            if not acc.id:
                raise ConfigError(f"{field}.id: expected a non-empty account id")
            if acc.id in self.accounts:
                raise ConfigError(f"{field}.id: duplicate account {acc.id!r}")
            self.accounts[acc.id] = acc
            self.account_index[acc.id] = len(self.account_index)
        methods: dict[str, str] = {}
        for field, acc in _indexed("accounts", accounts):
            if methods.setdefault(acc.fund_id, acc.pnl_method) != acc.pnl_method:
                raise ConfigError(f"{field}.pnl_method: every account of fund {acc.fund_id!r} must use "
                                  f"{methods[acc.fund_id]!r}, got {acc.pnl_method!r}")
        #: Users by name. Empty = entitlements are not checked (an engine run alone, in tests).
        self.users: dict[str, UserSpec] = {}
        for field, user in _indexed("users", users):
            if user.name in self.users:
                raise ConfigError(f"{field}.name: duplicate user {user.name!r}")
            if user.name == SYSTEM_USER:
                raise ConfigError(f"{field}.name: {SYSTEM_USER!r} is reserved for Kilat itself")
            if not user.roles:
                raise ConfigError(f"{field}.roles: expected at least one role")
            for account in user.accounts:
                if account not in self.accounts:
                    raise ConfigError(f"{field}.accounts: unknown account {account!r}")
            self.users[user.name] = user

    def stp_mode(self, account: str) -> SelfTradePrevention:
        return _STP_BY_NAME[self.accounts[account].stp]


def _indexed(name: str, items: list) -> list[tuple[str, object]]:
    return [(f"{name}[{i}]", item) for i, item in enumerate(items)]


def _check_instrument(field: str, spec: InstrumentSpec) -> None:
    if not spec.symbol:
        raise ConfigError(f"{field}.symbol: expected a non-empty symbol")
    if len(spec.currency) != 3 or not spec.currency.isalpha() or not spec.currency.isupper():
        raise ConfigError(
            f"{field}.currency: expected a 3-letter ISO 4217 code, got {spec.currency!r}"
        )
    if not spec.tick_size.is_finite() or not MIN_TICK <= spec.tick_size <= MAX_TICK:
        raise ConfigError(
            f"{field}.tick_size: expected a positive decimal from {MIN_TICK} to {MAX_TICK}, "
            f"got {spec.tick_size}"
        )
    if spec.lot_size <= 0:
        raise ConfigError(f"{field}.lot_size: expected a positive integer, got {spec.lot_size}")
    if not spec.multiplier.is_finite() or not Decimal("1e-9") <= spec.multiplier <= Decimal("1e9"):
        raise ConfigError(
            f"{field}.multiplier: expected a positive decimal from 1e-9 to 1e9, got {spec.multiplier}"
        )
    for name in ("shares_outstanding", "adv"):
        if getattr(spec, name) < 0:
            raise ConfigError(f"{field}.{name}: expected 0 (unknown) or a positive integer")
    if not 0 <= spec.settlement_days <= 10:
        raise ConfigError(f"{field}.settlement_days: expected 0 to 10 business days, got {spec.settlement_days}")


def price_to_ticks(spec: InstrumentSpec, price: Decimal | str, where: str = "price") -> int:
    """Convert a decimal price into integer ticks; refuses a price that is not a tick multiple."""
    try:
        value = Decimal(price)
        if not value.is_finite():
            raise InvalidOperation
        ticks, rest = divmod(value, spec.tick_size)
    except InvalidOperation as exc:  # also DivisionImpossible: a price of absurd magnitude
        raise ConfigError(
            f"{where}: expected a finite decimal price in ticks of {spec.tick_size}, got {price!r}"
        ) from exc
    if rest != 0:
        raise ConfigError(
            f"{where}: {value} is not a multiple of tick size {spec.tick_size} for {spec.symbol}"
        )
    return int(ticks)


def ticks_to_price(spec: InstrumentSpec, ticks: int) -> Decimal:
    return spec.tick_size * ticks
