"""``ots bench data``: random 128-px HR crops/s per core from shards vs. from the PNG folders, in one run."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_PER_CORE = 1000.0
TARGET_RATIO = 10.0


def _png_crops(files: list[Path], crop: int, n: int, batch: int, seed: int) -> float:
    from PIL import Image

    from ots.data.loader import crops_to_tensor, random_crops

    rng = np.random.default_rng(seed)
    done, t0 = 0, time.perf_counter()
    while done < n:
        imgs = []
        for f in rng.integers(0, len(files), size=batch):  # decode the whole image, then crop
            with Image.open(files[f]) as im:
                imgs.append(np.asarray(im.convert("RGB")))
        crops_to_tensor(random_crops(imgs, crop, batch, rng))
        done += batch
    return done / (time.perf_counter() - t0)


def run_data_bench(data_uri: str | None = None, png_dir: str | None = None, crop: int = 128, batch: int = 64,
                   shard_crops: int = 20000, png_crops: int = 256, seed: int = 0) -> dict:
    """Single process, single thread (so the rate is per core). Without ``data_uri``/``png_dir`` the demo
    set is built in a temporary folder and both paths read the same images."""
    import torch

    from ots.data.loader import CropStream, clear_cache
    from ots.data.sources import list_files

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ots-bench-") as tmp:
        if data_uri is None or png_dir is None:
            from ots.data.shards import prepare_dataset

            png_dir = str(Path(tmp) / "src")
            data_uri = str(Path(tmp) / "shards")
            prepare_dataset("demo", data_uri, work_dir=png_dir, progress=False)
        clear_cache()
        t0 = time.perf_counter()
        stream = CropStream(data_uri, domain="hr", crop=crop, batch_size=batch, seed=seed)
        stream.batch(0)  # open, verify and decode the shards once
        load_s = time.perf_counter() - t0
        n_batches = max(1, shard_crops // batch)
        t0 = time.perf_counter()
        for b in range(1, n_batches + 1):
            stream.batch(b)
        shard_rate = n_batches * batch / (time.perf_counter() - t0)
        files = [p for p in list_files(Path(png_dir) / "train_clean") if p.suffix.lower() == ".png"]
        png_rate = _png_crops(files, crop, png_crops, batch, seed)
    ratio = shard_rate / png_rate
    return {
        "benchmark": "data",
        "crop": crop,
        "batch_size": batch,
        "threads": 1,
        "shards_crops_per_s_per_core": round(shard_rate, 1),
        "png_crops_per_s_per_core": round(png_rate, 1),
        "ratio": round(ratio, 2),
        "shard_open_decode_s": round(load_s, 3),
        "n_tiles": stream.n_tiles(),
        "n_png": len(files),
        "targets": {"shards_crops_per_s_per_core": TARGET_PER_CORE, "ratio": TARGET_RATIO},
        "pass": bool(shard_rate >= TARGET_PER_CORE and ratio >= TARGET_RATIO),
    }


def _cmd(args) -> int:
    res = run_data_bench(args.data, args.png, crop=args.crop, batch=args.batch, shard_crops=args.shard_crops,
                         png_crops=args.png_crops, seed=args.seed)
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if res["pass"] or not args.check else 1


def add_bench_command(bench_sub) -> None:
    """Register ``data`` on the ``ots bench`` sub-parsers object."""
    p = bench_sub.add_parser("data", help="crops/s per core from shards vs PNG folders (JSON)")
    p.add_argument("--data", help="shard dataset URI (default: build the demo set in a temp folder)")
    p.add_argument("--png", help="AIM19-layout PNG folder with the same images (train_clean/ is used)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--shard-crops", type=int, default=20000)
    p.add_argument("--png-crops", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.set_defaults(func=_cmd)
