"""Grid points of the compound family as text: ``"phi=1 alpha=1.2 stage_ratio=2:2:6:2"``, one study grid entry
naming several values at once, readable in a study's table and parsed back by the trial that trains it."""

from __future__ import annotations

from typing import Any

__all__ = ["COMPOUND_POINT_KEYS", "format_point", "parse_point"]

COMPOUND_POINT_KEYS = ("phi", "alpha", "beta", "gamma", "stage_ratio")


def parse_point(text: str) -> dict[str, Any]:
    """``"phi=1 alpha=1.2 stage_ratio=2:2:6:2"`` -> ``{"phi": 1.0, "alpha": 1.2, "stage_ratio": "2:2:6:2"}``.

    ``config={...}`` (compact JSON, no spaces) names a member outright: the solver's answer where the rule's
    rounding cannot reach a budget; ``phi`` beside it is then the rule member it started from.
    """
    import json

    out: dict[str, Any] = {}
    allowed = f"space-separated key=value with keys {', '.join(COMPOUND_POINT_KEYS)}, config"
    for item in str(text).split():
        key, sep, value = item.partition("=")
        if not sep or key not in (*COMPOUND_POINT_KEYS, "config"):
            raise ValueError(f"point={text!r} is not allowed; allowed: {allowed}")
        try:
            out[key] = value if key == "stage_ratio" else json.loads(value) if key == "config" else float(value)
        except ValueError:
            raise ValueError(f"point={text!r}: {key}={value!r} is not allowed; allowed: "
                             f"{'a JSON object' if key == 'config' else 'a number'}") from None
        if key == "config" and not isinstance(out[key], dict):
            raise ValueError(f"point={text!r}: config={value!r} is not allowed; allowed: a JSON object")
    return out


def format_point(**values: Any) -> str:
    """The inverse of `parse_point` (``None`` values left out): a grid entry readable in a study's table."""
    import json

    def text(value: Any) -> str:
        if isinstance(value, dict):
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        return f"{value:g}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={text(v)}" for k, v in values.items() if v is not None)
