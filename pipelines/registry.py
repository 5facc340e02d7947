"""Model-registry URIs -> a local map checkpoint: ``runs:/``, ``models:/name@alias``, ``models:/name/version``, run ids.

The library (:mod:`ots`) loads files and storage URIs only; everything that knows MLflow's URI syntax is here.
The tracking server comes from ``$MLFLOW_TRACKING_URI``. CLI::

    python -m pipelines.registry fetch models:/ots@champion -o map.pt
    python -m pipelines.registry fetch models:/ots@champion -n ots@champion   # then: ots upscale -n ots@champion
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from ots.atomic import atomic_path
from ots.errors import CheckpointError, one_line
from ots.redaction import redact_uri

CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc artifact key that holds the map checkpoint
_RUN_ID = re.compile(r"[0-9a-f]{32}")

__all__ = ["CHECKPOINT_ARTIFACT", "fetch", "is_registry_source", "load_map", "main", "named_map_path",
           "resolve_checkpoint"]


def is_registry_source(source: str) -> bool:
    """True for ``runs:/...``, ``models:/...`` and bare 32-hex MLflow run ids."""
    source = str(source)
    return source.startswith(("runs:/", "models:/")) or _RUN_ID.fullmatch(source) is not None


def _checkpoint_in(path: Path) -> Path:
    """A checkpoint file inside a downloaded artifact: the file itself, a pyfunc model dir, or a lone *.pt."""
    if path.is_file():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        import yaml

        conf = yaml.safe_load(mlmodel.read_text()) or {}
        art = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        rel = (art.get(CHECKPOINT_ARTIFACT) or {}).get("path")
        if rel and (path / rel).is_file():
            return path / rel
    found = sorted(path.rglob("*.pt"))
    if len(found) == 1:
        return found[0]
    finals = [p for p in found if p.name == "final.pt"]
    if len(finals) == 1:
        return finals[0]
    raise CheckpointError(f"no unique map checkpoint in {path} ({len(found)} *.pt files)")


def _run_model_uri(run_id: str) -> str:
    """The newest pyfunc model logged by a run, else the run's checkpoint artifact."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(f"no MLflow run {run_id} at {redact_uri(mlflow.get_tracking_uri())}") from e
    try:  # in the run's experiment: without experiment_ids MLflow searches the *active* one only
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'", output_format="list")
    except MlflowException:
        models = []
    models = sorted(models, key=lambda m: m.creation_timestamp or 0, reverse=True)
    if models:
        return f"models:/{models[0].model_id}"
    stack, pts = [""], []
    while stack:
        for f in client.list_artifacts(run_id, stack.pop() or None):
            if f.is_dir:
                stack.append(f.path)
            elif f.path.endswith(".pt"):
                pts.append(f.path)
    if not pts:
        raise CheckpointError(f"MLflow run {run_id} has no logged model and no *.pt artifact")
    pts.sort(key=lambda p: (Path(p).name != "final.pt", p))
    return f"runs:/{run_id}/{pts[0]}"


def _missing_alias(uri: str) -> str | None:
    """For ``models:/<name>@<alias>`` naming an alias the registered model lacks: one line saying so and listing
    the aliases it has (``make demo`` sets ``challenger``; ``champion`` only moves through register's gate)."""
    m = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", uri)
    if not m:
        return None
    name, alias = m.groups()
    try:
        aliases = mlflow.MlflowClient().get_registered_model(name).aliases or {}
    except MlflowException:
        return None  # no such model (or no registry): MLflow's own message says so
    if alias in aliases:
        return None
    have = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
    hint = (" (`champion` moves only when `register` finds a map better than bicubic; serve "
            f"models:/{name}@challenger, the newest version, meanwhile)") if alias == "champion" else ""
    return f"{uri}: registered model {name!r} has no alias {alias!r}{hint}; its aliases: {have}"


def resolve_checkpoint(source: str, dst: str | os.PathLike) -> Path:
    """The map checkpoint behind a local path, ``runs:/``, ``models:/`` URI or run id (downloaded into ``dst``)."""
    if Path(source).is_file():
        return Path(source)
    uri = _run_model_uri(source) if _RUN_ID.fullmatch(source) else source
    if not uri.startswith(("runs:/", "models:/")):
        raise CheckpointError(f"{source!r} is neither a checkpoint file nor an MLflow runs:/, models:/ URI or run id")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    except MlflowException as e:
        missing = _missing_alias(uri)
        if missing:
            raise CheckpointError(missing) from e
        raise CheckpointError(f"cannot fetch {uri} from {redact_uri(mlflow.get_tracking_uri())}: "
                              f"{one_line(str(e).strip().splitlines()[0])}") from e
    return _checkpoint_in(Path(local))


def fetch(source: str, output: str | os.PathLike) -> Path:
    """Copy the checkpoint behind ``source`` to the local file ``output`` (atomically); returns ``output``."""
    with tempfile.TemporaryDirectory(prefix="ots-model-") as tmp:
        ckpt = resolve_checkpoint(str(source), tmp)
        with atomic_path(output) as part:
            shutil.copyfile(ckpt, part)
    return Path(output)


def load_map(source: str, device: str = "cpu"):
    """The trained map (eval mode) from a checkpoint path or storage URI (through :func:`ots.checkpoint.load_map`)
    or from a registry source (``runs:/...``, a run id, ``models:/name@alias``): only the checkpoint is fetched."""
    from ots.checkpoint import load_map as load_file

    if not is_registry_source(source) or Path(source).is_file():
        return load_file(source, device=device)
    with tempfile.TemporaryDirectory(prefix="ots-model-") as tmp:
        return load_file(resolve_checkpoint(str(source), tmp), device=device)



def named_map_path(name: str) -> Path:
    """Where ``ots upscale -n name`` looks for the map ``name`` (``ots.checkpoint.models_dir()/name.pt``)."""
    from ots.checkpoint import models_dir

    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"a map name is a file stem such as ots-sr@champion, got {name!r}")
    return models_dir() / f"{name}.pt"


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.registry fetch <source> -o map.pt``: one line on stderr and exit 2 on any error."""
    import sys

    from ots.argparsing import ArgumentParser
    from ots.errors import OTSError

    ap = ArgumentParser(prog="python -m pipelines.registry",
                        description="Registry models -> local checkpoint files that `ots` commands load.")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the map checkpoint behind a registry URI or run id")
    f.add_argument("source", help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/<path> or a run id")
    to = f.add_mutually_exclusive_group(required=True)
    to.add_argument("-o", "--output", help="local checkpoint file to write (e.g. map.pt)")
    to.add_argument("-n", "--name", help="save as the named map NAME (NAME.pt in $OTS_MODELS) that "
                                         "`ots upscale -n NAME` loads")
    args = ap.parse_args(argv)
    try:
        print(fetch(args.source, args.output or named_map_path(args.name)))
    except (OTSError, MlflowException, OSError) as e:
        print(f"registry: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
