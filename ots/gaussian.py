"""A case with a known answer: Gaussian P -> Q under the quadratic cost (its OT map is linear), and training on it.

    T*(x) = m2 + A (x - m1),  A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}

OTS should recover T* (small L2-UVP); the content-regularized GAN should not, for any λ: either T is far
from T* or T#P is far from Q (the bias the paper proves).

The benchmark (protocol, JSON, table, CLI ``ots bench gaussian``) is :mod:`ots.bench.gaussian`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ots.config import SolverConfig
from ots.linalg import sqrtm_psd
from ots.models.mlp import MLPMap, MLPPotential
from ots.solver import SOLVERS

EVAL_SEED = 20_261_126
EVAL_SAMPLES = 100_000
METRICS = ("l2_uvp", "cos", "bw2_uvp")
_PURPOSE = {"train": 1, "eval": 2}


def stream_seed(seed: int, purpose: str) -> int:
    """Seed of a sample stream; streams of different purposes never coincide, whatever the two seeds are."""
    return int(np.random.SeedSequence([int(seed), _PURPOSE[purpose]]).generate_state(1)[0])


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


def _eval_samples(pair: GaussianPair, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(stream_seed(seed, "eval"))
    x = pair.sampler("P", n, g)().double()
    t_star = torch.tensor(pair.m2) + (x - torch.tensor(pair.m1)) @ torch.tensor(pair.ot_matrix()).T
    return x, t_star


@torch.no_grad()
def evaluate_map(T: nn.Module, pair: GaussianPair, n: int = EVAL_SAMPLES, seed: int = EVAL_SEED) -> dict[str, float]:
    """L2-UVP and cos against T*, and BW²-UVP of T#P (empirical mean/covariance) against Q, in percent.

    The samples come from the evaluation stream of `seed`, never from a training stream."""
    x, t_star = _eval_samples(pair, n, seed)
    t = T(x.float()).double()
    var_q = float(np.trace(pair.S2))
    l2_uvp = 100 * float((t - t_star).square().sum(1).mean()) / var_q
    d, d_star = t - x, t_star - x
    norm = torch.sqrt(d.square().sum(1).mean() * d_star.square().sum(1).mean())
    cos = float((d * d_star).sum(1).mean() / norm) if norm > 0 else None  # undefined for T = identity
    tn = t.numpy()
    bw = bures_wasserstein2(tn.mean(0), np.cov(tn, rowvar=False), pair.m2, pair.S2)
    return {"l2_uvp": l2_uvp, "cos": cos, "bw2_uvp": 100 * bw / var_q}


@torch.no_grad()
def ot_displacement(pair: GaussianPair, n: int = EVAL_SAMPLES, seed: int = EVAL_SEED) -> np.ndarray:
    """‖T*(x) − x‖ on the evaluation samples."""
    x, t_star = _eval_samples(pair, n, seed)
    return (t_star - x).norm(dim=1).numpy()


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
    steps: int = 500           # outer steps (OTS, and the GAN at "equal steps")
    k: int = 10                # OTS: map steps per potential step; GAN: critic steps per map step
    batch: int = 256
    hidden: int = 64
    depth: int = 3
    lr: float = 1e-3
    seed: int = 0


def train(kind: str, pair: GaussianPair, run: GaussianRun, lam: float = 1.0, progress: bool = False):
    """Train OTS or the GAN on `pair` with identical networks and optimizer for `run.steps` outer steps.

    `run.seed` fixes the network init and the training sample stream (disjoint from every evaluation stream)."""
    torch.manual_seed(run.seed)
    T = MLPMap(pair.dim, run.hidden, run.depth)
    f = MLPPotential(pair.dim, run.hidden, run.depth)
    config = SolverConfig(k_T=run.k, lr_map=run.lr, lr_potential=run.lr, betas=(0.5, 0.9), lam=lam, check_every=100)
    solver = SOLVERS[kind](T, f, SquaredEuclidean(), Identity(), config, device="cpu")
    g = torch.Generator().manual_seed(stream_seed(run.seed, "train"))
    next_p, next_q = pair.sampler("P", run.batch, g), pair.sampler("Q", run.batch, g)
    steps = range(run.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{kind}" + (f" λ={lam:g}" if kind == "gan" else ""), leave=False)
    for _ in steps:
        solver.step(next_p, next_q)
    solver.check_finite()
    return T.eval()


# -- the benchmark: rows x seeds -----------------------------------------------------------------------------
