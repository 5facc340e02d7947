"""The solvers: the OTS step (sup_f inf_T) and the content-regularized GAN baseline (inf_T sup_f).

OTS solves   sup_f inf_T  E_P[ c(x, T(x)) - f(T(x)) ] + E_Q[ f(y) ]
with an unconstrained potential f: k_T map updates (inner inf over T, each on a fresh LR batch), then one
potential update (outer sup over f). No gradient penalty, no clipping: f is a Lagrange multiplier for T#P = Q.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import nn

from ots.config import ModelConfig, SolverConfig
from ots.errors import CheckpointError, ConfigError, NonFiniteLossError, one_line
from ots.models.wrapping import unwrap

Batches = Callable[[], torch.Tensor]  # each call returns a fresh batch


@contextlib.contextmanager
def frozen(module: nn.Module):
    """No parameter gradients for `module` inside the block (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class _Solver:
    """What both solvers share: device placement, optimizers, DDP, autocast, finiteness watch, state."""

    TERMS: tuple[str, ...] = ()

    def __init__(self, T: nn.Module, f: nn.Module, cost: nn.Module, reference: nn.Module,
                 config: SolverConfig, device: str | torch.device | None = None, distributed: bool | None = None,
                 map_config: dict | None = None):
        if not isinstance(config, SolverConfig):  # validated once, where params were read (ots.config)
            raise TypeError(f"a solver takes a SolverConfig, got {type(config).__name__}")
        self.cfg = config
        self.map_config = map_config  # how to rebuild the map from a checkpoint (set by build_solver)
        self.device = torch.device(device) if device is not None else _default_device()
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        self.T, self.f = (m.to(self.device, memory_format=fmt) for m in (T, f))
        self.cost = cost.to(self.device).eval()
        self.reference = reference.to(self.device)
        fused = self.cfg.fused if self.cfg.fused is not None else self.device.type == "cuda"
        adam = dict(betas=self.cfg.betas, fused=True) if fused else dict(betas=self.cfg.betas)
        self.opt_T = torch.optim.Adam(self.T.parameters(), lr=self.cfg.lr_map, **adam)
        self.opt_f = torch.optim.Adam(self.f.parameters(), lr=self.cfg.lr_potential, **adam)
        # Plain (possibly compiled) networks for passes that need no gradient sync; DDP wrappers for training.
        self.T_net = torch.compile(self.T) if self.cfg.compile else self.T
        self.f_net = torch.compile(self.f) if self.cfg.compile else self.f
        if distributed is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.T_train, self.f_train = DDP(self.T_net, device_ids=ids), DDP(self.f_net, device_ids=ids)
        else:
            self.T_train, self.f_train = self.T_net, self.f_net
        self.step_count = 0  # outer steps done
        # The EMA of the map is what is evaluated and exported when kept: same objective, less step noise.
        self.T_ema = copy.deepcopy(self.T).eval().requires_grad_(False) if self.cfg.ema else None
        self.crop_hr = self.cfg.margin * int(getattr(unwrap(self.T), "scale", 1))
        self._first_bad = torch.full((len(self.TERMS),), -1, dtype=torch.long, device=self.device)

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def map_for_eval(self) -> nn.Module:
        """The map to evaluate and export: the EMA when kept, else T itself."""
        return self.T_ema if self.T_ema is not None else unwrap(self.T)

    def inner(self, t: torch.Tensor) -> torch.Tensor:
        """Cut the margin off a mapped crop: the cost and the potential see only pixels with real context.

        R(x) is the bicubic of a *crop* (replicated at its edge) while real HR crops have real surroundings;
        without the margin an unconstrained potential can tell the two apart by their borders alone."""
        m = self.crop_hr
        return t[..., m:-m, m:-m] if m else t

    def seen(self, t: torch.Tensor) -> torch.Tensor:
        """What the potential sees of an HR crop: the crop plus instance noise.

        Adding the same Gaussian noise to T(x) and y leaves the solution unchanged (T#P * N = Q * N iff
        T#P = Q: a Gaussian's characteristic function has no zeros) and f is not constrained -- but the map
        follows the gradient of the smoothed potential f * N, which has no high-frequency adversarial ridges."""
        return t + self.cfg.noise * torch.randn_like(t) if self.cfg.noise else t

    def transport_cost(self, x: torch.Tensor, Tx: torch.Tensor) -> torch.Tensor:
        """Mean cost c(R(x), T(x)) in fp32, outside autocast (bf16 would quantise a small number)."""
        with torch.autocast(self.device.type, enabled=False):
            return self.cost(self.inner(self.reference(x).float()), self.inner(Tx).float()).mean()

    def update_ema(self) -> None:
        if self.T_ema is not None:
            with torch.no_grad():
                for e, p in zip(self.T_ema.parameters(), unwrap(self.T).parameters()):
                    e.lerp_(p.detach(), 1.0 - self.cfg.ema)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def prepare(self, batch: torch.Tensor, what: str) -> torch.Tensor:
        """Validate on the host (no device sync) and move to the device in the training memory format."""
        if not isinstance(batch, torch.Tensor) or batch.dim() < 2:
            raise ConfigError(f"{what} batch must be a tensor (B, ...), got {type(batch).__name__}")
        if batch.shape[0] == 0:
            raise ConfigError(f"{what} batch is empty")
        if batch.device.type == "cpu" and not torch.isfinite(batch).all():
            raise ConfigError(f"{what} batch contains NaN or inf values")
        batch = batch.to(self.device, non_blocking=True)
        if batch.dim() == 4 and self.cfg.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _watch(self, **losses: torch.Tensor) -> None:
        """Remember (on the device, without syncing) the first outer step at which each term went non-finite."""
        for i, term in enumerate(self.TERMS):
            bad = ~torch.isfinite(losses[term].detach().float())
            cur = self._first_bad[i]
            self._first_bad[i] = torch.where(bad & (cur < 0), self.step_count, cur)
        if self.cfg.check_every and self.step_count % self.cfg.check_every == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """One host sync: raise if any loss term has been NaN/inf, naming the step and the term."""
        for term, step in zip(self.TERMS, self._first_bad.tolist()):
            if step >= 0:
                raise NonFiniteLossError(f"non-finite {term} at step {step} ({type(self).__name__})")

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "map": unwrap(self.T).state_dict(),
            "map_ema": self.T_ema.state_dict() if self.T_ema is not None else None,
            "potential": unwrap(self.f).state_dict(),
            "opt_map": self.opt_T.state_dict(),
            "opt_potential": self.opt_f.state_dict(),
            "step": self.step_count,
            "reference": self.reference.state() if hasattr(self.reference, "state") else {},
            "solver": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.cfg).items()},
            "map_config": self.map_config,
            "kind": type(self).__name__,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            unwrap(self.T).load_state_dict(state["map"])
            unwrap(self.f).load_state_dict(state["potential"])
            self.opt_T.load_state_dict(state["opt_map"])
            self.opt_f.load_state_dict(state["opt_potential"])
            if self.T_ema is not None:
                self.T_ema.load_state_dict(state.get("map_ema") or state["map"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint does not fit these networks: {one_line(e, 300)}") from e
        self.step_count = int(state["step"])
        if hasattr(self.reference, "load_state"):
            self.reference.load_state(state.get("reference", {}), self.T)


class OTSSolver(_Solver):
    """Neural optimal transport: k_T map updates, then one potential update."""

    TERMS = ("loss_map", "loss_potential")

    def step(self, next_lr: Batches, next_hr: Batches) -> dict[str, torch.Tensor]:
        T, f, R = self.T_train, self.f_train, self.reference

        # inf_T: k_T map updates on fresh LR batches; f is held fixed (no gradient for its parameters).
        # During the warm-up only f learns (T stays at R), so T first follows a potential that means something.
        warming = self.step_count < self.cfg.warmup
        cost = loss_map = torch.zeros((), device=self.device)
        with frozen(self.f):
            for _ in range(0 if warming else self.cfg.k_T):
                x = self.prepare(next_lr(), "LR")
                with self.autocast():
                    Tx = T(x)
                    potential = self.f_net(self.seen(self.inner(Tx))).float().mean()
                cost = self.transport_cost(x, Tx)
                loss_map = cost - potential
                self.opt_T.zero_grad(set_to_none=True)
                loss_map.backward()
                self.opt_T.step()
                self.update_ema()

        # sup_f: one potential update on a fresh LR batch and a fresh HR batch.
        x, y = self.prepare(next_lr(), "LR"), self.prepare(next_hr(), "HR")
        with torch.no_grad(), self.autocast():
            Tx = self.seen(self.inner(self.T_net(x)))
        with self.autocast():
            loss_potential = f(Tx).float().mean() - f(self.seen(y)).float().mean()
        self.opt_f.zero_grad(set_to_none=True)
        loss_potential.backward()
        self.opt_f.step()

        self.step_count += 1
        if hasattr(R, "maybe_anchor"):
            R.maybe_anchor(self.T, self.step_count)
        self._watch(loss_map=loss_map, loss_potential=loss_potential)
        return {"loss_map": loss_map.detach(), "loss_potential": loss_potential.detach(), "cost": cost.detach()}


class RegularizedGAN(_Solver):
    """Content-regularized WGAN-GP baseline: inf_T sup_f λ·E_P[c(x, T(x))] − E_P[f(T(x))] + E_Q[f(y)].

    k_T critic updates (with gradient penalty) per map update. Biased: its T need not push P to Q.
    """

    TERMS = ("loss_map", "loss_critic")

    def step(self, next_lr: Batches, next_hr: Batches) -> dict[str, torch.Tensor]:
        T, f = self.T_train, self.f_train

        # sup_f: k_T critic updates, f kept ~1-Lipschitz by the gradient penalty.
        for _ in range(self.cfg.k_T):
            x, y = self.prepare(next_lr(), "LR"), self.prepare(next_hr(), "HR")
            with torch.no_grad(), self.autocast():
                Tx = self.inner(self.T_net(x))
            with self.autocast():
                loss_critic = f(Tx).mean() - f(y).mean() + self.cfg.gp * gradient_penalty(f, y, Tx.to(y.dtype))
            self.opt_f.zero_grad(set_to_none=True)
            loss_critic.backward()
            self.opt_f.step()

        # inf_T: one map update (skipped during the warm-up).
        cost = loss_map = torch.zeros((), device=self.device)
        if self.step_count >= self.cfg.warmup:
            x = self.prepare(next_lr(), "LR")
            with frozen(self.f):
                with self.autocast():
                    Tx = T(x)
                    critic = self.f_net(self.inner(Tx)).float().mean()
                cost = self.transport_cost(x, Tx)
                loss_map = self.cfg.lam * cost - critic
            self.opt_T.zero_grad(set_to_none=True)
            loss_map.backward()
            self.opt_T.step()
            self.update_ema()

        self.step_count += 1
        self._watch(loss_map=loss_map, loss_critic=loss_critic)
        return {"loss_map": loss_map.detach(), "loss_critic": loss_critic.detach(), "cost": cost.detach()}


def gradient_penalty(f: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(‖∇f(x̂)‖ − 1)²] on random interpolates x̂ (Gulrajani et al., 2017)."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    t = torch.rand(shape, device=real.device, dtype=real.dtype)
    xi = (t * real + (1 - t) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xi).sum(), xi, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


SOLVERS = {"ots": OTSSolver, "gan": RegularizedGAN}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

__all__ = ["SOLVERS", "OTSSolver", "RegularizedGAN", "frozen", "gradient_penalty"]


def build_solver(model: ModelConfig, solver: SolverConfig, device: str | torch.device | None = None,
                 distributed: bool | None = None, backbones: dict | None = None, seed: int | None = None) -> _Solver:
    """The one builder (pipeline, ``ots fit``, tune trials, benchmarks): map + potential from ``model``, cost and
    reference map from ``solver``; the map's config travels with the solver into its checkpoints."""
    from ots.costs import ReferenceMap, WeightedCost
    from ots.models import build_map, build_potential

    if not isinstance(solver, SolverConfig) or not isinstance(model, ModelConfig):  # checked where params were read
        raise TypeError(f"build_solver takes a ModelConfig and a SolverConfig, got {type(model).__name__}, "
                        f"{type(solver).__name__}")
    if seed is not None:
        torch.manual_seed(seed)
    T, f = build_map(model.map), build_potential(model.potential)
    reference = ReferenceMap(model.scale, solver.anchor_every)
    return SOLVERS[solver.kind](T, f, WeightedCost(solver.cost, backbones), reference, solver, device=device,
                                distributed=distributed, map_config=dict(model.map))
