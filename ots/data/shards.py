"""Writing Parquet shards of image tiles to any storage location (local folder or ``s3://``), committed by a manifest.

Layout under the dataset URI::

    manifest.json                                   written last; a prefix without it is not a dataset
    shards/{split}-{domain}-{index:05d}-{sha12}.parquet

Each shard holds rows ``id, split, domain, height, width, channels, tile_y, tile_x, source, pixels`` where
``pixels`` is raw uint8 HWC in a zstd-compressed binary column. HR-domain training images are cut into
overlapping tiles (default 480 px) large enough for random 128-px crops, LR-domain ones into 120-px tiles for
32-px crops; validation pairs (``split=val``, ``domain=hr|lr``, same ``id``) are stored whole and lossless.

Shard names are content addressed, written atomically (temporary name + rename locally, a single PUT on
S3) and only become part of the dataset when ``manifest.json`` (with a sha256 per shard) is written. After
the commit, files not listed in the manifest are removed. Rerunning on the same input reproduces
byte-identical shards and manifest and skips the work only when the manifest already matches *and* every shard
still has its recorded sha256 (a damaged shard is rewritten by the rerun). A shard holds at most ``shard_bytes``
raw pixel bytes -- a huge image's tiles span several shards -- unless one row alone is larger (a whole
validation image cannot be split). Reading is :mod:`ots.data.shard_reader`.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ots.data.config import DataConfig
from ots.data.shard_reader import FORMAT, MANIFEST, SCHEMA, SHARD_DIR, read_manifest, sha256
from ots.errors import DataError, StorageError
from ots.storage import Store, open_store


@dataclass(frozen=True)
class ShardConfig:
    hr_tile: int = DataConfig.hr_tile
    lr_tile: int = DataConfig.lr_tile
    hr_crop: int = DataConfig.hr_crop  # minimum HR image side (random crop size used in training)
    lr_crop: int = DataConfig.lr_crop
    overlap: float = DataConfig.overlap  # fraction of the tile shared with the neighbour
    shard_bytes: int = int(DataConfig.shard_mb * (1 << 20))  # raw (uncompressed) pixel bytes per shard

    def validate(self) -> ShardConfig:
        if not (0 <= self.overlap < 1):
            raise DataError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.hr_tile < self.hr_crop or self.lr_tile < self.lr_crop:
            raise DataError("tile sizes must be at least the crop sizes")
        if min(self.hr_crop, self.lr_crop, self.shard_bytes) <= 0:
            raise DataError("crop sizes and shard_bytes must be positive")
        return self


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Evenly spread tile origins covering [0, length) with at least ``overlap`` shared between tiles."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    n = -(-(length - tile) // stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _rows_for_image(img: np.ndarray, rel: str, name: str, split: str, domain: str, tile: int | None,
                    overlap: float):
    h, w = img.shape[:2]
    if tile is None:
        yield (name, split, domain, h, w, 0, 0, rel, np.ascontiguousarray(img))
        return
    for y in tile_origins(h, tile, overlap):
        for x in tile_origins(w, tile, overlap):
            t = np.ascontiguousarray(img[y : y + tile, x : x + tile])
            yield (f"{name}@{y},{x}", split, domain, t.shape[0], t.shape[1], y, x, rel, t)


def _table(rows: list) -> pa.Table:
    cols = list(zip(*rows))
    arrays = [
        pa.array(cols[0], pa.string()),
        pa.array(cols[1], pa.string()),
        pa.array(cols[2], pa.string()),
        pa.array(cols[3], pa.int32()),
        pa.array(cols[4], pa.int32()),
        pa.array([3] * len(rows), pa.int8()),
        pa.array(cols[5], pa.int32()),
        pa.array(cols[6], pa.int32()),
        pa.array(cols[7], pa.string()),
        pa.array([t.tobytes() for t in cols[8]], pa.binary()),
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=["split", "domain", "source"],
        write_statistics=False,
        row_group_size=max(1, table.num_rows),
    )
    return sink.getvalue().to_pybytes()




def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()




def build_shards(
    source_dir: str | Path,
    out_uri: str,
    cfg: ShardConfig | None = None,
    skip_invalid: bool = False,
    extra: dict | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
) -> tuple[dict, bool]:
    """Convert an AIM19-layout folder to shards at ``out_uri``. Returns ``(manifest, written)``.

    ``written`` is False when an identical manifest was already committed (nothing rewritten).
    ``extra`` (e.g. degradation parameters) is stored in the manifest. Bad input raises DataError listing
    every bad file, before anything is written, unless ``skip_invalid``.
    """
    from ots.data.sources import decode_rgb8, scan_aim19

    cfg = (cfg or ShardConfig()).validate()
    src = scan_aim19(source_dir, hr_min=cfg.hr_crop, lr_min=cfg.lr_crop, progress=progress)
    if src.fatal or (src.invalid and not skip_invalid):
        raise DataError(src.error_message())
    params = asdict(cfg)
    manifest: dict = {
        "format": FORMAT,
        "source": {"layout": "aim19", "fingerprint": src.fingerprint},
        "params": params,
        "extra": extra or {},
        "skipped": [{"file": rel, "reason": reason} for rel, reason in src.invalid],
    }
    config_key = sha256(_manifest_bytes(manifest))
    manifest["config_key"] = config_key

    store = open_store(out_uri, create=True, **(storage_options or {}))
    if store.exists(MANIFEST):
        try:
            old = read_manifest(store)
        except DataError:
            old = None
        if old and old.get("config_key") == config_key and _shards_intact(store, old):
            return old, False  # up to date: every shard is present with its recorded checksum

    groups = [
        ("train", "hr", [(s, s.rel.split("/", 1)[1].rsplit(".", 1)[0]) for s in src.hr], cfg.hr_tile),
        ("train", "lr", [(s, s.rel.split("/", 1)[1].rsplit(".", 1)[0]) for s in src.lr], cfg.lr_tile),
        ("val", "pair", [(pair, pair[0]) for pair in src.val], None),
    ]
    shards: list[dict] = []
    counts: dict[str, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(src.hr) + len(src.lr) + len(src.val), desc="shards", unit="img", disable=None)

    def flush(split: str, domain: str, rows: list) -> None:
        data = _parquet_bytes(_table(rows))
        digest = sha256(data)
        name = f"{SHARD_DIR}/{split}-{domain}-{sum(s['split'] == split and s['domain'] == domain for s in shards):05d}-{digest[:12]}.parquet"  # noqa: E501
        store.write_bytes(name, data)
        shards.append({"name": name, "split": split, "domain": domain, "rows": len(rows), "bytes": len(data),
                       "sha256": digest})

    for split, domain, items, tile in groups:
        rows: list = []
        raw = 0
        for item, name in items:
            if split == "val":
                _, lr, hr = item
                lr_img = decode_rgb8(lr.path.read_bytes(), lr.rel)
                lh, lw = lr_img.shape[:2]
                hr_img = decode_rgb8(hr.path.read_bytes(), hr.rel)[: lh * 4, : lw * 4]  # modcrop
                new = itertools.chain(_rows_for_image(lr_img, lr.rel, name, "val", "lr", None, 0),
                                      _rows_for_image(hr_img, hr.rel, name, "val", "hr", None, 0))
                counts["val/pairs"] = counts.get("val/pairs", 0) + 1
            else:
                img = decode_rgb8(item.path.read_bytes(), item.rel)
                new = _rows_for_image(img, item.rel, name, split, domain, tile, cfg.overlap)
                counts[f"{split}/{domain}/images"] = counts.get(f"{split}/{domain}/images", 0) + 1
            for row in new:  # shard_bytes holds within an image too: a huge image spans several shards
                if rows and raw + row[8].nbytes > cfg.shard_bytes:
                    flush(split, domain, rows)
                    rows, raw = [], 0
                rows.append(row)
                raw += row[8].nbytes
                if split != "val":
                    counts[f"{split}/{domain}/tiles"] = counts.get(f"{split}/{domain}/tiles", 0) + 1
            if bar is not None:
                bar.update(1)
        if rows:
            flush(split, domain, rows)
    if bar is not None:
        bar.close()
    manifest["counts"] = counts
    manifest["shards"] = shards
    store.write_bytes(MANIFEST, _manifest_bytes(manifest))  # the commit
    keep = {s["name"] for s in shards} | {MANIFEST}
    for rel in store.list(""):
        if rel.startswith(SHARD_DIR + "/") and rel not in keep or ".tmp-" in rel:
            store.delete(rel)
    return manifest, True


def _shards_intact(store: Store, manifest: dict) -> bool:
    """True when every shard of ``manifest`` is present with its recorded size *and* sha256 (a same-size bit
    flip is bit-rot, not "up to date": the rerun then rewrites the damaged shards)."""
    try:
        for s in manifest["shards"]:
            if store.size(s["name"]) != s["bytes"] or sha256(store.read_bytes(s["name"])) != s["sha256"]:
                return False
        return True
    except (StorageError, TypeError, KeyError):
        return False




def prepare_dataset(
    source: str,
    output: str,
    photos: str | None = None,
    work_dir: str | None = None,
    seed: int = 0,
    cfg: ShardConfig | None = None,
    skip_invalid: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    demo_options: dict | None = None,
) -> tuple[dict, bool]:
    """The ``prepare`` stage: ``source`` is ``"demo"`` (built into ``work_dir`` from the scikit-image
    photos or ``photos``; ``demo_options`` go to ``build_demo``) or the path of an AIM19-layout folder;
    shards go to ``output`` (path or URI)."""
    extra: dict = {"source": "aim19"}
    if source == "demo":
        from ots.data.demo import build_demo

        work = Path(work_dir or DataConfig.work_dir)
        meta = build_demo(work, photos=photos, seed=seed, progress=progress, **(demo_options or {}))
        extra = {"source": "demo", "seed": seed, "degradation": {k: meta[k] for k in ("lr", "val")},
                 "split": {"hr": meta["hr"], "lr": sorted(meta["lr"]), "val": sorted(meta["val"]),
                           "regions": meta.get("regions", {})}}
        src_dir = work
    else:
        src_dir = Path(os.path.expanduser(source))
        deg = src_dir / "degradation.json"
        if deg.is_file():
            try:
                meta = json.loads(deg.read_text())
                extra["degradation"] = {k: meta[k] for k in ("lr", "val") if k in meta}
            except ValueError:
                pass
    return build_shards(src_dir, output, cfg=cfg, skip_invalid=skip_invalid, extra=extra,
                        storage_options=storage_options, progress=progress)
