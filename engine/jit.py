"""Numba helpers shared by the engine, risk and compliance kernels."""

from __future__ import annotations


def entry_point(dispatcher):
    """The compiled CPython entry point of a jitted function's single overload: calling it skips
    numba's argument typing and overload lookup (microseconds for many array arguments). Call
    the dispatcher once first (to compile or load it); returns the dispatcher itself if it has
    not exactly one overload or numba's internals differ."""
    try:
        (sig,) = dispatcher.signatures
        return dispatcher.overloads[sig].entry_point
    except (ValueError, KeyError, AttributeError):
        return dispatcher
