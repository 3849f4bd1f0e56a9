"""Kilat's engine: messages, instruments and accounts, orders, the books, the pipeline, the journal.

The engine imports nothing from ``risk``, ``compliance``, ``gateways`` or ``kilat``; those plug
into the pipeline's hooks (see ``engine.pipeline``).
"""
