"""The train stage's params: the ``train:`` defaults (the one place they live) and the validation of a run's params."""

from __future__ import annotations

import copy
from pathlib import Path

from ots.errors import ConfigError

TRAIN_DEFAULTS: dict = {
    "dataset": None,            # dataset URI; None = data.output
    "steps": 60,                # target number of potential steps
    "batch_size": 8,            # per worker
    "lr_crop": 16,
    "hr_crop": 64,
    "checkpoint_every": 20,
    "keep_best_k": 2,
    "max_failures": 2,          # restarts after transient failures (preempted nodes: not counted, no limit)
    "num_workers": 1,
    "use_gpu": False,
    "resources_per_worker": None,  # e.g. {"CPU": 2} or {"CPU": 8, "GPU": 1}
    "storage_path": "outputs/ray",
    "run_name": None,           # Ray run name; None = <solver>-<time>-<mlflow run id>
    "fresh": False,             # start a new run even when an unfinished run of this config could resume
    "log_every": 5,
    "image_every": 20,
    "image_count": 4,           # fixed train crops in the image grid
    "val_pairs": 4,             # fixed val crops in the image grid
    "val_images": 0,            # val images scored at every checkpoint (SWD selects the best map); 0 = all
    # divergence: val SWD worse than bicubic's by more than `tolerance` (relative) for `patience` validations in a
    # row, or the transport cost above `max_cost` -> stop, keep the best map
    "guard": {"patience": 3, "tolerance": 0.05, "max_cost": 1.0},
    "output_dir": "outputs/train",
    # numbers for `dvc metrics` / `dvc plots` (git-tracked: `metrics/` in params.yaml; None = not written): the run's
    # summary (JSON) and its validation curves (CSV: step, val SWD/PSNR and bicubic's)
    "summary": None,
    "curves": None,
    "mlflow": {"tracking_uri": None, "experiment": "ots"},
    "progress": True,
    "overrides": None,          # a YAML of params overrides (e.g. outputs/tune/best_params.yaml), deep-merged first
    "cluster": None,            # Ray job server (http://head:8265): the stage runs as a job there (pipelines.cluster);
                                # None = $RAY_ADDRESS when it is http(s)://, else here
}


# -- validation -----------------------------------------------------------------------------------------------
def resolve(params: dict) -> dict:
    """Validate and complete params (returns a deep copy with a full ``train`` section)."""
    from ots.models import check_sizes

    params = copy.deepcopy(params)
    params.pop("baseline", None)  # the GAN baseline's overrides: pipelines.baseline merges them, not this run
    train = params.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError("train section must be a mapping")
    if train.get("overrides"):  # e.g. the tune stage's best_params.yaml: deep-merged over params
        from pipelines.params import deep_merge, load_params

        params = deep_merge(params, load_params(train["overrides"]))
        train = params["train"]
    check_params(params)
    mlf = {**TRAIN_DEFAULTS["mlflow"], **(train.get("mlflow") or {})}
    guard = {**TRAIN_DEFAULTS["guard"], **(train.get("guard") or {})}
    train = {**TRAIN_DEFAULTS, **train, "mlflow": mlf, "guard": guard}
    if not train["dataset"]:
        train["dataset"] = (params.get("data") or {}).get("output") or "data/demo"
    for k in ("steps", "batch_size", "checkpoint_every", "keep_best_k", "num_workers", "log_every"):
        if not _integer(train[k]) or train[k] < 1:
            raise ConfigError(f"train.{k} must be an integer >= 1, got {train[k]!r}")
    if train["cluster"] is not None and not str(train["cluster"]).startswith(("http://", "https://")):
        raise ConfigError(f"train.cluster must be a Ray job server address (http://head:8265) or null, got "
                          f"{train['cluster']!r}")
    if not isinstance(train["fresh"], bool):
        raise ConfigError(f"train.fresh must be true or false, got {train['fresh']!r}")
    for k in ("max_failures", "image_every", "image_count", "val_pairs", "val_images"):
        if not _integer(train[k]) or train[k] < 0:
            raise ConfigError(f"train.{k} must be an integer >= 0, got {train[k]!r}")
    model = params.get("model") or {}
    if "map" not in model or "potential" not in model:
        raise ConfigError("params need model.map and model.potential")
    check_sizes(model["map"], model["potential"], int(train["lr_crop"]), int(train["hr_crop"]))
    if not _integer(guard["patience"]) or guard["patience"] < 0:
        raise ConfigError(f"train.guard.patience must be an integer >= 0 (0 = off), got {guard['patience']!r}")
    solver_config(dict(params.get("solver") or {}))  # validates
    params["train"] = train
    params.setdefault("seed", 0)
    return params


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's `true` is not a step count


def check_params(params: dict) -> None:
    """The train stage's sections against their defaults (:mod:`pipelines.params_schema`): ``train`` (open:
    ``resources_per_worker``), ``solver`` (:class:`ots.solver_config.SolverConfig`'s fields), ``model.map`` /
    ``model.potential`` (their architecture's constructor arguments) and ``seed``."""
    import inspect

    from ots.models import MAPS, POTENTIALS
    from ots.solver_config import SolverConfig
    from pipelines.params_schema import check_keys, check_sections, dataclass_defaults

    check_sections({k: v for k, v in params.items() if k != "dataset"})  # `dataset`: the driver's identity
    check_keys(params.get("train"), TRAIN_DEFAULTS, "train", open_keys=("train.resources_per_worker",))
    check_keys(params.get("solver"), dataclass_defaults(SolverConfig), "solver")
    model = params.get("model") or {}
    check_keys(model, {"map": {}, "potential": {}}, "model", open_keys=("model.map", "model.potential"))
    for part, registry in (("map", MAPS), ("potential", POTENTIALS)):
        cfg = model.get(part)
        if isinstance(cfg, dict) and cfg.get("arch") in registry:  # an unknown arch: the builder's one line
            sig = inspect.signature(registry[cfg["arch"]].__init__).parameters.values()
            known = {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in sig
                     if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
            check_keys(cfg, {"arch": "", **known}, f"model.{part}")


def solver_config(solver: dict):
    """params.yaml's ``solver:`` section as a validated SolverConfig (finiteness is checked by the worker loop)."""
    from ots.solver_config import SolverConfig

    return SolverConfig.from_dict({**solver, "check_every": 0})


def abs_local(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())
