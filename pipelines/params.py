"""Reading params files: the whole params.yaml (or an overrides file) and one section over its defaults."""

from __future__ import annotations

import os
from pathlib import Path


def load_params(path: str | os.PathLike) -> dict:
    """The whole params.yaml (or an overrides file) as a dict; one-line ConfigError when unreadable or when a
    top-level name is not a section (:func:`ots.params_schema.check_sections`)."""
    import yaml

    from ots.errors import ConfigError
    from ots.locations import not_regular
    from ots.params_schema import check_sections

    kind = not_regular(path)
    if kind:  # reading a FIFO would block for good
        raise ConfigError(f"{path}: {kind}, not a params file")
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read params ({' '.join(str(e).split())[:200]})") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: params must be a mapping, got {type(doc).__name__}")
    check_sections(doc, path)
    return doc


def section(doc: dict, name: str, defaults: dict, path: str | os.PathLike = "params.yaml") -> dict:
    """One section of params.yaml over its defaults; an unknown key or a value of another type than its default
    is a one-line ConfigError (:func:`ots.params_schema.check_keys`)."""
    from ots.params_schema import check_keys

    sec = doc.get(name) or {}
    check_keys(sec, defaults, name, path)
    return {**defaults, **sec}


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` key by key (nested mappings merged, anything else replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
