"""Reading params files: the whole params.yaml (or an overrides file), one section over its defaults, and a
training run's params typed once (:func:`run_config`)."""

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


def run_config(params: dict):
    """A training run's params (``train``, ``train_gan``, a tune trial's base) as typed, checked configs
    (:class:`ots.config.OTSConfig`), with ``train.overrides`` (e.g. the tune stage's best_params.yaml) deep-merged
    first. The one check of those sections; paths stay as written."""
    from ots.config import OTSConfig

    params = {k: v for k, v in params.items() if k != "baseline"}  # the GAN's overrides: merged by its stage
    train = params.get("train")
    if isinstance(train, dict) and train.get("overrides"):
        params = deep_merge(params, load_params(train["overrides"]))
    return OTSConfig.from_params(params)


def read_run_config(path: str | os.PathLike, adjust=None):
    """A params file as a typed run config, in one call: read (:func:`load_params`), ``adjust`` the document (the
    GAN stage merges its ``baseline:`` section), then :func:`run_config`."""
    doc = load_params(path)
    return run_config(adjust(doc) if adjust is not None else doc)
