"""The search's typed config: the ``tune:`` section and its search space, validated before Ray starts.

``tune.space`` maps dotted params keys to one sampler each -- ``uniform``/``loguniform`` [low, high], ``randint``
[low, high) or ``choice`` [values]. A key must name an existing entry of ``solver``/``model``/``train``/``seed``
(or a known cost term under ``solver.cost``), and every bound/choice must give a valid training config.
The defaults of every other knob live here, in :class:`TuneConfig`, and nowhere else.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from ots.dotted import get_dotted, set_dotted
from ots.errors import ConfigError

SAMPLERS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None}  # sampler -> number of arguments
SECTIONS = ("solver", "model", "train", "seed")
NOT_SEARCHABLE = {"train.steps", "train.dataset", "train.mlflow", "train.overrides", "train.output_dir",
                  "train.storage_path", "train.num_workers", "train.use_gpu", "train.resources_per_worker"}
METRICS = ("swd", "fid")


@dataclass(frozen=True)
class TuneConfig:
    """The ``tune:`` section of params.yaml; a field's default is the value when the section leaves it out."""

    space: dict                     # {dotted.key: (sampler, args)}, validated; required
    metric: str = "swd"             # swd | fid (fid only when the Inception weights resolve; else swd + a note)
    num_samples: int = 8            # trials
    time_budget_s: float = 1800     # the whole search
    max_steps: int = 40             # potential steps per trial (ASHA max_t)
    report_every: int = 5           # steps between metric reports (ASHA rungs fall on multiples of grace_period)
    grace_period: int = 10          # ASHA: steps before a trial can be stopped
    reduction_factor: float = 2     # ASHA
    val_crops: int = 16             # fixed LR crops (mapped by T) and fixed, unpaired HR crops for the metric
    resources_per_trial: dict = field(default_factory=lambda: {"CPU": 1})  # Ray resource names, case-sensitive
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    storage_path: str = "outputs/tune/ray"    # a folder or s3://bucket/prefix (never a local `s3:` folder)
    output: str = "outputs/tune/best_params.yaml"  # results.json and metric_vs_step.png go next to it
    inception_weights: str | None = None      # metric=fid: None = resolved locally (hub cache / env)
    verbose: int = 1                # Ray Tune console verbosity (0-3)

    @classmethod
    def from_dict(cls, section: Any, base: dict) -> TuneConfig:
        """Validate ``section`` (the raw ``tune:`` mapping) against ``base`` (the resolved training params)."""
        from ots.params_schema import check_keys, dataclass_defaults

        if not isinstance(section, dict):
            raise ConfigError("tune section must be a mapping")
        check_keys(section, dataclass_defaults(cls), "tune", open_keys=("tune.space", "tune.resources_per_trial"))
        cfg = cls(**{**section, "space": check_space(section.get("space"), base)})
        for k in ("num_samples", "max_steps", "report_every", "grace_period", "val_crops", "verbose"):
            v = getattr(cfg, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "verbose" else 1):
                raise ConfigError(f"tune.{k} must be an integer >= {0 if k == 'verbose' else 1}, got {v!r}")
        if not _number(cfg.reduction_factor) or cfg.reduction_factor < 2:
            raise ConfigError(f"tune.reduction_factor must be >= 2, got {cfg.reduction_factor!r}")
        if not _number(cfg.time_budget_s) or cfg.time_budget_s <= 0:
            raise ConfigError(f"tune.time_budget_s must be > 0, got {cfg.time_budget_s!r}")
        if cfg.grace_period > cfg.max_steps:
            raise ConfigError(f"tune.grace_period ({cfg.grace_period}) exceeds tune.max_steps ({cfg.max_steps})")
        if cfg.metric not in METRICS:
            raise ConfigError(f"tune.metric must be 'swd' or 'fid', got {cfg.metric!r}")
        trial_resources(cfg.resources_per_trial)  # validates
        mct = cfg.max_concurrent_trials
        if mct is not None and (not isinstance(mct, int) or isinstance(mct, bool) or mct < 1):
            raise ConfigError(f"tune.max_concurrent_trials must be null or an integer >= 1, got {mct!r}")
        for k in ("storage_path", "output"):
            if not isinstance(getattr(cfg, k), str) or not getattr(cfg, k):
                raise ConfigError(f"tune.{k} must be a non-empty path, got {getattr(cfg, k)!r}")
        return cfg

    def knobs(self) -> dict:
        """Every setting but the space (for logging)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "space"}

    def space_spec(self) -> dict:
        """The space as written in params.yaml: {key: {sampler: args}}."""
        return {k: {name: args} for k, (name, args) in self.space.items()}


def resolve_tune(params: dict) -> tuple[TuneConfig, dict]:
    """(the validated search config, the base params resolved for training: the point the search starts from)."""
    from pipelines.params import run_config

    base = {k: copy.deepcopy(params[k]) for k in ("seed", "model", "solver", "train", "data") if k in params}
    if base.get("train") is None or isinstance(base["train"], dict):
        base["train"] = {**(base.get("train") or {}), "overrides": None}  # tune searches from params.yaml itself
    base = run_config(base).to_params()  # checked once, defaults filled in: what every trial starts from
    return TuneConfig.from_dict(params.get("tune") or {}, base), base


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def nest(flat: dict) -> dict:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}."""
    out: dict = {}
    for k, v in sorted(flat.items()):
        set_dotted(out, k, v)
    return out


def apply_overrides(params: dict, flat: dict) -> dict:
    """A deep copy of params with dotted keys set."""
    params = copy.deepcopy(params)
    for k, v in flat.items():
        set_dotted(params, k, v)
    return params


def to_python(v: Any) -> Any:
    """numpy scalars (from Tune's samplers) -> Python numbers, so they dump to YAML/JSON."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v


def sampled(config: dict) -> dict:
    """A trial's config (dotted key -> sampled value) in plain Python values."""
    return {k: to_python(v) for k, v in (config or {}).items()}


def check_space(space: Any, base: dict) -> dict:
    """Validate the search-space spec against the resolved params; returns {key: (sampler, args)}."""
    from ots.costs import COSTS

    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.space must be a non-empty mapping {dotted.key: {sampler: args}}")
    out = {}
    for key, spec in space.items():
        key = str(key)
        if key.split(".", 1)[0] not in SECTIONS or any(key == k or key.startswith(k + ".") for k in NOT_SEARCHABLE):
            raise ConfigError(f"tune.space: {key!r} cannot be searched (keys under {', '.join(SECTIONS)}; "
                              f"not {', '.join(sorted(NOT_SEARCHABLE))})")
        found, cur = get_dotted(base, key)
        parent, _, leaf = key.rpartition(".")
        is_cost_term = parent == "solver.cost" and isinstance(get_dotted(base, parent)[1], dict) and leaf in COSTS
        if not found and not is_cost_term:
            raise ConfigError(f"tune.space: unknown key {key!r} (not in the resolved params)")
        if found and isinstance(cur, dict):
            raise ConfigError(f"tune.space: {key!r} is a section; search one of its values")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"tune.space.{key}: expected one sampler, e.g. {{uniform: [low, high]}}, got {spec!r}")
        (name, args), = spec.items()
        if name not in SAMPLERS:
            raise ConfigError(f"tune.space.{key}: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        if not isinstance(args, list) or not args or (SAMPLERS[name] and len(args) != SAMPLERS[name]):
            want = "[low, high]" if SAMPLERS[name] else "a non-empty list of values"
            raise ConfigError(f"tune.space.{key}: {name} needs {want}, got {args!r}")
        if name != "choice":
            if not all(_number(a) for a in args) or args[0] >= args[1]:
                raise ConfigError(f"tune.space.{key}: {name} needs numbers low < high, got {args!r}")
            if name == "loguniform" and args[0] <= 0:
                raise ConfigError(f"tune.space.{key}: loguniform needs low > 0, got {args!r}")
            if name == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError(f"tune.space.{key}: randint needs integers, got {args!r}")
        out[key] = (name, args)
    # Every bound / choice must give a valid training config (sizes, solver options, cost weights).
    from pipelines.params import run_config

    for key, (name, args) in out.items():
        values = args if name == "choice" else ([args[0], args[1] - 1] if name == "randint" else args)
        for v in values:
            try:
                run_config(apply_overrides(base, {key: v}))
            except ConfigError as e:
                raise ConfigError(f"tune.space.{key}: value {v!r} is invalid: {e}") from None
    return out


def trial_resources(spec: Any) -> dict:
    """Ray resource names for one trial: ``cpu``/``gpu``/``memory`` in Ray's spelling, custom names as given
    (Ray resource names are case-sensitive: ``{node_A: 1}`` only schedules on a node that offers ``node_A``)."""
    if not isinstance(spec, dict) or not spec or not all(_number(v) and v >= 0 for v in spec.values()):
        raise ConfigError(f"tune.resources_per_trial must be a mapping like {{CPU: 1}}, got {spec!r}")
    canon = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
    out: dict = {}
    for k, v in spec.items():
        name = canon.get(str(k).lower(), str(k))
        if name in out:
            raise ConfigError(f"tune.resources_per_trial: {k!r} given twice (as {name!r})")
        out[name] = float(v)
    return out


def param_space(space: dict) -> dict:
    """The validated space as Ray Tune samplers."""
    from ray import tune as rt

    make = {"uniform": lambda a: rt.uniform(*a), "loguniform": lambda a: rt.loguniform(*a),
            "randint": lambda a: rt.randint(*a), "choice": lambda a: rt.choice(list(a))}
    return {key: make[name](args) for key, (name, args) in space.items()}
