"""Pre-trade compliance: the check the pipeline calls at stage 4.

Until the compliance issue lands, the stage passes every order; ``kilat.service`` already plugs
this function into the pipeline.
"""

from __future__ import annotations

from engine.pipeline import Refusal


def pre_trade_compliance(cmd, pipeline) -> Refusal | None:
    """Return None to pass, or (RejectCode in 3xxx, text) to deny. Must not mutate state."""
    return None
