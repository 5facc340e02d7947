"""The solvers' typed config: params.yaml's ``solver:`` section, validated once (defaults written here only)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ots.costs import parse_cost_spec
from ots.errors import ConfigError

SOLVER_KINDS = ("ots", "gan")
__all__ = ["SOLVER_KINDS", "SolverConfig"]


@dataclass
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
