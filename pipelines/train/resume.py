"""The train driver's resume model: which MLflow run and Ray run folder a ``train`` invocation continues or retires.

One *slot* = the train runs of one experiment that write the same ``output_dir`` (the OTS map and the GAN baseline
are two slots). By default a run continues the latest unfinished (not FINISHED) run of its slot when that run has
the same *config hash* -- everything that shapes the optimisation: seed, model, solver, the dataset's identity (the
digest of its manifest, so a dataset prepared again with other data or params is never resumed silently), crops,
batch, workers; ``steps`` may grow (the run continues to the new target) -- and the same checkpoint storage: same
MLflow run, same Ray run name and folder, so Ray restores its latest checkpoint and ``run.json`` names the run that
holds the metrics. Otherwise (or with ``train.fresh`` / ``--fresh``) a new run starts and the old unfinished ones
are *retired*: ended KILLED with ``ots.superseded_by``/``ots.superseded_reason`` tags, their checkpoints deleted
except the best by val SWD (kept as ``<run>/best/``). With a fixed ``train.run_name``, a changed config is refused
in one line instead (the run name promises one run); a new run under a fixed name first moves what its folder holds
(a finished run's checkpoints) to ``<name>-<time>/best/``, so Ray never restores another run's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ots.errors import ConfigError

# train keys that do not change what is optimised (bookkeeping, logging, where things go, when to stop)
NOT_HASHED = {"steps", "checkpoint_every", "eval_every", "keep_best_k", "max_failures", "use_gpu",
              "resources_per_worker", "storage_path", "run_name", "log_every", "image_every", "image_count",
              "val_pairs", "val_images",
              "guard", "output_dir", "mlflow", "progress", "overrides", "fresh", "cluster"}
UNFINISHED = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")


def manifest_digest(manifest: dict) -> str:
    """sha256 of a dataset's manifest (its shards' checksums, the prepare params and source): the data's identity."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def dataset_identity(manifest: dict) -> dict:
    """What a run trains on, logged as its ``dataset.*`` params: the manifest's digest (hashed) and the prepare
    params recorded *in the manifest* -- the ones the shards were built with, not params.yaml's ``data:`` now."""
    extra = manifest.get("extra") or {}
    return {"digest": manifest_digest(manifest)[:32], "source": extra.get("source"), "seed": extra.get("seed"),
            "shards": manifest.get("params") or {}}


def hashed_config(params: dict) -> dict:
    """The part of resolved params that shapes the optimisation (see ``NOT_HASHED``), with the dataset's digest
    (``params["dataset"]``, set by the driver from the manifest)."""
    train = {k: v for k, v in params["train"].items() if k not in NOT_HASHED}
    out = {"seed": params.get("seed", 0), "model": params.get("model"), "solver": params.get("solver") or {},
           "train": train}
    digest = (params.get("dataset") or {}).get("digest")
    if digest:
        out["dataset"] = {"digest": digest}
    return out


def config_hash(params: dict) -> str:
    blob = json.dumps(hashed_config(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(old_params: dict[str, str], params: dict) -> list[str]:
    """``key: old -> new`` for the hashed keys whose logged MLflow param differs from ``params``."""
    from pipelines.mlflow_access import flatten

    def hashed(key: str) -> bool:
        root, _, rest = key.partition(".")
        return (root in ("seed", "model", "solver") or key == "dataset.digest"
                or (root == "train" and rest.split(".")[0] not in NOT_HASHED))

    new = flatten(hashed_config(params))
    keys = sorted({k for k in old_params if hashed(k)} | set(new))
    return [f"{k}: {old_params.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys
            if old_params.get(k) != new.get(k)]


@dataclass
class Plan:
    """What the driver does: continue ``run_id`` (None = create a run) under Ray name ``ray_name``."""

    run_id: str | None
    ray_name: str | None
    retire: list  # [(mlflow Run, reason)] to end KILLED and prune
    note: str = ""


def slot_runs(client, exp_id: str, output_dir: str) -> list:
    """This slot's train runs that did not finish, newest first."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`ots.stage` = 'train' and tags.`ots.output` = "
                                                      f"'{output_dir}'", order_by=["attributes.start_time DESC"],
                              max_results=200)
    return [r for r in runs if r.info.status in UNFINISHED and "ots.superseded_by" not in r.data.tags]


def plan(client, exp_id: str, params: dict, chash: str, storage_uri: str, fresh: bool) -> Plan:
    """Decide resume vs new run (see the module docstring); raises ConfigError for a fixed run name whose
    unfinished run has another config."""
    train = params["train"]
    runs = slot_runs(client, exp_id, train["output_dir"])
    fixed = train["run_name"]
    if fixed:  # a fixed run name also owns its Ray folder: any unfinished run under it is the candidate
        runs = [r for r in runs if r.data.tags.get("ots.ray_run") == fixed] + [
            r for r in runs if r.data.tags.get("ots.ray_run") != fixed]
    if not runs:
        return Plan(None, fixed, [])
    latest, older = runs[0], runs[1:]
    retire = [(r, "an older unfinished run of this slot") for r in older]
    if fresh:
        return Plan(None, fixed, [(latest, "started over (--fresh)")] + retire)
    tags = latest.data.tags
    why = []
    if fixed and tags.get("ots.ray_run") != fixed:  # a fixed name resumes only its own run
        why.append(f"train.run_name: {tags.get('ots.ray_run')} -> {fixed}")
    if tags.get("ots.config_hash") != chash:
        why = config_diff(latest.data.params, params) or ["config hash differs"]
    if tags.get("ots.storage") != storage_uri:  # the checkpoints are elsewhere
        why.append(f"checkpoint storage: {tags.get('ots.storage')} -> {storage_uri}")
    done = int(tags.get("ots.last_checkpoint_step", "0") or 0)
    if done > train["steps"]:
        why.append(f"train.steps: {done} steps already trained > {train['steps']}")
    if not why:
        return Plan(latest.info.run_id, tags.get("ots.ray_run"), retire,
                    note=f"resuming unfinished run {latest.info.run_id} ({tags.get('ots.ray_run')})")
    if fixed and tags.get("ots.ray_run") == fixed:
        raise ConfigError(f"train.run_name {fixed!r} has an unfinished run {latest.info.run_id} with another "
                          f"config ({'; '.join(why)[:400]}); rerun with --fresh (or train.fresh: true) to end it "
                          f"and start over, or pick another train.run_name")
    return Plan(None, fixed, [(latest, "config changed: " + "; ".join(why)[:400])] + retire)


def retire(client, run, reason: str, new_run_id: str, new_ray_name: str, storage_path: str, fs) -> str | None:
    """End an unfinished run KILLED, say why and which run superseded it, and prune its checkpoints to the best
    (moved to ``<name>-<run id>/best/`` when the new run reuses its Ray name)."""
    rid, tags = run.info.run_id, run.data.tags
    kept, name = None, tags.get("ots.ray_run")
    if name and tags.get("ots.storage_path") == storage_path:
        root = storage_path.rstrip("/")
        kept = prune_to_best(fs, f"{root}/{name}", f"{root}/{name}-{rid[:8]}" if name == new_ray_name else None)
    client.set_tag(rid, "ots.superseded_by", new_run_id)
    client.set_tag(rid, "ots.superseded_reason", reason[:4000])
    if kept:
        client.set_tag(rid, "ots.best_kept", kept)
    client.set_terminated(rid, "KILLED")
    return kept


def prune_to_best(fs, run_dir: str, move_to: str | None = None) -> str | None:
    """Delete a Ray run folder's checkpoints except the best (lowest val SWD in ``meta.json``), kept as
    ``<run_dir or move_to>/best/``; with ``move_to`` the whole ``run_dir`` goes (its name is reused)."""
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    if fs.get_file_info(run_dir).type != pafs.FileType.Directory:
        return None
    entries = fs.get_file_info(pafs.FileSelector(run_dir))
    best, best_swd = None, float("inf")
    for e in entries:
        if e.type != pafs.FileType.Directory or not e.base_name.startswith(("checkpoint_", "best")):
            continue
        try:
            with fs.open_input_stream(f"{e.path}/meta.json") as fh:
                swd = float(json.loads(fh.read().decode()).get("val_swd", float("inf")))
        except (OSError, ValueError):
            continue
        if swd < best_swd or best is None:
            best, best_swd = e.path, swd
    dest_root = move_to or run_dir
    dest = f"{dest_root}/best"
    if best is not None and best != dest:
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(best, dest, source_filesystem=fs, destination_filesystem=fs)
    if move_to:
        fs.delete_dir(run_dir)
    else:
        for e in entries:
            if e.base_name == "best":
                continue
            fs.delete_dir(e.path) if e.type == pafs.FileType.Directory else fs.delete_file(e.path)
    return dest if best is not None else None
