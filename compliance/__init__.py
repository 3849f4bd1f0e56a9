"""Compliance rules and surveillance, plugged into the pipeline's compliance stage by ``kilat``."""
