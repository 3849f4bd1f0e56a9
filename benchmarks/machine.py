"""What every benchmark reports about the machine it ran on (docs/BENCHMARKS.md quotes it)."""

from __future__ import annotations

import os
import platform
import sys


def machine(**extra) -> dict:
    """CPU model, cores, Python and platform, plus ``extra`` (library versions)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform(), **extra}
