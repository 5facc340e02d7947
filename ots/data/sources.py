"""AIM19 layout reader: ``train_clean/`` (HR domain), ``train_noisy/`` (LR domain), ``val_hr/`` + ``val_lr/``
(paired, HR = 4 x LR, modcrop allowed). PNG (or other common formats), flat or nested folders.

``scan_aim19`` decodes every file once to validate it and returns the lists of good files plus every bad
file with its reason; it also computes a fingerprint of the whole source (names + content hashes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ots.errors import DataError
from ots.imageio import BOMB_MAX_PIXELS, to_rgb8
from ots.imageio import decode_image as _decode

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
FOLDERS = {"hr": "train_clean", "lr": "train_noisy", "val_hr": "val_hr", "val_lr": "val_lr"}
SCALE = 4


def decode_rgb8(data: bytes, what: str = "image", max_pixels: int | None = BOMB_MAX_PIXELS) -> np.ndarray:
    """Decode bytes to a uint8 HxWx3 RGB array (:mod:`ots.imageio`: 16 bit rescaled, never clipped; gray
    replicated; alpha dropped); raises DataError with the reason on bad input, decompression bombs included."""
    return to_rgb8(_decode(data, what, max_pixels=max_pixels))


def load_rgb8(path: str | Path) -> np.ndarray:
    return decode_rgb8(Path(path).read_bytes(), str(path))


def list_files(folder: Path) -> list[Path]:
    """All regular, non-hidden files under ``folder`` (recursive), sorted by relative path."""
    if not folder.is_dir():
        return []
    out = [
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


@dataclass
class SourceImage:
    rel: str  # path relative to the source root, posix
    path: Path
    height: int
    width: int


@dataclass
class Aim19Source:
    root: Path
    hr: list[SourceImage] = field(default_factory=list)
    lr: list[SourceImage] = field(default_factory=list)
    val: list[tuple[str, SourceImage, SourceImage]] = field(default_factory=list)  # (name, lr, hr)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (rel path, reason)
    fatal: list[str] = field(default_factory=list)  # problems --skip-invalid cannot skip
    fingerprint: str = ""

    def error_message(self) -> str:
        lines = [f"{self.root}: {len(self.fatal) + len(self.invalid)} problem(s) in the input, nothing written"]
        lines += [f"  {m}" for m in self.fatal]
        lines += [f"  {rel}: {reason}" for rel, reason in self.invalid]
        if self.invalid and not self.fatal:
            lines.append("  (use --skip-invalid to write the valid images and record the skipped ones)")
        return "\n".join(lines)


def scan_aim19(root: str | Path, hr_min: int = 128, lr_min: int = 32, progress: bool = False) -> Aim19Source:
    """Validate an AIM19-layout folder. Never raises for bad files: see ``.invalid`` and ``.fatal``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: source folder does not exist")
    src = Aim19Source(root=root)
    digest = hashlib.sha256()
    decoded: dict[str, dict[str, SourceImage]] = {}
    mins = {"hr": hr_min, "lr": lr_min, "val_hr": hr_min, "val_lr": lr_min}
    jobs = []
    for key, folder in FOLDERS.items():
        files = list_files(root / folder)
        if not files:
            src.fatal.append(f"{folder}/: missing or empty folder")
        jobs += [(key, folder, p) for p in files]
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="validate", unit="img", disable=None)
    for key, folder, p in it:
        rel = p.relative_to(root).as_posix()
        data = p.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(hashlib.sha256(data).digest())
        if p.suffix.lower() not in IMAGE_EXTS:
            src.invalid.append((rel, f"not an image (extension {p.suffix or 'none'!r})"))
            continue
        try:
            arr = decode_rgb8(data, rel)
        except DataError as e:
            src.invalid.append((rel, str(e).split(": ", 1)[1]))
            continue
        h, w = arr.shape[:2]
        if min(h, w) < mins[key]:
            src.invalid.append((rel, f"too small: {w}x{h}, need at least {mins[key]}x{mins[key]}"))
            continue
        name = p.relative_to(root / folder).with_suffix("").as_posix()
        decoded.setdefault(key, {})[name] = SourceImage(rel, p, h, w)
    src.hr = list(decoded.get("hr", {}).values())
    src.lr = list(decoded.get("lr", {}).values())
    vh, vl = decoded.get("val_hr", {}), decoded.get("val_lr", {})
    bad_names = {Path(r).with_suffix("").as_posix().split("/", 1)[1] for r, _ in src.invalid if r.startswith("val_")}
    for name in sorted(set(vh) | set(vl)):
        if name not in vl:
            if name not in bad_names:
                src.invalid.append((vh[name].rel, "no val_lr image with the same name"))
            continue
        if name not in vh:
            if name not in bad_names:
                src.invalid.append((vl[name].rel, "no val_hr image with the same name"))
            continue
        hr, lr = vh[name], vl[name]
        if hr.height // SCALE != lr.height or hr.width // SCALE != lr.width:
            why = f"val pair size mismatch: HR {hr.width}x{hr.height} is not {SCALE} x LR {lr.width}x{lr.height}"
            src.invalid.append((hr.rel, why))
            continue
        src.val.append((name, lr, hr))
    src.invalid.sort()
    for key, items in (("train_clean", src.hr), ("train_noisy", src.lr), ("val pairs", src.val)):
        if not items and not any(m.startswith(key) for m in src.fatal):
            src.fatal.append(f"{key}: no valid images left")
    src.fingerprint = digest.hexdigest()
    return src
