"""The train stage's params, checked once: the tuned overrides merged, then typed (:class:`ots.config.OTSConfig`).

The ``train:`` defaults live in :class:`ots.config.TrainConfig`; this module only knows where a run's params come
from (params.yaml, the ``baseline:`` section's merge done by :mod:`pipelines.train.gan`, ``train.overrides``).
"""

from __future__ import annotations

from pathlib import Path

from ots.config import OTSConfig


def resolve(params: dict) -> OTSConfig:
    """``params`` (with ``train.overrides``, e.g. the tune stage's best_params.yaml, deep-merged first) as typed,
    checked configs. Paths stay as written; :func:`absolute` makes them the driver's."""
    from pipelines.params import deep_merge, load_params

    params = {k: v for k, v in params.items() if k != "baseline"}  # the GAN's overrides: merged by its stage
    train = params.get("train")
    if isinstance(train, dict) and train.get("overrides"):
        params = deep_merge(params, load_params(train["overrides"]))
    return OTSConfig.from_params(params)


def absolute(config: OTSConfig) -> OTSConfig:
    """Local paths made absolute (Ray workers may run in another directory)."""
    return config.replace(train={"dataset": abs_local(config.train.dataset),
                                 "output_dir": str(Path(config.train.output_dir).resolve())})


def abs_local(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())
