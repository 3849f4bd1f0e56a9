"""Kilat's application shell: configuration, the service that wires the parts, and the CLI."""

__version__ = "0.1.0"
