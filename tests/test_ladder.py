"""The image ladder's two defect fixes (anti-aliased potential pool, colour-aware SWD), its diagnostics
(grid_rms, colour distance), its known-answer degradations and oracles, the probe and `ots bench ladder`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from ots.bench.ladder import gap_closed, method_params
from ots.data.degradations import CAST, DEGRADATIONS, bicubic_down, get_degradation
from ots.errors import ConfigError, DataError
from ots.metrics import color_distance, grid_rms, swd
from ots.models import build_potential
from ots.models.critic import BlurPool


def _checker(h: int, w: int) -> torch.Tensor:
    return (1 - 2 * ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2)).float()


def test_blur_pool_removes_a_period_2_pattern_that_the_reference_avg_pool_passes():
    x = _checker(16, 16).expand(1, 2, 16, 16).contiguous()
    blurred = BlurPool()(x)[..., 1:-1, 1:-1]  # interior: the border replicates
    averaged = torch.nn.AvgPool2d(3, stride=2, padding=1)(x)[..., 1:-1, 1:-1]
    assert blurred.abs().max() < 1e-6
    assert averaged.abs().min() > 0.1  # the box's 3x3 window weights odd and even pixels 5:4


def test_potential_pool_is_a_config_switch_and_the_default_is_anti_aliased():
    cfg = {"arch": "resnet", "crop": 32, "n_filters": 4, "max_filters": 8}
    assert any(isinstance(m, BlurPool) for m in build_potential(cfg).modules())
    ref = build_potential({**cfg, "pool": "avg"})
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in ref.modules())
    assert not any(isinstance(m, BlurPool) for m in ref.modules())
    with pytest.raises(ConfigError, match="pool must be one of"):
        build_potential({**cfg, "pool": "max"})


@pytest.mark.parametrize("extra", [{"highpass": True}, {"head": "patch", "depth": 1},
                                   {"head": "patch", "depth": 0, "highpass": True}])
def test_potential_levers_keep_a_scalar_unconstrained_potential(extra):
    f = build_potential({"arch": "resnet", "crop": 32, "n_filters": 4, "max_filters": 8, **extra})
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    out = f(x)
    assert out.shape == (3,)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="depth"):
        build_potential({"arch": "resnet", "crop": 32, "n_filters": 4, "depth": 9})


@pytest.fixture(scope="module")
def photos():
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]


def _as_tensors(images):
    return [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255 for im in images]


def test_default_swd_sees_a_colour_cast_that_the_separate_normalisation_hides(photos):
    hr = _as_tensors([im[:256, :256] for im in photos])
    other = [h.clone() for h in hr]  # the same images: SWD draws other random patches of them
    tinted = [(o * torch.tensor(CAST)[:, None, None]).clamp(0, 1) for o in other]
    default_same, default_tinted = swd(other, hr)["mean"], swd(tinted, hr)["mean"]
    sep_same, sep_tinted = (swd(other, hr, normalize="separate")["mean"],
                            swd(tinted, hr, normalize="separate")["mean"])
    assert default_tinted > 1.3 * default_same, (default_same, default_tinted)
    assert abs(sep_tinted - sep_same) < 0.1 * sep_same, (sep_same, sep_tinted)  # blind: why it is not the default
    assert color_distance(tinted, hr) > 5 * color_distance(other, hr)


def test_grid_rms_measures_a_painted_grid_and_ignores_smooth_changes():
    torch.manual_seed(0)
    r = torch.rand(2, 3, 64, 64)
    assert grid_rms(r, r) == 0.0
    assert grid_rms(r + (7.6 / 255) * _checker(64, 64), r) == pytest.approx(7.6, rel=1e-3)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 64, 64), 9, 1, 4) * 0.1
    assert grid_rms(r + smooth, r) < 0.5
    with pytest.raises(ConfigError):
        grid_rms(r, r[:1])


def test_color_distance_is_zero_for_equal_statistics_and_in_255_units():
    a = torch.full((1, 3, 8, 8), 0.5)
    assert color_distance(a, a) == 0.0
    b = a + 10 / 255  # every channel's mean 10 levels higher, same std
    assert color_distance(b, a) == pytest.approx(10.0, rel=1e-4)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_every_degradation_is_seeded_x4_and_its_oracle_undoes_it(photos, name):
    hr = photos[1][:130, :198]  # not a multiple of 4: the degradations modcrop
    deg = get_degradation(name)
    lr, params = deg.apply(hr, np.random.default_rng(3))
    lr2, _ = deg.apply(hr, np.random.default_rng(3))
    assert lr.dtype == np.uint8 and lr.shape == (32, 49, 3) and np.array_equal(lr, lr2)
    clean = bicubic_down(hr).astype(np.float32)
    oracle = deg.oracle(hr, lr, params).astype(np.float32)
    degraded_err = np.abs(lr.astype(np.float32) - clean).mean()
    assert np.abs(oracle - clean).mean() < 0.2 * degraded_err, name  # the cast's clipping leaves a little
    with pytest.raises(DataError, match="unknown degradation"):
        get_degradation("sepia")


def test_gap_closed_and_the_gan_recipe():
    assert gap_closed(22.0, 18.0, 26.0) == 0.5  # PSNR: half way up
    assert gap_closed(80.0, 100.0, 60.0) == 0.5  # SWD (lower is better): half way down
    assert gap_closed(17.0, 18.0, 26.0) < 0  # worse than bicubic
    assert gap_closed(1.0, 2.0, 2.0) is None
    params = {"model": {}, "solver": {"k_T": 5, "lr_map": 1e-4},
              "baseline": {"solver": {"kind": "gan", "lam": 1.0, "gp": 10.0}}}
    gan = method_params(params, "gan")
    assert gan["solver"] == {"k_T": 5, "lr_map": 1e-4, "kind": "gan", "lam": 1.0, "gp": 10.0}
    assert method_params(params, "ots")["solver"]["kind"] == "ots" and "baseline" not in gan


TINY = """
seed: 0
model:
  map: {arch: edsr, n_blocks: 1, n_features: 8, scale: 4, bicubic_skip: true}
  potential: {arch: resnet, crop: 32, n_filters: 4, max_filters: 8}
solver: {k_T: 1, lr_map: 1.0e-4, lr_potential: 1.0e-3, cost: {mse: 10.0}, margin: 1, ema: 0.9}
train: {batch_size: 2, lr_crop: 8}
baseline: {solver: {kind: gan, lam: 1.0, gp: 10.0}}
"""


@pytest.fixture(scope="module")
def ladder_inputs(tmp_path_factory, photos):
    from PIL import Image

    root = tmp_path_factory.mktemp("ladder")
    (root / "photos").mkdir()
    for i, im in enumerate(photos):
        Image.fromarray(im[:256, :256]).save(root / "photos" / f"p{i}.png")
    (root / "tiny.yaml").write_text(TINY)
    return root


def test_bench_ladder_writes_the_json_figure_and_grids(ladder_inputs, capsys):
    from ots.cli import main

    out = ladder_inputs / "bench" / "ladder.json"
    argv = ["bench", "ladder", "--photos", str(ladder_inputs / "photos"), "--rungs", "cast", "--steps", "2",
            "--params", str(ladder_inputs / "tiny.yaml"), "--work", str(ladder_inputs / "work"), "--out", str(out),
            "--max-side", "256", "--val-crop", "128", "--cell", "128", "--eval-every", "2", "--val-patches", "64"]
    assert main(argv) == 0
    got = json.loads(out.read_text())
    assert got["steps"] == 2 and got["seeds"] == [0] and got["photos"] == str(ladder_inputs / "photos")
    rung = got["rungs"]["cast"]
    assert rung["degradation"]["name"] == "cast"
    for method in ("bicubic", "oracle", "ots", "gan"):
        assert {"psnr", "swd", "color", "grid_rms", "psnr_std", "swd_std"} <= set(rung["methods"][method])
    bic, orc = rung["methods"]["bicubic"], rung["methods"]["oracle"]
    assert orc["psnr"] > bic["psnr"] + 3 and orc["swd"] < bic["swd"] and orc["color"] < bic["color"]
    assert bic["grid_rms"] == 0.0
    for method in ("ots", "gan"):
        g = rung["gap_closed"][method]
        m = rung["methods"][method]
        assert g["psnr"] == pytest.approx((m["psnr"] - bic["psnr"]) / (orc["psnr"] - bic["psnr"]), abs=1e-3)
    assert Path(out.with_suffix(".png")).stat().st_size > 0 and (out.parent / "ladder_cast.png").is_file()
    # a second call reads the finished runs back instead of retraining them
    (done,) = (ladder_inputs / "work" / "cast").glob("ots-seed0-*/result.json")
    first = done.stat().st_mtime_ns
    assert main(argv) == 0
    assert done.stat().st_mtime_ns == first
    assert main(["bench", "ladder", "--rungs", "sepia", "--photos", str(ladder_inputs)]) == 2
    assert "unknown rung(s) sepia" in capsys.readouterr().err


def test_probe_sees_a_colour_cast(ladder_inputs):
    import yaml

    from ots.bench.ladder import build_rung
    from ots.bench.probe import probe_rung
    from ots.config import OTSConfig
    from ots.dotted import apply_set_args

    data = build_rung("cast", str(ladder_inputs / "photos"), ladder_inputs / "work", max_side=256, val_crop=128,
                      cell=128)
    params = apply_set_args(yaml.safe_load(TINY), ["solver.lr_potential=3e-3", "train.batch_size=8"])
    got = probe_rung(data.dataset, OTSConfig.from_params(params), steps=40, eval_every=20, n_val=64)
    assert [h["step"] for h in got["history"]] == [0, 20, 40]
    assert got["accuracy"][-1] >= 0.8, got  # a colour cast is plain to see
