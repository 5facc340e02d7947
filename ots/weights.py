"""Resolve pretrained backbone weights without ever downloading them.

Order: an explicit path/URI (config) > the environment variable OTS_<NAME>_WEIGHTS > the standard torch hub
cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints). Missing weights are a clear error
that names the file and where to put it. Tests that do not have weights pass ``"random"`` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

from ots.errors import WeightsNotFoundError

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
    raise WeightsNotFoundError(
        f"{name} weights missing: put {filename} in {hub_checkpoint_dir()} (from {url}) "
        f"or set ${env_var(name)} to its path/URI"
    )


def _fetch_from_storage(uri: str, filename: str) -> str:
    """Copy weights from our object storage (s3://...) into the hub cache once; never from the internet."""
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return str(target)


def load_state_dict(path: str):
    """Load a weights file safely (tensors only)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsNotFoundError(f"cannot load weights file {path}: {e}".splitlines()[0]) from e
