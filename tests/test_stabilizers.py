"""The stabilisers of the stability study: each changes how training moves, never the objective's solution.

Margin (context around LR crops, cut before cost and potential), EMA of the map, potential warm-up, instance
noise, the fp32 transport cost, ICNR and the reference critic init, the gradient/low-pass cost terms, the one
builder, and ``ots fit`` (one-process training with validation curves)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ots.checkpoint import load_map, save_checkpoint
from ots.config import ModelConfig, SolverConfig
from ots.costs import GradientCost, LowPassCost, WeightedCost
from ots.errors import ConfigError
from ots.models import build_map, build_potential
from ots.solver import OTSSolver, RegularizedGAN, build_solver

S = SolverConfig.from_dict
MODEL = ModelConfig(map={"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4},
                    potential={"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16})


def stream(size, seed, batch=2):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.rand(batch, 3, size, size, generator=g) * 2 - 1


class Recorder(nn.Module):
    """Wraps a potential and records what it is shown."""

    def __init__(self, f):
        super().__init__()
        self.f, self.seen = f, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.f(x)


def flat(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_margin_feeds_inner_crops_to_cost_and_potential():
    s = build_solver(MODEL, S({"k_T": 2, "margin": 2, "lr_map": 1e-3, "lr_potential": 1e-3}), device="cpu", seed=0)
    s.f = s.f_net = s.f_train = Recorder(s.f)
    out = s.step(stream(8 + 2 * 2, 1), stream(32, 2))  # LR crops carry 2 px of context on each side
    assert all(t.shape[-2:] == (32, 32) for t in s.f.seen)  # map outputs (48 px) cut to the potential's 32 px
    assert torch.isfinite(out["cost"])
    x = torch.rand(1, 3, 12, 12) * 2 - 1
    Tx = s.T(x)
    assert s.inner(Tx).shape[-1] == 32 and torch.equal(s.inner(Tx), Tx[..., 8:-8, 8:-8])


def test_ema_of_the_map_follows_its_updates():
    s = build_solver(MODEL, S({"k_T": 1, "ema": 0.5, "lr_map": 1e-2, "lr_potential": 1e-3}), device="cpu", seed=0)
    start = flat(s.T)
    assert torch.equal(flat(s.T_ema), start)
    s.step(stream(8, 1), stream(32, 2))
    after = flat(s.T)
    assert not torch.equal(after, start)
    assert torch.allclose(flat(s.T_ema), 0.5 * start + 0.5 * after, atol=1e-6)  # one update, decay 0.5
    assert s.map_for_eval is s.T_ema


def test_warmup_moves_only_the_potential():
    s = build_solver(MODEL, S({"k_T": 3, "warmup": 2, "lr_map": 1e-2, "lr_potential": 1e-2}), device="cpu", seed=0)
    T0, f0 = flat(s.T), flat(s.f)
    lr = stream(8, 1)
    calls = {"n": 0}

    def counted():
        calls["n"] += 1
        return lr()

    for _ in range(2):
        s.step(counted, stream(32, 2))
    assert torch.equal(flat(s.T), T0) and not torch.equal(flat(s.f), f0) and calls["n"] == 2
    s.step(counted, stream(32, 3))
    assert not torch.equal(flat(s.T), T0) and calls["n"] == 2 + 3 + 1


def test_instance_noise_reaches_both_inputs_of_the_potential():
    s = build_solver(MODEL, S({"k_T": 1, "noise": 0.2, "lr_map": 1e-3, "lr_potential": 1e-3}), device="cpu", seed=0)
    s.f = s.f_net = s.f_train = Recorder(s.f)
    hr = torch.zeros(2, 3, 32, 32)
    s.step(stream(8, 1), lambda: hr.clone())
    y_seen = s.f.seen[-1]  # the potential update's HR batch, last one shown
    assert 0.15 < float(y_seen.std()) < 0.25  # zeros + N(0, 0.2^2)
    quiet = build_solver(MODEL, S({"k_T": 1, "lr_map": 1e-3, "lr_potential": 1e-3}), device="cpu", seed=0)
    quiet.f = quiet.f_net = quiet.f_train = Recorder(quiet.f)
    quiet.step(stream(8, 1), lambda: hr.clone())
    assert torch.equal(quiet.f.seen[-1], hr)


def test_transport_cost_is_fp32_under_bf16_autocast():
    s = build_solver(MODEL, S({"k_T": 1, "bf16": True}), device="cpu", seed=0)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with s.autocast():
        Tx = s.T(x)
        c = s.transport_cost(x, Tx)
    assert c.dtype == torch.float32


def test_solver_config_accepts_yaml_floats_and_refuses_bad_values():
    assert SolverConfig.from_dict({"lr_map": "1e-5"}).lr_map == 1e-5  # YAML 1.1 reads 1e-5 as a string
    for bad, message in [({"lr_map": "fast"}, "solver.lr_map must be a number"),
                         ({"kind": "vae"}, "solver.kind must be one of"),
                         ({"margin": -1}, "solver.margin must be an integer >= 0"),
                         ({"ema": 1.0}, "solver.ema must be in"),
                         ({"noise": -0.1}, "solver.noise must be >= 0"),
                         ({"cost": {"sobel": 1}}, "unknown cost")]:
        with pytest.raises(ConfigError, match=message):
            SolverConfig.from_dict(bad)


def test_builder_makes_either_solver_from_the_config():
    assert isinstance(build_solver(MODEL, S({"kind": "ots"}), device="cpu"), OTSSolver)
    gan = build_solver(MODEL, S({"kind": "gan", "lam": 3.0, "cost": {"mse": 1, "grad": 2}}), device="cpu")
    assert isinstance(gan, RegularizedGAN) and gan.cfg.lam == 3.0
    assert set(gan.cost.weights) == {"mse", "grad"}
    out = gan.step(stream(8, 1), stream(32, 2))
    assert all(torch.isfinite(v) for v in out.values())


def test_gradient_and_lowpass_costs_split_the_frequencies():
    ref = torch.zeros(1, 3, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 0.2 - 0.1  # zero-mean, period 2
    shift = torch.full((1, 3, 16, 16), 0.1)
    hf = ref + checker
    assert float(GradientCost()(ref, shift)) == 0.0 and float(GradientCost()(ref, hf)) > 0.07
    assert float(LowPassCost()(ref, hf)) < 1e-12 and float(LowPassCost()(ref, shift)) == pytest.approx(0.01)
    w = WeightedCost({"mse": 1, "grad": 1})
    assert float(w(ref, hf)) > 4 * float(w(ref, shift))  # checkerboard costs far more than a small shift


def test_icnr_upsampler_starts_without_checkerboard():
    m = build_map({"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "icnr": True, "bicubic_skip": False})
    x = torch.rand(1, 3, 6, 6)
    h = m.upsample(m.head(x))
    assert torch.equal(h[..., 0::2, 0::2], h[..., 1::2, 1::2])  # the last x2 stage repeats each sub-pixel
    plain = build_map({"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "bicubic_skip": False})
    hp = plain.upsample(plain.head(x))
    assert not torch.equal(hp[..., 0::2, 0::2], hp[..., 1::2, 1::2])


def test_reference_critic_init():
    f = build_potential({**MODEL.potential, "init": "kaiming"})
    convs = [m for m in f.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert convs and all(float(m.bias.detach().abs().sum()) == 0 for m in convs)
    with pytest.raises(ConfigError, match="potential init must be"):
        build_potential({**MODEL.potential, "init": "xavier"})


def test_exported_map_is_the_ema_when_kept(tmp_path):
    s = build_solver(MODEL, S({"k_T": 2, "ema": 0.9, "lr_map": 1e-2}), device="cpu", seed=0)
    s.step(stream(8, 1), stream(32, 2))
    save_checkpoint(tmp_path / "c.pt", s)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_map(tmp_path / "c.pt")(x), s.T_ema(x))
        assert not torch.allclose(load_map(tmp_path / "c.pt")(x), s.T(x))


def test_fit_writes_curves_grid_and_the_best_map(tiny_dataset, tmp_path):
    from ots.cli import main

    params = {"seed": 0, "model": {"map": MODEL.map, "potential": MODEL.potential},
              "solver": {"k_T": 1, "margin": 1, "ema": 0.5, "cost": {"mse": 10}},
              "train": {"batch_size": 2, "lr_crop": 8}}
    (tmp_path / "p.yaml").write_text(json.dumps(params))
    out = tmp_path / "fit"
    assert main(["fit", "--params", str(tmp_path / "p.yaml"), "--dataset", tiny_dataset, "--out", str(out),
                 "--steps", "4", "--eval-every", "2", "--set", "solver.lr_map=1e-4"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert [r["step"] for r in curve["history"]] == [0, 2, 4]
    assert curve["params"]["solver"]["lr_map"] == 1e-4
    first = curve["history"][0]  # the untrained map is bicubic (zero-initialised skip): same scores
    assert first["swd"] == pytest.approx(curve["bicubic"]["swd"]) and first["psnr"] == pytest.approx(
        curve["bicubic"]["psnr"])
    best = min(curve["history"], key=lambda r: r["ema_swd"])
    assert curve["best"]["step"] == best["step"]
    assert load_map(out / "best.pt")(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    for name in ("curve.png", "grid.png", "final.pt"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["fit", "--params", str(tmp_path / "p.yaml")])  # --dataset and --out are required
    assert main(["fit", "--params", str(tmp_path / "p.yaml"), "--dataset", tiny_dataset, "--out", str(out),
                 "--set", "nonsense"]) == 2
