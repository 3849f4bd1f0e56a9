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


class KilatConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instruments: list[InstrumentSpec]
    accounts: list[AccountSpec]
    users: list[UserSpec] = []
    book: BookConfig = BookConfig()
    server: ServerConfig = ServerConfig()
    fx_rates: dict[str, Decimal] = {}  # "EURUSD" = USD per EUR; crosses are derived, never assumed 1
    risk: RiskConfig = RiskConfig()
    compliance: ComplianceConfig = ComplianceConfig()


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
