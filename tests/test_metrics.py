"""Metrics: PSNR/SSIM vs scikit-image and piq (BasicSR's SSIM) on real images, FID/LPIPS maths with random
backbones, SWD behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage import data as skdata
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ots.errors import ConfigError, WeightsNotFoundError
from ots.metrics import (
    build_inception,
    build_lpips,
    evaluate,
    fid_crops,
    fid_from_features,
    frechet_distance,
    inception_features,
    load_optional,
    lpips_distance,
    psnr,
    psnr_batch,
    ssim,
    ssim_batch,
    swd,
)


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def _blurred(img: np.ndarray, factor: int = 4) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    small = F.interpolate(t, scale_factor=1 / factor, mode="bicubic", antialias=True)
    up = F.interpolate(small, size=img.shape[:2], mode="bicubic")
    return up.clamp(0, 255).round().byte()[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def pairs():
    astro, chelsea, coffee = skdata.astronaut(), skdata.chelsea(), skdata.coffee()
    return [(astro, _noisy(astro, 12)), (chelsea, _blurred(chelsea)), (coffee, _noisy(_blurred(coffee, 2), 5, 1))]


def test_psnr_matches_skimage_on_real_images(pairs):
    for hr, sr in pairs:
        ref = peak_signal_noise_ratio(hr / 255.0, sr / 255.0, data_range=1.0)
        assert psnr(sr, hr) == pytest.approx(ref, abs=1e-4)
        assert psnr(sr / 255.0, hr / 255.0) == pytest.approx(ref, abs=1e-4)  # float input in [0, 1]
        ref16 = peak_signal_noise_ratio(hr.astype(np.uint16) * 257, sr.astype(np.uint16) * 257)
        assert psnr(sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257) == pytest.approx(ref16, abs=1e-4)


def test_psnr_y_channel_and_shave_match_skimage(pairs):
    hr, sr = pairs[1]
    y_hr, y_sr = rgb2ycbcr(hr)[..., 0] / 255.0, rgb2ycbcr(sr)[..., 0] / 255.0
    assert psnr(sr, hr, y_channel=True) == pytest.approx(peak_signal_noise_ratio(y_hr, y_sr, data_range=1), abs=1e-4)
    s = 4
    ref = peak_signal_noise_ratio(y_hr[s:-s, s:-s], y_sr[s:-s, s:-s], data_range=1)
    assert psnr(sr, hr, y_channel=True, shave=s) == pytest.approx(ref, abs=1e-4)
    assert psnr(hr, hr) == float("inf")


def _skimage_basicsr_ssim(a, b, **kw):
    """skimage with BasicSR's settings (team notes, shared README section 8)."""
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, **kw)


def test_ssim_is_basicsr_s_and_matches_piq_and_skimage_on_real_images(pairs):
    """Issue 20.2: SSIM as papers report it (BasicSR: 11x11 Gaussian, sigma 1.5), checked against piq (an
    independent implementation) and skimage's BasicSR settings to 1e-4 -- RGB, Y channel, crop_border."""
    piq = pytest.importorskip("piq")

    def piq_ssim(a, b):
        t = lambda im: torch.from_numpy(np.atleast_3d(im).astype(np.float64)).permute(2, 0, 1)[None]  # noqa: E731
        return float(piq.ssim(t(a), t(b), data_range=255.0, downsample=False))

    for hr, sr in pairs:
        hr, sr = hr[96:256, 128:288], sr[96:256, 128:288]  # float64 convolutions are slow: a 160-px crop
        assert ssim(sr, hr) == pytest.approx(piq_ssim(sr, hr), abs=1e-4)
        assert ssim(sr, hr) == pytest.approx(_skimage_basicsr_ssim(hr, sr, channel_axis=-1), abs=1e-4)
        assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
        # skimage's default (7x7 uniform window, the old `ots` number) is a different metric
        assert abs(ssim(sr, hr) - structural_similarity(hr, sr, channel_axis=-1, data_range=255)) > 1e-3
    hr, sr = pairs[1][0][:96, :128], pairs[1][1][:96, :128]
    s = 4
    y_hr, y_sr = rgb2ycbcr(hr)[..., 0], rgb2ycbcr(sr)[..., 0]  # BT.601 Y in [16, 235], BasicSR's test_y_channel
    ref = piq_ssim(y_sr[s:-s, s:-s], y_hr[s:-s, s:-s])
    assert ssim(sr, hr, y_channel=True, shave=s) == pytest.approx(ref, abs=1e-4)
    assert ssim(sr, hr, shave=s) == pytest.approx(piq_ssim(sr[s:-s, s:-s], hr[s:-s, s:-s]), abs=1e-4)
    cam = skdata.camera()
    cam_n = _noisy(cam[:, :, None], 20)[:, :, 0]
    assert ssim(cam_n, cam) == pytest.approx(_skimage_basicsr_ssim(cam, cam_n), abs=1e-4)  # grayscale
    with pytest.raises(ConfigError, match="at least 11x11"):
        ssim(cam[:10, :10], cam[:10, :10])


def test_batched_tensor_metrics_equal_per_image_numpy(pairs):
    hr, sr = pairs[0]
    t_hr = torch.from_numpy(hr).permute(2, 0, 1).double() / 255
    t_sr = torch.from_numpy(sr).permute(2, 0, 1).double() / 255
    batch_sr, batch_hr = torch.stack([t_sr, t_hr]), torch.stack([t_hr, t_hr])
    p = psnr_batch(batch_sr, batch_hr)
    assert p[0].item() == pytest.approx(psnr(sr, hr), abs=1e-6) and torch.isinf(p[1])
    s = ssim_batch(batch_sr, batch_hr)
    assert s[0].item() == pytest.approx(ssim(sr, hr), abs=1e-6) and s[1].item() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        psnr(sr, hr[:-1])


def _scipy_frechet(mu1, s1, mu2, s2):
    """pytorch-fid's reference formula."""
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_frechet_distance_identical_is_zero_and_matches_scipy():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 64))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    for seed in range(3):
        r = np.random.default_rng(seed + 1)
        a, b = r.normal(size=(64, 64)), r.normal(size=(64, 64))
        s1, s2 = a @ a.T / 64, b @ b.T / 64 + 0.1 * np.eye(64)
        mu1, mu2 = r.normal(size=64), r.normal(size=64)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-6, abs=1e-6)
        assert ours > 0
    # rank-deficient covariances (fewer samples than dimensions) stay finite and non-negative
    f1, f2 = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    val = fid_from_features(f1, f2)
    assert np.isfinite(val) and val > 0
    # (the ~40 zero eigenvalues carry round-off ~1e-14 whose square roots add up to ~1e-6)
    assert fid_from_features(f1, f1) == pytest.approx(0, abs=1e-4)


def test_lpips_random_backbone_is_a_semimetric():
    model = build_lpips("alex", weights="random")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    assert torch.allclose(lpips_distance(model, x, x), torch.zeros(3), atol=1e-7)
    dxy, dyx = lpips_distance(model, x, y), lpips_distance(model, y, x)
    assert torch.allclose(dxy, dyx, atol=1e-6)
    assert (dxy > 0).all()
    with pytest.raises(ConfigError):
        lpips_distance(model, x, y[:, :, :32])


def test_lpips_copies_torchvision_backbone_weights(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(1)
    features = alexnet().features
    path = tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    model = build_lpips("alex", weights=str(path))
    assert torch.equal(model.net.slice1[0].weight, features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").bias, features[10].bias)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsNotFoundError, match="not a matching"):
        build_lpips("alex", weights=str(path))


def test_absent_weights_give_clear_errors_and_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("OTS_ALEXNET_WEIGHTS", "OTS_VGG16_WEIGHTS", "OTS_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(WeightsNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_lpips()
    with pytest.raises(WeightsNotFoundError, match="vgg16"):
        build_lpips("vgg")
    with pytest.raises(WeightsNotFoundError, match="pt_inception-2015-12-05"):
        build_inception()
    model, reason = load_optional(build_inception)
    assert model is None and "pt_inception" in reason
    with pytest.raises(ConfigError):
        build_lpips("squeeze", weights="random")


def test_inception_random_features_and_bad_file(tmp_path):
    model = build_inception(weights="random")
    feats = inception_features(model, torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 2048) and np.isfinite(feats).all() and feats.dtype == np.float64
    assert set(model.net.state_dict()) >= {"Mixed_7c.branch_pool.conv.weight", "fc.weight"}
    assert model.net.fc.out_features == 1008  # the pytorch-fid checkpoint layout
    bad = tmp_path / "inception.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(WeightsNotFoundError, match="not the pytorch-fid"):
        build_inception(weights=str(bad))


def _crops(images, n, size, seed):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    return fid_crops(ts, size, n, g)


@pytest.fixture(scope="module")
def clean_images():
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]


def test_swd_separates_degraded_from_clean(clean_images):
    a = _crops(clean_images, 8, 64, seed=0)
    b = _crops(clean_images, 8, 64, seed=1)  # a second sample of the same set
    degraded = _crops([_blurred(im) for im in clean_images], 8, 64, seed=0)  # x4 bicubic down/up
    same = swd(a, b)
    worse = swd(degraded, b)
    assert len(same["levels"]) == 3 and same["resolutions"] == [64, 32, 16]
    # the finest band holds the detail the degradation removed; coarse bands only see content sampling noise
    assert worse["levels"][0] > 1.5 * same["levels"][0], (same, worse)
    assert worse["mean"] > 1.1 * same["mean"], (same, worse)
    assert swd(a, b) == same  # seeded
    ref_same, ref_worse = swd(a, b, normalize="reference"), swd(degraded, b, normalize="reference")
    assert ref_worse["levels"][0] > 1.5 * ref_same["levels"][0]


def test_swd_of_two_samples_of_one_set_is_near_zero(clean_images):
    a = _crops(clean_images, 8, 32, seed=2)
    near = swd(a, a, patches_per_image=64)["mean"]  # different random patches of the same images
    far = swd(a, torch.rand_like(a), patches_per_image=64)["mean"]
    assert near < 0.1 * far
    with pytest.raises(ConfigError):
        swd(a[:, :, :8, :8], a[:, :, :8, :8])


def test_evaluate_reports_unavailable_metrics_without_numbers(clean_images):
    hr = list(_crops(clean_images[:2], 1, 64, seed=3))
    sr = [h.flip(-1) for h in hr]
    out = evaluate(sr, hr, unavailable={"fid": "inception weights missing"})
    assert out["fid"] is None and out["lpips"] is None
    assert out["unavailable"]["fid"] == "inception weights missing" and "lpips" in out["unavailable"]
    assert np.isfinite(out["psnr"]) and 0 < out["ssim"] < 1 and out["swd"] > 0 and len(out["swd_levels"]) == 3
    out = evaluate(hr, hr, lpips_model=build_lpips(weights="random"))
    assert out["lpips"] == pytest.approx(0, abs=1e-7) and out["ssim"] == pytest.approx(1.0)
