"""Checkpoint files: save a solver's state (with the map's config stored explicitly), load it, resume, load the map.

A checkpoint is a ``torch.save`` dict: the solver state (``map``, ``map_ema``, ``potential``, optimisers, ...),
``map_config`` (the map's builder config, so the map is rebuilt without knowing the run's params layout), the
run ``config`` (the params layout, for provenance only: nothing here reads it), ``extra`` and ``rng``.
Sources are local paths or storage URIs (``file://``, ``s3://``); model-registry URIs are resolved by the
pipelines (``python -m pipelines.registry fetch``), never here. Named maps (``ots upscale -n NAME``, Real-ESRGAN's
habit) are files ``NAME.pt`` / ``NAME.pth`` in one folder, ``$OTS_MODELS`` (default ``~/.cache/ots/models``), where
``pipelines.registry fetch`` puts registry models by default.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ots.atomic import atomic_path
from ots.errors import CheckpointError, StorageError, one_line

__all__ = ["MODELS_ENV", "load_checkpoint", "load_map", "models_dir", "named_map", "resume", "save_checkpoint"]

MODELS_ENV = "OTS_MODELS"  # the folder of named maps
MAP_SUFFIXES = (".pt", ".pth")


def save_checkpoint(path: str | os.PathLike, solver: Any, config: dict | None = None, extra: dict | None = None,
                    map_config: dict | None = None) -> None:
    """Atomic write of everything needed to resume, the run config, and the map's config (``map_config``,
    default: the one :func:`ots.solver.build_solver` attached to the solver)."""
    state = solver.state_dict()
    state["config"] = config or {}
    state["map_config"] = map_config or state.get("map_config") or {}
    state["extra"] = extra or {}
    state["rng"] = {"torch": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _not_a_file_hint(source: str) -> str:
    return (f"{source}: ots loads checkpoint files and storage URIs (a path, file://, s3://) only; for a "
            f"model-registry URI or run id fetch the file first: python -m pipelines.registry fetch {source} -o map.pt")


def _read(source: str) -> bytes | str:
    """A local path (returned as a path) or the bytes behind a storage URI."""
    from ots.locations import parse_uri
    from ots.storage import open_store

    try:
        loc = parse_uri(source)
    except StorageError as e:
        raise CheckpointError(_not_a_file_hint(source)) from e
    if loc.scheme == "file":
        if not os.path.isfile(loc.path):
            if os.path.exists(loc.path):
                raise CheckpointError(f"checkpoint not found: {source} is not a file")
            raise CheckpointError(f"checkpoint not found: {_not_a_file_hint(source)}")
        return loc.path
    parent, _, name = loc.uri.rpartition("/")
    try:
        return open_store(parent).read_bytes(name)
    except StorageError as e:
        raise CheckpointError(f"checkpoint not readable: {one_line(e)}") from e


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Tensors and plain containers only (weights_only=True), from a path or a storage URI."""
    source = os.fspath(path)
    data = _read(source)
    if (os.path.getsize(data) if isinstance(data, str) else len(data)) == 0:
        raise CheckpointError(f"cannot read checkpoint {source}: empty file (0 bytes)")
    try:
        state = torch.load(data if isinstance(data, str) else io.BytesIO(data), map_location="cpu",
                           weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/unsafe files become one line
        raise CheckpointError(f"cannot read checkpoint {source}: {one_line(e, 300) or type(e).__name__}") from e
    if not isinstance(state, dict) or "map" not in state:
        raise CheckpointError(f"{source} is not an OTS checkpoint (no 'map' entry)")
    return state


def resume(solver: Any, path: str | os.PathLike, restore_rng: bool = True) -> dict:
    """Load ``path`` into ``solver`` (and the torch RNG); returns the checkpoint dict."""
    state = load_checkpoint(path)
    solver.load_state_dict(state)
    if restore_rng and "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
    return state


MAX_CONFIG_INT = 1 << 16  # no size in a map config (blocks, features, scale) comes near this


def _check_fits(map_config: dict, weights: dict, path) -> None:
    """Refuse, in one line and before allocating anything, a map config that is absurd (a size beyond
    ``MAX_CONFIG_INT``) or that does not fit the weights stored with it: the map is first built on the ``meta``
    device (shapes only) and its tensors' shapes are compared with the checkpoint's."""
    from ots.errors import ConfigError
    from ots.models import build_map

    if not isinstance(map_config, dict):
        raise CheckpointError(f"{path}: map_config must be a mapping, got {type(map_config).__name__}")
    for key, value in map_config.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_CONFIG_INT:
            raise CheckpointError(f"{path}: map_config {key}={value} is beyond any map (at most {MAX_CONFIG_INT})")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_map(map_config).state_dict().items()}
    except ConfigError as e:
        raise CheckpointError(f"{path}: {one_line(e, 300)}") from e
    stored = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if shapes != stored:
        key = next(k for k in sorted(set(shapes) | set(stored)) if shapes.get(k) != stored.get(k))
        raise CheckpointError(f"{path}: map_config {map_config.get('arch')} does not fit the weights stored with it "
                              f"({key}: config {shapes.get(key, 'none')}, weights {stored.get(key, 'none')})")


def load_map(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The trained map from a checkpoint, in eval mode, built from the config stored with it: the EMA of the map
    when training kept one (that is what was validated and selected), else the map itself."""
    from ots.models import build_map

    state = load_checkpoint(path)
    map_config = state.get("map_config")
    if not map_config:
        raise CheckpointError(f"{path} holds no map config (map_config): it was not written by ots")
    weights = state.get("map_ema") or state["map"]
    _check_fits(map_config, weights, path)
    model = build_map(map_config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: map weights do not fit {map_config.get('arch')}: {one_line(e, 300)}") from e
    return model.to(device).eval()


def models_dir() -> Path:
    """The folder of named maps: ``$OTS_MODELS``, default ``$XDG_CACHE_HOME/ots/models`` (``~/.cache/ots/models``)."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ots" / "models"


def named_map(name: str) -> Path:
    """The checkpoint file of the map called ``name`` in :func:`models_dir` (``name.pt`` or ``name.pth``);
    CheckpointError (one line, listing the names there) when there is none."""
    folder = models_dir()
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in MAP_SUFFIXES else name
    if not stem or "/" in stem or ":" in stem or stem.startswith("."):  # a path or a URI, not a name
        raise CheckpointError(f"-n/--model_name takes the name of a map in {folder}, got {name!r}: pass a file or "
                              f"storage URI with --model_path; fetch a registry model first: python -m "
                              f"pipelines.registry fetch {name} -n NAME")
    for suffix in MAP_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    known = sorted({p.stem for p in folder.glob("*") if p.suffix in MAP_SUFFIXES}) if folder.is_dir() else []
    raise CheckpointError(
        f"no map named {stem!r} in {folder} (${MODELS_ENV}; has: {', '.join(known) or 'none'}); put {stem}.pt "
        f"there, or fetch a registry model into it: python -m pipelines.registry fetch <registry URI> -n {stem}")
