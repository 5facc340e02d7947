import numpy as np
import pytest
import torch

from ots.gaussian import GaussianPair, GaussianRun, Identity, bures_wasserstein2, evaluate_map, train


class Linear(torch.nn.Module):
    def __init__(self, pair):
        super().__init__()
        self.A = torch.tensor(pair.ot_matrix(), dtype=torch.float32)
        self.m1 = torch.tensor(pair.m1, dtype=torch.float32)
        self.m2 = torch.tensor(pair.m2, dtype=torch.float32)

    def forward(self, x):
        return self.m2 + (x - self.m1) @ self.A.T


def test_closed_form_ot_map_pushes_P_to_Q_and_is_symmetric_positive_definite():
    pair = GaussianPair.random(8, seed=3)
    A = pair.ot_matrix()
    assert np.allclose(A, A.T, atol=1e-10)
    assert np.linalg.eigvalsh(A).min() > 0
    assert np.allclose(A @ pair.S1 @ A, pair.S2, atol=1e-8)  # covariance of T*#P is S2
    m = evaluate_map(Linear(pair), pair, n=200_000)
    assert m["l2_uvp"] < 1e-6 and m["cos"] == pytest.approx(1.0, abs=1e-6)
    assert m["bw2_uvp"] < 0.2  # only the sampling error of the empirical covariance


def test_bures_wasserstein_basics():
    pair = GaussianPair.random(4, seed=1)
    assert bures_wasserstein2(pair.m1, pair.S1, pair.m1, pair.S1) == pytest.approx(0, abs=1e-9)
    # Same covariance: only the means count.
    assert bures_wasserstein2(pair.m1, pair.S1, pair.m2, pair.S1) == pytest.approx(np.sum((pair.m1 - pair.m2) ** 2))


def test_ots_recovers_the_ot_map_and_the_gan_is_biased():
    """D = 4 variant of `ots bench gaussian`: OTS finds T*; the regularized GAN's T#P misses Q."""
    torch.set_num_threads(1)
    pair = GaussianPair.random(4, seed=0)
    run = GaussianRun(dim=4, steps=300, batch=256, hidden=64, k=10)
    ots = evaluate_map(train("ots", pair, run), pair)
    gan = evaluate_map(train("gan", pair, run, lam=1.0), pair)
    nothing = evaluate_map(Identity(), pair)
    assert ots["l2_uvp"] < 3.0 and ots["cos"] > 0.98
    assert ots["l2_uvp"] < nothing["l2_uvp"] / 20
    assert gan["bw2_uvp"] > 3 * ots["bw2_uvp"]
