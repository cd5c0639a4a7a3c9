"""Parsing cost figures as people write them: ``4G``, ``4e9``, ``400M``, ``4.0GFLOPs``, ``25M``, ``20ms``."""

from __future__ import annotations

import math
import re

__all__ = ["check_int", "format_count", "is_int", "parse_count", "parse_latency_ms"]

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*(flops?|macs?|params?|p)?\s*$", re.I)
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|s|us)?\s*$", re.I)


def parse_count(value: str | float | int, what: str = "value") -> float:
    """``"4G"`` -> 4e9; also ``4e9``, ``400M``, ``4.0GFLOPs``, ``4GMACs``, ``25M`` (params), plain numbers.

    Raises `ValueError` naming ``what`` and the value when it is not a positive finite figure.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is not a count; allowed: a positive number like 4G, 400M, 4e9")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise ValueError(
                f"{what}={value!r} is not a count; allowed: a positive number with an optional K/M/G/T suffix "
                "(4G, 400M, 4e9, 4.0GFLOPs, 25M)"
            )
        number = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what}={value!r} is not allowed; allowed: a positive finite number")
    return number


def parse_latency_ms(value: str | float | int, what: str = "latency") -> float:
    """``"20ms"`` -> 20.0; ``"0.02s"`` -> 20.0; ``"500us"`` -> 0.5; a plain number is milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is not a latency; allowed: a positive time like 20ms or 0.02s")
    if isinstance(value, (int, float)):
        ms = float(value)
    else:
        match = _LATENCY.match(str(value))
        if not match:
            raise ValueError(f"{what}={value!r} is not a latency; allowed: a positive time like 20ms, 0.02s, 500us")
        unit = (match.group(2) or "ms").lower()
        ms = float(match.group(1)) * {"ms": 1.0, "s": 1e3, "us": 1e-3}[unit]
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError(f"{what}={value!r} is not allowed; allowed: a positive finite time")
    return ms


def format_count(value: float, digits: int = 2) -> str:
    """4.086e9 -> ``"4.09G"``; 26.26e6 -> ``"26.26M"``."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{suffix}"
    return f"{value:.0f}"


def counted(count: int, noun: str) -> str:
    """``1, "epoch"`` -> ``"1 epoch"``; ``5, "epoch"`` -> ``"5 epochs"`` (regular plurals only)."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def is_int(value: object) -> bool:
    """An integer and not a bool (``True`` is an ``int`` to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: object, low: int = 1, high: int | None = None, none_ok: bool = False) -> None:
    """Refuse ``value`` unless it is an integer in ``[low, high]`` (or None when ``none_ok``), with the one-line
    message every input check here gives: the name, the value, and what is allowed."""
    if value is None and none_ok:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}" + (" or None" if none_ok else ""))
