"""Offline AIM19-like demo set.

Colour photos (by default the ones shipped inside scikit-image, or any folder via ``photos=``) are split,
from the seed, into training photos and held-out validation photos. With ``split="regions"`` (the default)
every training photo gives *both* domains from disjoint regions: it is cut into a grid of ``cell``-px cells (at least; keep ``cell`` >= 4 x the LR crop the shards are cut for)
coloured like a checkerboard (the parity drawn from the seed); the cells of one colour are HR-domain images,
the cells of the other colour are degraded, one by one, into LR-domain images. The domains are thus unpaired
and share no pixel, yet have the same content and colour statistics, as AIM19's hundreds of photos do; with
few photos, splitting whole photos (``split="photos"``) or even halves between the domains leaves colour and
content differences that the empirical OT map must then reproduce. The LR domain gets an AIM19-like unknown degradation, randomised per image
from the seed: a random Gaussian blur kernel (isotropic or anisotropic), x4 bicubic downscale, Gaussian or
Poisson noise and JPEG compression. Validation pairs are centre crops of the held-out photos (modcrop 4) and
the same kind of degradation of them. The result is a folder in the AIM19 layout (``train_clean/``,
``train_noisy/``, ``val_hr/``, ``val_lr/``) plus ``degradation.json`` with every parameter and, per
training photo, the pixel boxes (y0, y1, x0, x1) of its HR and LR cells. Deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from ots.data.config import DataConfig
from ots.data.degradations import get_degradation
from ots.data.sources import IMAGE_EXTS, SCALE, decode_rgb8, list_files
from ots.errors import DataError

DEMO_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


def skimage_photo_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo set needs scikit-image (its bundled photos), or pass --photos DIR")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def demo_photos(photos: str | Path | None = None) -> list[Path]:
    if photos is None:
        d = skimage_photo_dir()
        files = [d / n for n in DEMO_PHOTOS if (d / n).is_file()]
    else:
        files = [p for p in list_files(Path(photos)) if p.suffix.lower() in IMAGE_EXTS]
    if len(files) < 3:
        raise DataError(f"{photos or 'scikit-image data'}: need at least 3 photos, found {len(files)}")
    return files


SPLITS = ("regions", "photos")


def checkerboard(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> dict[str, list[tuple[int, ...]]]:
    """Disjoint boxes (y0, y1, x0, x1) of a grid of about ``cell``-px cells (at least; keep ``cell`` >= 4 x the LR crop the shards are cut for), split like a checkerboard into
    ``{"hr": [...], "lr": [...]}`` (which colour is HR is random). Cell edges fall on multiples of 4 so that
    every cell keeps whole LR pixels after the x4 degradation; at least 2 cells along the long side."""
    h, w = shape
    rows, cols = max(1, h // cell), max(1, w // cell)  # cells of at least ~cell px (edges snap down to x4)
    if rows * cols < 2:
        rows, cols = (1, 2) if w >= h else (2, 1)

    def edges(n: int, size: int) -> list[int]:
        return [round(i * size / n) // SCALE * SCALE for i in range(n)] + [size]

    ys, xs = edges(rows, h), edges(cols, w)
    parity = int(rng.integers(0, 2))
    out: dict[str, list[tuple[int, ...]]] = {"hr": [], "lr": []}
    for i in range(rows):
        for j in range(cols):
            out["hr" if (i + j + parity) % 2 == 0 else "lr"].append((ys[i], ys[i + 1], xs[j], xs[j + 1]))
    return out


def _cut(img: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return np.ascontiguousarray(img[y0:y1, x0:x1])


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def build_demo(
    out_dir: str | Path,
    photos: str | Path | None = None,
    seed: int = 0,
    max_side: int = DataConfig.max_side,
    val_crop: int = DataConfig.val_crop,
    progress: bool = True,
    split: str = DataConfig.split,
    cell: int = DataConfig.cell,
    degradation: str = "mix",
) -> dict:
    """Build (or reuse, if already built with the same inputs) an AIM19-layout demo folder.

    ``degradation``: how LR-domain cells and val LR images are made (:mod:`ots.data.degradations`; ``mix`` is
    the AIM19-like default, the others are the image ladder's known-answer rungs)."""
    if split not in SPLITS:
        raise DataError(f"demo split must be one of {', '.join(SPLITS)}, got {split!r}")
    degrade = get_degradation(degradation).apply
    out = Path(out_dir)
    files = demo_photos(photos)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    config = {"seed": seed, "max_side": max_side, "val_crop": val_crop, "scale": SCALE, "photos": h.hexdigest(),
              "split": split, "cell": cell, "degradation": degradation}
    meta_path = out / "degradation.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("config") == config:
                return json.loads(meta_path.read_text())
        except ValueError:
            pass
    from PIL import Image

    order = np.random.default_rng(seed).permutation(len(files))
    n_val = max(1, len(files) // 4)
    val_idx, rest = order[:n_val], order[n_val:]
    if split == "regions":
        parts = {"val": sorted(int(i) for i in val_idx), "both": sorted(int(i) for i in rest)}
    else:
        parts = {"val": sorted(int(i) for i in val_idx), "hr": sorted(int(i) for i in rest[0::2]),
                 "lr": sorted(int(i) for i in rest[1::2])}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta: dict = {"config": config, "hr": [], "lr": {}, "val": {}, "regions": {}}
    jobs = [(k, i) for k in ("both", "hr", "lr", "val") for i in parts.get(k, [])]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="demo", unit="img", disable=None)
    for kind, i in jobs:
        p = files[i]
        img = decode_rgb8(p.read_bytes(), str(p))
        if max(img.shape[:2]) > max_side:
            f = max_side / max(img.shape[:2])
            size = (round(img.shape[1] * f), round(img.shape[0] * f))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC), dtype=np.uint8)
        stem = p.stem
        if kind == "both":
            boxes = checkerboard(img.shape[:2], cell, _rng(seed, "split/" + stem))
            for k, box in enumerate(boxes["hr"]):
                _save_png(tmp / "train_clean" / stem / f"{k:03d}.png", _cut(img, box))
            for k, box in enumerate(boxes["lr"]):
                lr, params = degrade(_cut(img, box), _rng(seed, f"{stem}/{k}"))
                _save_png(tmp / "train_noisy" / stem / f"{k:03d}.png", lr)
                meta["lr"][f"{stem}/{k:03d}"] = params
            meta["hr"].append(stem)
            meta["regions"][stem] = {"size": list(img.shape[:2]), "hr": [list(b) for b in boxes["hr"]],
                                     "lr": [list(b) for b in boxes["lr"]]}
        elif kind == "hr":
            _save_png(tmp / "train_clean" / f"{stem}.png", img)
            meta["hr"].append(stem)
        elif kind == "lr":
            lr, params = degrade(img, _rng(seed, stem))
            _save_png(tmp / "train_noisy" / f"{stem}.png", lr)
            meta["lr"][stem] = params
        else:
            c = min(val_crop, img.shape[0], img.shape[1]) // SCALE * SCALE
            y, x = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
            hr = np.ascontiguousarray(img[y : y + c, x : x + c])
            lr, params = degrade(hr, _rng(seed, "val/" + stem))
            _save_png(tmp / "val_hr" / f"{stem}.png", hr)
            _save_png(tmp / "val_lr" / f"{stem}.png", lr)
            meta["val"][stem] = params
    (tmp / "degradation.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return meta
