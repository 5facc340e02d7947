"""Resolve pretrained backbone weights (VGG16, AlexNet, Inception) to a local file.

Order: an explicit path/URI (config) > the environment variable OTS_<NAME>_WEIGHTS > the standard torch hub
cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints) > a download into that cache, as
torchvision does (from the file's public URL, or from ``$OTS_WEIGHTS_MIRROR/<file>`` for a mirror), checked against
the SHA-256 prefix in the file name. ``OTS_OFFLINE=1`` never downloads: missing weights are then a clear error that
names the file and where to put it. Tests that do not want weights pass ``"random"`` explicitly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ots import atomic
from ots.errors import WeightsNotFoundError, one_line

# Standard torchvision / pytorch-fid file names (what `torch.hub` would have cached).
KNOWN_WEIGHTS = {
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alexnet": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "inception": (
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    ),
}

RANDOM = "random"


def hub_checkpoint_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def env_var(name: str) -> str:
    return f"OTS_{name.upper()}_WEIGHTS"


def resolve_weights(name: str, explicit: str | os.PathLike | None = None) -> str:
    """Return a local file path for backbone `name`, or ``"random"`` if that was asked for explicitly."""
    if name not in KNOWN_WEIGHTS:
        raise WeightsNotFoundError(f"unknown backbone {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    filename, url = KNOWN_WEIGHTS[name]
    source = explicit if explicit is not None else os.environ.get(env_var(name))
    if source is not None:
        source = str(source)
        if source == RANDOM:
            return RANDOM
        if source.startswith("file://"):
            source = source[len("file://") :]
        if "://" in source:
            return _fetch_from_storage(source, filename)
        if not os.path.isfile(source):
            raise WeightsNotFoundError(f"{name} weights not found at {source!r} (from config or ${env_var(name)})")
        return source
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return str(cached)
    where = f"put {filename} in {hub_checkpoint_dir()} (from {url}) or set ${env_var(name)} to its path/URI"
    if offline():
        raise WeightsNotFoundError(f"{name} weights missing and {OFFLINE_VAR}=1: {where}")
    return _download(name, filename, url, cached, where)


OFFLINE_VAR = "OTS_OFFLINE"
MIRROR_VAR = "OTS_WEIGHTS_MIRROR"
DOWNLOAD_TIMEOUT_S = 60  # per socket operation


def offline() -> bool:
    """True when downloads are switched off (``OTS_OFFLINE=1``/true/yes)."""
    return os.environ.get(OFFLINE_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def _download(name: str, filename: str, url: str, target: Path, where: str) -> str:
    """Download into the hub cache: streamed to a temp name with a progress bar, the SHA-256 prefix in the file
    name checked, then renamed, so a failed or corrupt download leaves nothing in the cache. A socket timeout
    keeps a machine without internet from hanging (torch.hub's downloader has none)."""
    import hashlib
    import urllib.request

    from tqdm import tqdm

    mirror = os.environ.get(MIRROR_VAR)
    if mirror:
        url = f"{mirror.rstrip('/')}/{filename}"
    match = re.search(r"-([a-f0-9]{8,})\.", filename)
    sha = hashlib.sha256()
    try:
        with atomic.atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            size = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=filename, leave=False) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    sha.update(chunk)
                    bar.update(len(chunk))
            if match and not sha.hexdigest().startswith(match.group(1)):
                raise ValueError(f"hash mismatch: sha256 {sha.hexdigest()[:8]}..., expected {match.group(1)}...")
    except Exception as e:  # noqa: BLE001 - network, HTTP and hash errors all end in one line
        raise WeightsNotFoundError(
            f"{name} weights: download from {url} failed ({one_line(e, 200)}); {where}, or set {OFFLINE_VAR}=1"
        ) from e
    return str(target)


def _fetch_from_storage(uri: str, filename: str) -> str:
    """Copy weights from our object storage (s3://...) into the hub cache once."""
    from ots.errors import StorageError
    from ots.storage import open_store

    target = hub_checkpoint_dir() / filename
    if target.is_file():
        return str(target)
    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        data = open_store(parent).read_bytes(name)
    except StorageError as e:
        raise WeightsNotFoundError(f"cannot read weights: {e}") from e
    atomic.write_bytes(target, data)
    return str(target)


def load_state_dict(path: str):
    """Load a weights file safely (tensors only)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsNotFoundError(f"cannot load weights file {path}: {e}".splitlines()[0]) from e
