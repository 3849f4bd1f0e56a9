"""Pre-trade risk: limits, controls and throttles, plugged into the pipeline as a stage by ``kilat``."""
