"""The ``data:`` section of params.yaml, typed: what ``prepare`` writes (the shard dataset ``output``) and from
what. Its defaults are written here only (``ots data prepare``, the ``prepare`` stage and the train stage's
``dataset`` fallback read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section: what ``prepare`` writes (the shard dataset ``output``) and from what."""

    source: str = "demo"
    photos: str | None = None
    work_dir: str = "data/demo_src"
    output: str = "data/demo"          # the dataset URI training reads unless train.dataset names another
    manifest_copy: str | None = "data/manifest.json"
    seed: int = 0
    max_side: int = 1024               # with source=demo: photos downscaled to at most this many px
    val_crop: int = 256                # with source=demo: centre crop of each validation photo
    split: str = "regions"             # with source=demo: HR/LR domains from disjoint checkerboard cells
    cell: int = 160                    # with source=demo and split=regions: cell size (HR px)
    hr_tile: int = 480
    lr_tile: int = 120
    hr_crop: int = 128
    lr_crop: int = 32
    overlap: float = 0.25
    shard_mb: float = 64
    skip_invalid: bool = False

    @classmethod
    def from_dict(cls, data: Any, path=None) -> DataConfig:
        from ots.params_schema import check_keys, dataclass_defaults, given

        check_keys(data, dataclass_defaults(cls), "data", path)
        return cls(**given(cls, data))
