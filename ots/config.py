"""Typed configs, resolved once: params.yaml's ``model``, ``solver``, ``train``, ``data`` sections and ``seed``.

:meth:`OTSConfig.from_params` checks a params document once (every key known, every value typed: the shape check
of :mod:`ots.params_schema`; then ranges and crop sizes) and returns frozen dataclasses, each default written
here only (a network's in its constructor). They pickle, so the train
driver hands them across the Ray seam as they are; the builder, solver, checkpoints and ``ots fit`` take them and
never read the params.yaml layout. :meth:`OTSConfig.to_params` gives the layout back (MLflow params, the resume
hash, the copy stored in a checkpoint).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field, fields
from typing import Any

from ots.data.config import DataConfig
from ots.errors import ConfigError

__all__ = ["SOLVER_KINDS", "DataConfig", "GuardConfig", "MlflowConfig", "ModelConfig", "OTSConfig", "SolverConfig",
           "TrainConfig"]

SOLVER_KINDS = ("ots", "gan")
@dataclass(frozen=True)
class SolverConfig:
    """Everything the solver needs, defaults written once (params.yaml's ``solver:`` section, validated)."""

    kind: str = "ots"             # "ots" (sup_f inf_T) or "gan" (the content-regularized WGAN-GP baseline)
    cost: Any = "mse"             # a cost name or {name: weight} (ots.costs.parse_cost_spec)
    anchor_every: int = 0         # re-anchor R to a frozen copy of T every N potential steps (0 = never)
    k_T: int = 15                 # map updates per potential update (OTS) / critic updates per map update (GAN)
    lr_map: float = 1e-4
    lr_potential: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    margin: int = 0               # LR px of context around each LR crop, cut from T(x) and R(x) before cost and f
    ema: float = 0.0              # decay of an exponential moving average of the map (0 = none)
    warmup: int = 0               # potential-only updates before the map first moves
    noise: float = 0.0            # std of instance noise added to every input of the potential (0 = none)
    bf16: bool = False            # bf16 autocast for forward passes (the transport cost stays fp32)
    channels_last: bool = False   # NHWC memory format for conv nets
    compile: bool = False         # torch.compile both networks
    fused: bool | None = None     # fused Adam; None = when the device supports it (CUDA)
    check_every: int = 1          # host-sync finiteness check every N steps (0 = only when asked)
    # GAN baseline only
    lam: float = 1.0              # weight of the content cost (the GAN's λ)
    gp: float = 10.0              # WGAN-GP gradient penalty weight

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SolverConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown solver option(s): {', '.join(unknown)}")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        for name in ("lr_map", "lr_potential", "ema", "lam", "gp", "noise"):
            if name in d:  # YAML 1.1 reads `1e-4` (no dot) as a string: accept it, refuse non-numbers clearly
                try:
                    d[name] = float(d[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"solver.{name} must be a number, got {d[name]!r}") from None
        cfg = cls(**d)
        if cfg.kind not in SOLVER_KINDS:
            raise ConfigError(f"solver.kind must be one of {', '.join(SOLVER_KINDS)}, got {cfg.kind!r}")
        from ots.costs import parse_cost_spec

        parse_cost_spec(cfg.cost)
        if cfg.k_T < 1:
            raise ConfigError(f"k_T must be >= 1, got {cfg.k_T}")
        if not (cfg.lr_map > 0 and cfg.lr_potential > 0):
            raise ConfigError(f"learning rates must be > 0, got {cfg.lr_map}, {cfg.lr_potential}")
        for name in ("margin", "warmup", "anchor_every"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
                raise ConfigError(f"solver.{name} must be an integer >= 0, got {getattr(cfg, name)!r}")
        if not cfg.noise >= 0.0:
            raise ConfigError(f"solver.noise must be >= 0, got {cfg.noise}")
        if not 0.0 <= cfg.ema < 1.0:
            raise ConfigError(f"solver.ema must be in [0, 1), got {cfg.ema}")
        return cfg


def _constructor_defaults(cls) -> dict:
    """A network's constructor arguments as ``{name: default}`` (None where it has none): its config's keys."""
    sig = inspect.signature(cls.__init__).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in sig
            if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


@dataclass(frozen=True)
class ModelConfig:
    """The map and the potential: ``{"arch": ..., <constructor arguments>}`` each (``ots.models`` builds them)."""

    map: dict
    potential: dict

    @property
    def scale(self) -> int:
        """The map's upscaling factor: its config's ``scale``, else its constructor's default (1 without one)."""
        from ots.models import MAPS

        return int(self.map.get("scale", _constructor_defaults(MAPS[self.map["arch"]]).get("scale") or 1))

    @classmethod
    def from_dict(cls, model: Any) -> ModelConfig:
        from ots.models import MAPS, POTENTIALS
        from ots.params_schema import check_keys

        check_keys(model, {"map": {}, "potential": {}}, "model", open_keys=("model.map", "model.potential"))
        model = model or {}
        if not isinstance(model.get("map"), dict) or not isinstance(model.get("potential"), dict):
            raise ConfigError("params need model.map and model.potential")
        for part, registry in (("map", MAPS), ("potential", POTENTIALS)):
            cfg = model[part]
            if cfg.get("arch") not in registry:
                raise ConfigError(f"unknown {part} architecture {cfg.get('arch')!r}; choose one of "
                                  f"{', '.join(registry)}")
            check_keys(cfg, {"arch": "", **_constructor_defaults(registry[cfg["arch"]])}, f"model.{part}")
        return cls(map=dict(model["map"]), potential=dict(model["potential"]))


@dataclass(frozen=True)
class GuardConfig:
    """Divergence guard: val SWD worse than bicubic's by more than ``tolerance`` (relative) for ``patience``
    validations in a row (0 = off), or the transport cost above ``max_cost`` (0 = off) -> stop, keep the best."""

    patience: int = 3
    tolerance: float = 0.05
    max_cost: float = 1.0


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None    # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "ots"


@dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` section. The loop's numbers are used by ``ots fit`` and the Ray worker alike; the Ray/MLflow
    fields are plain values here (``pipelines/`` acts on them)."""

    dataset: str = ""                  # dataset URI; empty = data.output
    steps: int = 60                    # target number of potential steps
    batch_size: int = 8                # per worker
    lr_crop: int = 16
    hr_crop: int | None = None         # None = lr_crop x the map's scale
    checkpoint_every: int = 20         # the pipeline validates (and may keep the map) at each checkpoint
    eval_every: int = 25               # `ots fit`'s validation cadence
    keep_best_k: int = 2
    max_failures: int = 2              # restarts after transient failures (preempted nodes: not counted)
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict | None = None   # e.g. {"CPU": 2} or {"CPU": 8, "GPU": 1}
    storage_path: str = "outputs/ray"
    run_name: str | None = None        # Ray run name; None = <solver>-<time>-<mlflow run id>
    fresh: bool = False                # start a new run even when an unfinished run of this config could resume
    log_every: int = 5
    image_every: int = 20
    image_count: int = 4               # fixed train crops in the image grid
    val_pairs: int = 4                 # fixed val crops in the image grid
    val_images: int = 0                # val images scored at every checkpoint (SWD selects the best map); 0 = all
    guard: GuardConfig = field(default_factory=GuardConfig)
    output_dir: str = "outputs/train"
    # numbers for `dvc metrics` / `dvc plots` (git-tracked files; None = not written): the run's summary (JSON)
    # and its validation curves (CSV: step, val SWD/PSNR and bicubic's)
    summary: str | None = None
    curves: str | None = None
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    progress: bool = True
    overrides: str | None = None       # a YAML of params overrides (the tune stage's best_params.yaml), merged first
    cluster: str | None = None         # Ray job server (http://head:8265): the stage runs as a job there

    POSITIVE = ("steps", "batch_size", "checkpoint_every", "eval_every", "keep_best_k", "num_workers", "log_every")
    NON_NEGATIVE = ("max_failures", "image_every", "image_count", "val_pairs", "val_images")

    @classmethod
    def defaults(cls) -> dict:
        """The section's keys and defaults as params.yaml writes them (nested sections as mappings)."""
        from ots.params_schema import dataclass_defaults

        return {**dataclass_defaults(cls), "guard": dataclass_defaults(GuardConfig),
                "mlflow": dataclass_defaults(MlflowConfig)}

    @classmethod
    def from_dict(cls, train: Any, dataset: str) -> TrainConfig:
        """The section over its defaults, ``dataset`` (data.output) where it names none; one line per bad value."""
        from ots.params_schema import check_keys, given

        check_keys(train, cls.defaults(), "train", open_keys=("train.resources_per_worker",))
        train = given(cls, train)
        guard = GuardConfig(**(train.pop("guard", None) or {}))
        mlflow = MlflowConfig(**(train.pop("mlflow", None) or {}))
        cfg = cls(**{**train, "dataset": train.get("dataset") or dataset, "guard": guard, "mlflow": mlflow})
        for k in cls.POSITIVE:
            if not _integer(getattr(cfg, k)) or getattr(cfg, k) < 1:
                raise ConfigError(f"train.{k} must be an integer >= 1, got {getattr(cfg, k)!r}")
        for k in cls.NON_NEGATIVE:
            if not _integer(getattr(cfg, k)) or getattr(cfg, k) < 0:
                raise ConfigError(f"train.{k} must be an integer >= 0, got {getattr(cfg, k)!r}")
        if cfg.cluster is not None and not str(cfg.cluster).startswith(("http://", "https://")):
            raise ConfigError(f"train.cluster must be a Ray job server address (http://head:8265) or null, got "
                              f"{cfg.cluster!r}")
        if not _integer(guard.patience) or guard.patience < 0:
            raise ConfigError(f"train.guard.patience must be an integer >= 0 (0 = off), got {guard.patience!r}")
        return cfg


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's `true` is not a step count


@dataclass(frozen=True)
class OTSConfig:
    """One training run, every section typed and checked once."""

    model: ModelConfig
    solver: SolverConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict) -> OTSConfig:
        """params.yaml's sections (others are ignored: each stage reads its own) as typed configs."""
        from ots.models import check_sizes
        from ots.params_schema import check_keys, check_value, dataclass_defaults

        seed, data, model, solver, train = (params.get(name) for name in ("seed", "data", "model", "solver", "train"))
        check_value(seed, 0, "seed")
        data = DataConfig.from_dict(data)
        model = ModelConfig.from_dict(model)
        check_keys(solver, dataclass_defaults(SolverConfig), "solver")
        solver = SolverConfig.from_dict({**(solver or {}), "check_every": 0})
        train = TrainConfig.from_dict(train, data.output)
        if train.hr_crop is None:
            train = dataclasses.replace(train, hr_crop=train.lr_crop * model.scale)
        check_sizes(model.scale, model.potential, train.lr_crop, train.hr_crop)
        return cls(model=model, solver=solver, train=train, data=data, seed=int(seed or 0))

    def replace(self, **sections) -> OTSConfig:
        """A copy with sections replaced; ``train={...}`` replaces fields of the train section."""
        if isinstance(sections.get("train"), dict):
            sections["train"] = dataclasses.replace(self.train, **sections["train"])
        return dataclasses.replace(self, **sections)

    def to_params(self) -> dict:
        """The params.yaml layout of this config (defaults filled in)."""
        out = dataclasses.asdict(self)
        out["solver"].pop("check_every", None)
        out["solver"]["betas"] = list(out["solver"]["betas"])
        return out
