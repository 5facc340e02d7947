"""One builder: typed configs in, a ready solver out (used by the pipeline, ``ots fit`` and the benchmarks)."""

from __future__ import annotations

import torch

from ots.costs import ReferenceMap, WeightedCost
from ots.models import build_map, build_potential
from ots.solver import SOLVERS
from ots.solver_config import SolverConfig


def build_solver(model: dict, solver: SolverConfig | dict, device: str | torch.device | None = None,
                 distributed: bool | None = None, backbones: dict | None = None, seed: int | None = None):
    """Map + potential from ``model`` ({"map": ..., "potential": ...}), cost and reference map from ``solver``."""
    cfg = solver if isinstance(solver, SolverConfig) else SolverConfig.from_dict(solver)
    if seed is not None:
        torch.manual_seed(seed)
    T, f = build_map(model["map"]), build_potential(model["potential"])
    scale = int(getattr(T, "scale", model["map"].get("scale", 4)))
    return SOLVERS[cfg.kind](T, f, WeightedCost(cfg.cost, backbones), ReferenceMap(scale, cfg.anchor_every), cfg,
                             device=device, distributed=distributed)
