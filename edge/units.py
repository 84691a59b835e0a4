"""Parsing of the human units used in the configuration file.

Durations (``2s``, ``500ms``, ``1m``, ``1h``), sizes (``10MB``, ``64KiB``) and rates
(``100/s``, ``5000/h``). Pure functions; each raises ``ValueError`` with a message
that can be shown to an operator as the reason of a config error.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_RATE_PERIODS_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"2s"``, ``"500ms"``, ``"1m"``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '2s' or '500ms' (got {value!r})")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"duration must be a finite number of seconds (got {value!r})")
        if value < 0:
            raise ValueError(f"duration must not be negative (got {value!r})")
        return float(value)
    m = _NUMBER_UNIT.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or (unit and unit not in _DURATION_UNITS_S):
        raise ValueError(f"expected a duration such as '2s' or '500ms' (got {value!r})")
    return float(m.group(1)) * _DURATION_UNITS_S[unit or "s"]


def parse_size(value: str | int) -> int:
    """Bytes from ``"10MB"`` (decimal), ``"64KiB"``/``"64k"`` (binary); a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '10MB' or '64KiB' (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative (got {value!r})")
        return value
    m = _NUMBER_UNIT.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as '10MB' or '64KiB' (got {value!r})")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([0-9]*)\s*([a-zA-Z]+)\s*$")


def parse_rate(value: str) -> tuple[float, float]:
    """``(count, period_s)`` from ``"100/s"``, ``"5000/h"``, ``"10/5m"``."""
    m = _RATE.match(str(value))
    if not m or m.group(3).lower() not in _RATE_PERIODS_S:
        raise ValueError(f"expected a rate such as '100/s' or '5000/h' (got {value!r})")
    count = float(m.group(1))
    if count <= 0:
        raise ValueError(f"rate must be positive (got {value!r})")
    multiple = int(m.group(2)) if m.group(2) else 1
    if multiple <= 0:
        raise ValueError(f"rate period must be positive (got {value!r})")
    return count, multiple * _RATE_PERIODS_S[m.group(3).lower()]
