"""Pre-trade risk checks, plugged into the engine pipeline's risk stage by ``kilat``."""
