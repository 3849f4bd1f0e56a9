"""Kilat's configuration: one TOML file decoded with msgspec into typed structs.

A bad file stops start-up with a ``ConfigError`` that names the file, the field and what was
expected. With no file given, Kilat runs on ``config/kilat.toml`` (its embedded defaults).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec

from compliance.config import ComplianceConfig
from engine.model import AccountSpec, ConfigError, InstrumentSpec, ReferenceData, UserSpec
from risk.config import RiskConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "kilat.toml"


class BookConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_orders: int = 1_000_000
    max_levels_per_side: int = 1024
    max_fills_per_order: int = 10_000


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoint: str = "tcp://127.0.0.1:7001"
    data_dir: str = "var/kilat"
    fsync: bool = True
    max_batch: int = 512
    max_message_bytes: int = 65_536
    snapshot_every: int = 100_000
    timer_interval_ms: int = 200
    venue_endpoint: str = "tcp://127.0.0.1:7002"  # venue adapters connect here (ROUTER)
    drop_copy_endpoint: str = "tcp://127.0.0.1:7003"  # every event, sequenced (PUB)


class VenueSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An exchange Kilat routes child orders to. ``kilat venue --mic MIC`` runs a simulated one
    from this entry: it connects to Kilat's venue endpoint and publishes its prices on
    ``feed_endpoint``, which Kilat's feed handler subscribes to."""

    mic: str  # ISO 10383 style code; simulated venues use XSIM1, XSIM2, ...
    name: str = ""
    feed_endpoint: str = ""  # where the venue publishes quotes and trades ("" = no feed)
    instruments: list[str] = []  # symbols it lists ([] = every instrument of the config)
    heartbeat_ms: int = 1000  # silent for 3 intervals = down
    mids: dict[str, Decimal] = {}  # the simulator's starting mid per symbol (else its band's middle)
    # The simulator's market and its injected faults (ignored for a real venue's adapter):
    seed: int = 1
    spread_ticks: int = 2  # background quotes' spread around the mid
    depth_levels: int = 5  # price levels of background liquidity per side
    level_qty: int = 500  # lots per background level
    step_ms: int = 50  # how often the background flow moves the mid and trades
    volatility_bps: int = 5  # random-walk step of the mid, basis points
    latency_ms: int = 0  # delay before the venue answers a child order
    reject_rate_bps: int = 0  # share of child orders rejected, basis points


class FeedConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Price feeds Kilat subscribes to besides its venues' (any publisher of the feed protocol)."""

    endpoints: list[str] = []
    stale_after_ms: int = 5000  # a price older than this is flagged stale
    max_ticks_per_turn: int = 100_000  # drained per loop turn; the rest waits (conflated)


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """CurveZMQ on every socket; the ZAP handler maps a client's public key to a config user."""

    curve: bool = True
    keys_dir: str = "var/keys"  # server key pair, and public/secret keys per user and venue


class KilatConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instruments: list[InstrumentSpec]
    accounts: list[AccountSpec]
    users: list[UserSpec] = []
    book: BookConfig = BookConfig()
    server: ServerConfig = ServerConfig()
    fx_rates: dict[str, Decimal] = {}  # "EURUSD" = USD per EUR; crosses are derived, never assumed 1
    risk: RiskConfig = RiskConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    venues: list[VenueSpec] = []
    feeds: FeedConfig = FeedConfig()
    security: SecurityConfig = SecurityConfig()


def load_config(path: str | Path | None = None) -> KilatConfig:
    """Read, decode and check a config file. Raises ConfigError naming file and field."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        config = msgspec.toml.decode(raw, type=KilatConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    try:
        check_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def check_config(config: KilatConfig) -> ReferenceData:
    """Semantic checks beyond types; returns the reference data built from the config."""
    if not config.instruments:
        raise ConfigError("instruments: expected at least one instrument")
    if not config.accounts:
        raise ConfigError("accounts: expected at least one account")
    ref = ReferenceData(config.instruments, config.accounts, config.users)
    book = config.book
    for name in ("max_orders", "max_levels_per_side", "max_fills_per_order"):
        if getattr(book, name) <= 0:
            raise ConfigError(f"book.{name}: expected a positive integer, got {getattr(book, name)}")
    if config.server.max_batch <= 0:
        raise ConfigError(f"server.max_batch: expected a positive integer, got {config.server.max_batch}")
    return ref
