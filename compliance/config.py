"""The ``[compliance]`` table of the Kilat TOML file: rules, lists, locates and surveillance."""

from __future__ import annotations

import msgspec

from compliance.rules import LocateSpec, RuleSpec
from compliance.surveillance import SurveillanceConfig


class ComplianceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Rules (checked pre-trade on the projected portfolio and post-trade on live prices), the
    firm's restricted and watch lists (issuer ids), the locates known at start, and the
    surveillance detectors' parameters."""

    rules: list[RuleSpec] = []
    restricted: list[str] = []
    watch: list[str] = []
    locates: list[LocateSpec] = []
    surveillance: SurveillanceConfig = SurveillanceConfig()
