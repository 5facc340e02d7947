"""Gather a folder of real photos that ship inside packages (never committed, never downloaded from the web).

Sources, each optional: the Debian packages ``lomiri-wallpapers-16.04`` and ``lomiri-wallpapers-20.04``
(19 photos; ``apt-get download`` + ``dpkg-deb -x``, no install), scikit-image's sample photos and
scikit-learn's two sample images. The folder feeds ``ots data demo --photos DIR`` (an AIM19-layout set whose
HR and LR domains come from disjoint regions of the same photos).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from ots.errors import DataError

DEBIAN_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
# Natural colour photos among scikit-image's samples (the rest are synthetic, gray or microscopy).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
PHOTO_EXTS = (".jpg", ".jpeg", ".png")


def _debian_photos(work: Path) -> list[Path]:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return []
    got = subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=work, capture_output=True, text=True)
    if got.returncode != 0:
        return []
    root = work / "x"
    for deb in sorted(work.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    return sorted(p for p in (root / "usr/share/backgrounds").rglob("*") if p.suffix.lower() in PHOTO_EXTS)


def _package_photos(module: str, subdir: str, names: tuple[str, ...]) -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return []
    base = Path(list(spec.submodule_search_locations)[0]) / subdir
    return [base / n for n in names if (base / n).is_file()]


def gather_photos(out_dir: str | Path, debian: bool = True) -> dict:
    """Copy every available photo into ``out_dir`` (flat, prefixed by source); returns {source: [names]}."""
    out = Path(out_dir)
    found: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory() as work:
        if debian:
            found["debian"] = _debian_photos(Path(work))
        found["skimage"] = _package_photos("skimage", "data", SKIMAGE_PHOTOS)
        found["sklearn"] = _package_photos("sklearn", "datasets/images", SKLEARN_PHOTOS)
        if sum(len(v) for v in found.values()) < 3:
            raise DataError("fewer than 3 photos found (no apt-get/dpkg-deb, scikit-image or scikit-learn photos)")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        names: dict[str, list[str]] = {}
        for source, paths in found.items():
            for p in paths:
                name = f"{source}-{p.name}"
                shutil.copyfile(p, tmp / name)
                names.setdefault(source, []).append(name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return names
