"""Pre-trade risk: the check the pipeline calls at stage 3.

Until the risk issue lands, the stage passes every order; ``kilat.service`` already plugs this
function into the pipeline, so the limits arrive without touching the engine.
"""

from __future__ import annotations

from engine.pipeline import Refusal


def pre_trade_risk(cmd, pipeline) -> Refusal | None:
    """Return None to pass, or (RejectCode in 2xxx, text) to deny. Must not mutate state."""
    return None
