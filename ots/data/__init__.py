"""Data layer: AIM19 / demo sources, Parquet shards in object storage, and a fast random-crop loader.

Public API (heavy modules are imported lazily on first attribute access)::

    from ots.data import open_dataset, CropStream, read_val_pairs, prepare_dataset
"""

from __future__ import annotations

import importlib

_LAZY = {
    "open_dataset": "ots.data.shard_reader",
    "Dataset": "ots.data.shard_reader",
    "ShardConfig": "ots.data.shards",
    "build_shards": "ots.data.shards",
    "read_val_pairs": "ots.data.shard_reader",
    "prepare_dataset": "ots.data.shards",
    "CropStream": "ots.data.loader",
    "scan_aim19": "ots.data.sources",
    "build_demo": "ots.data.demo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ots.data' has no attribute {name!r}")
