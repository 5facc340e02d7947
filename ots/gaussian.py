"""A case with a known answer: Gaussian P -> Q under the quadratic cost, whose OT map is linear.

    T*(x) = m2 + A (x - m1),  A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}

OTS should recover T* (small L2-UVP); the content-regularized GAN should not, for any λ: either T is far
from T* or T#P is far from Q (the bias the paper proves).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ots.models.mlp import MLPMap, MLPPotential
from ots.solver import SOLVERS

GAN_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigendecomposition: stable, real)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


@dataclass
class GaussianPair:
    m1: np.ndarray
    S1: np.ndarray
    m2: np.ndarray
    S2: np.ndarray

    @classmethod
    def random(cls, dim: int, seed: int = 0, eig_range: tuple[float, float] = (0.5, 2.0)) -> GaussianPair:
        rng = np.random.default_rng(seed)

        def cov():
            q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
            eig = np.exp(rng.uniform(np.log(eig_range[0]), np.log(eig_range[1]), size=dim))
            return (q * eig) @ q.T

        return cls(rng.normal(size=dim), cov(), rng.normal(size=dim), cov())

    @property
    def dim(self) -> int:
        return len(self.m1)

    def ot_matrix(self) -> np.ndarray:
        r1 = sqrtm_psd(self.S1)
        r1_inv = np.linalg.inv(r1)
        return r1_inv @ sqrtm_psd(r1 @ self.S2 @ r1) @ r1_inv

    def sampler(self, which: str, batch: int, generator: torch.Generator):
        m, S = (self.m1, self.S1) if which == "P" else (self.m2, self.S2)
        mean = torch.tensor(m, dtype=torch.float32)
        chol = torch.tensor(np.linalg.cholesky(S), dtype=torch.float32)
        return lambda: mean + torch.randn(batch, len(m), generator=generator) @ chol.T


def bures_wasserstein2(m_a, S_a, m_b, S_b) -> float:
    """Squared W2 between two Gaussians (the Bures-Wasserstein distance)."""
    r = sqrtm_psd(S_a)
    return float(np.sum((m_a - m_b) ** 2) + np.trace(S_a) + np.trace(S_b) - 2 * np.trace(sqrtm_psd(r @ S_b @ r)))


@torch.no_grad()
def evaluate_map(T: nn.Module, pair: GaussianPair, n: int = 100_000, seed: int = 1) -> dict[str, float]:
    """L2-UVP and cos against T*, and BW²-UVP of T#P (empirical mean/covariance) against Q, in percent."""
    g = torch.Generator().manual_seed(seed)
    x = pair.sampler("P", n, g)().double()
    A = torch.tensor(pair.ot_matrix())
    t_star = torch.tensor(pair.m2) + (x - torch.tensor(pair.m1)) @ A.T
    t = T(x.float()).double()
    var_q = float(np.trace(pair.S2))
    l2_uvp = 100 * float((t - t_star).square().sum(1).mean()) / var_q
    d, d_star = t - x, t_star - x
    norm = torch.sqrt(d.square().sum(1).mean() * d_star.square().sum(1).mean())
    cos = float((d * d_star).sum(1).mean() / norm) if norm > 0 else None  # undefined for T = identity
    tn = t.numpy()
    bw = bures_wasserstein2(tn.mean(0), np.cov(tn, rowvar=False), pair.m2, pair.S2)
    return {"l2_uvp": l2_uvp, "cos": cos, "bw2_uvp": 100 * bw / var_q}


class SquaredEuclidean(nn.Module):
    """c(x, y) = ½‖x − y‖² per sample."""

    def forward(self, ref, y):
        return 0.5 * (y - ref).square().sum(-1)


class Identity(nn.Module):
    def forward(self, x):
        return x


@dataclass
class GaussianRun:
    dim: int = 16
    steps: int = 3000          # outer steps
    k: int = 10                # OTS: map steps per potential step; GAN: critic steps per map step
    batch: int = 1024
    hidden: int = 128
    depth: int = 3
    lr: float = 1e-3
    seed: int = 0


def train(kind: str, pair: GaussianPair, run: GaussianRun, lam: float = 1.0, progress: bool = False):
    """Train OTS or the GAN on `pair` with identical networks, optimizer and update budget."""
    torch.manual_seed(run.seed)
    T = MLPMap(pair.dim, run.hidden, run.depth)
    f = MLPPotential(pair.dim, run.hidden, run.depth)
    config = {"k_T": run.k, "lr_map": run.lr, "lr_potential": run.lr, "betas": (0.5, 0.9), "lam": lam,
              "check_every": 100}
    solver = SOLVERS[kind](T, f, SquaredEuclidean(), Identity(), config, device="cpu")
    g = torch.Generator().manual_seed(run.seed + 1)
    next_p, next_q = pair.sampler("P", run.batch, g), pair.sampler("Q", run.batch, g)
    steps = range(run.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{kind}" + (f" λ={lam:g}" if kind == "gan" else ""), leave=False)
    for _ in steps:
        solver.step(next_p, next_q)
    solver.check_finite()
    return T.eval()


def benchmark(dim: int, run: GaussianRun | None = None, lambdas=GAN_LAMBDAS, progress: bool = True) -> dict:
    run = run or GaussianRun(dim=dim)
    pair = GaussianPair.random(dim, seed=run.seed)
    result = {"dim": dim, "run": run.__dict__, "ots": {}, "gan": {}}
    t0 = time.perf_counter()
    result["ots"] = evaluate_map(train("ots", pair, run, progress=progress), pair)
    result["ots"]["seconds"] = time.perf_counter() - t0
    for lam in lambdas:
        t0 = time.perf_counter()
        m = evaluate_map(train("gan", pair, run, lam=lam, progress=progress), pair)
        m["seconds"] = time.perf_counter() - t0
        ots = result["ots"]
        # How much worse than OTS this λ is, in the better of the two criteria (the bias: >= 3x in one of them).
        m["ratio_l2_uvp"] = m["l2_uvp"] / max(ots["l2_uvp"], 1e-12)
        m["ratio_bw2_uvp"] = m["bw2_uvp"] / max(ots["bw2_uvp"], 1e-12)
        m["worse_by"] = max(m["ratio_l2_uvp"], m["ratio_bw2_uvp"])
        result["gan"][f"{lam:g}"] = m
    result["identity"] = evaluate_map(Identity(), pair)  # the scale of "no transport at all"
    result["gan_min_worse_by"] = min((m["worse_by"] for m in result["gan"].values()), default=math.nan)
    return result


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("gaussian", help="OTS vs the regularized GAN on Gaussians with a closed-form OT map")
    p.add_argument("--dim", type=int, nargs="+", default=[16])
    p.add_argument("--steps", type=int, default=GaussianRun.steps)
    p.add_argument("--k", type=int, default=GaussianRun.k)
    p.add_argument("--batch", type=int, default=GaussianRun.batch)
    p.add_argument("--hidden", type=int, default=GaussianRun.hidden)
    p.add_argument("--lr", type=float, default=GaussianRun.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambdas", type=float, nargs="*", default=list(GAN_LAMBDAS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small matmuls: 1 is fastest)")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from ots.errors import ConfigError

    if any(d < 1 for d in args.dim) or args.steps < 1 or args.batch < 2:
        raise ConfigError("need --dim >= 1, --steps >= 1 and --batch >= 2")
    torch.set_num_threads(max(1, args.threads))
    results = []
    for dim in args.dim:
        run = GaussianRun(dim=dim, steps=args.steps, k=args.k, batch=args.batch, hidden=args.hidden, lr=args.lr,
                          seed=args.seed)
        results.append(benchmark(dim, run, tuple(args.lambdas)))
    text = json.dumps(results if len(results) > 1 else results[0], indent=2)
    if args.out:
        import os

        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".tmp", "w") as fh:
            fh.write(text + "\n")
        os.replace(args.out + ".tmp", args.out)
    print(text)
    return 0
