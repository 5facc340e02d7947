"""Random-crop streams over shard datasets, for unpaired training (LR and HR streams are independent).

``CropStream`` is an infinite ``torch.utils.data.IterableDataset`` of float32 NCHW batches in [-1, 1].
Batch ``b`` is a pure function of ``(seed, rank, b)`` (and the worker partition, see below): its random
numbers come from ``numpy.random.default_rng([seed, rank, b, domain])``, so a stream can be resumed exactly
by passing ``start_batch=b`` (or ``load_state_dict``).

Partitioning: the training shards of the domain are split across DDP ranks (``shards[rank::world_size]``)
and then across dataloader workers (``[w::num_workers]``), so no two (rank, worker) read the same shard.
When there are fewer shards than ``world_size * num_workers``, tiles are split the same way instead.
With ``num_workers = n``, batch ``b`` is made by partition ``b % n`` and DataLoader's round-robin over
workers returns batches in order ``start_batch, start_batch + 1, ...``; the stream is thus deterministic
given ``(seed, rank, world_size, num_workers)``.

Tiles are decoded once per process (cached), so cropping is a memory copy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ots.errors import DataError

_TILE_CACHE: dict[tuple[str, str], list[np.ndarray]] = {}
_DOMAIN_CODE = {"lr": 1, "hr": 2}


def _cached_tiles(ds, name: str) -> list[np.ndarray]:
    key = (ds.uri, name)
    if key not in _TILE_CACHE:
        _TILE_CACHE[key] = ds.tiles(name)
    return _TILE_CACHE[key]


def clear_cache() -> None:
    _TILE_CACHE.clear()


def crops_to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    t = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    return t.mul_(1.0 / 127.5).sub_(1.0)


def random_crops(tiles: list[np.ndarray], crop: int, n: int, rng: np.random.Generator, augment: bool = True,
                 heights: np.ndarray | None = None, widths: np.ndarray | None = None) -> np.ndarray:
    """``n`` random ``crop``-px crops (uint8 NHWC) with random flips and 90-degree rotations."""
    if heights is None:
        heights = np.array([t.shape[0] for t in tiles])
        widths = np.array([t.shape[1] for t in tiles])
    idx = rng.integers(0, len(tiles), size=n)
    ys = (rng.random(n) * (heights[idx] - crop + 1)).astype(np.int64)
    xs = (rng.random(n) * (widths[idx] - crop + 1)).astype(np.int64)
    ops = rng.integers(0, 8, size=n) if augment else np.zeros(n, dtype=np.int64)
    out = np.empty((n, crop, crop, tiles[0].shape[2]), dtype=np.uint8)
    for i in range(n):
        p = tiles[idx[i]][ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]
        op = int(ops[i])
        if op >= 4:
            p = p[:, ::-1]
        out[i] = np.rot90(p, op & 3) if op & 3 else p
    return out


class CropStream(IterableDataset):
    """Infinite stream of random ``crop``-px crops of one domain (``"lr"`` or ``"hr"``) of a shard dataset."""

    def __init__(
        self,
        dataset_uri: str,
        domain: str = "lr",
        crop: int = 32,
        batch_size: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        num_batches: int | None = None,
        augment: bool = True,
        storage_options: dict | None = None,
    ):
        super().__init__()
        if domain not in _DOMAIN_CODE:
            raise DataError(f"domain must be 'lr' or 'hr', got {domain!r}")
        if not (0 <= rank < world_size):
            raise DataError(f"rank {rank} is not in [0, {world_size})")
        if crop <= 0 or batch_size <= 0 or start_batch < 0:
            raise DataError("crop and batch_size must be positive, start_batch non-negative")
        self.dataset_uri = dataset_uri
        self.domain, self.crop, self.batch_size = domain, crop, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_batch, self.num_batches, self.augment = start_batch, num_batches, augment
        self.storage_options = storage_options
        self.next_batch = start_batch
        self._ds = None
        self._pools: dict[tuple[int, int], tuple] = {}

    # -- data ---------------------------------------------------------------------------------------
    def _dataset(self):
        if self._ds is None:
            from ots.data.shard_reader import open_dataset

            self._ds = open_dataset(self.dataset_uri, verify=False, storage_options=self.storage_options)
            if not self._ds.shards("train", self.domain):
                raise DataError(f"{self.dataset_uri}: no training shards for domain {self.domain!r}")
        return self._ds

    def _pool(self, part: int, n_parts: int) -> tuple:
        key = (part, n_parts)
        if key not in self._pools:
            ds = self._dataset()
            names = sorted(s["name"] for s in ds.shards("train", self.domain))
            units = self.world_size * n_parts
            if len(names) >= units:
                tiles = [t for n in names[self.rank :: self.world_size][part::n_parts] for t in _cached_tiles(ds, n)]
            else:
                all_tiles = [t for n in names for t in _cached_tiles(ds, n)]
                tiles = all_tiles[self.rank :: self.world_size][part::n_parts]
            tiles = [t for t in tiles if t.shape[0] >= self.crop and t.shape[1] >= self.crop]
            if not tiles:
                raise DataError(
                    f"{self.dataset_uri}: no {self.domain} tiles of at least {self.crop}px for rank {self.rank}/"
                    f"{self.world_size}, partition {part}/{n_parts}"
                )
            h = np.array([t.shape[0] for t in tiles])
            w = np.array([t.shape[1] for t in tiles])
            self._pools[key] = (tiles, h, w)
        return self._pools[key]

    def n_tiles(self) -> int:
        return len(self._pool(0, 1)[0])

    # -- batches ------------------------------------------------------------------------------------
    def rng(self, b: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, b, _DOMAIN_CODE[self.domain]])

    def batch(self, b: int, num_workers: int = 1) -> torch.Tensor:
        """Batch number ``b`` (pure function of seed, rank, b and the worker partition)."""
        n = max(1, num_workers)
        tiles, h, w = self._pool(b % n, n)
        return crops_to_tensor(random_crops(tiles, self.crop, self.batch_size, self.rng(b), self.augment, h, w))

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_batch + wid
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        while end is None or b < end:
            x = self.batch(b, nw)
            b += nw
            if info is None:
                self.next_batch = b
            yield x

    def state_dict(self) -> dict:
        """Resume point (tracked in-process; with DataLoader workers track the step and use start_batch)."""
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "domain": self.domain,
                "next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "rank", "world_size", "domain"):
            if k in state and state[k] != getattr(self, k):
                raise DataError(f"cannot resume stream: {k} is {getattr(self, k)!r}, state has {state[k]!r}")
        self.start_batch = self.next_batch = int(state["next_batch"])
