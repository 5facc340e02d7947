"""Dotted keys into nested dicts: ``"solver.cost.mse"`` names ``params["solver"]["cost"]["mse"]``.

One home for reading and setting them (``--set KEY=VALUE`` on the command line, a tune search's sampled keys).
"""

from __future__ import annotations

from typing import Any

from ots.errors import ConfigError

__all__ = ["apply_set_args", "get_dotted", "set_dotted"]


def get_dotted(d: Any, dotted: str) -> tuple[bool, Any]:
    """(found, value) of ``dotted`` in ``d``; (False, None) when a part is missing or its parent is no dict."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` in ``d`` in place; missing parents (or parents that are no dict) become empty dicts."""
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[last] = value


def apply_set_args(params: dict, pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs applied to ``params`` in place (and returned); each VALUE is read as YAML."""
    import yaml

    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        set_dotted(params, key, _scalar(yaml.safe_load(value)))
    return params


def _scalar(v: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string; a number is meant."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v
