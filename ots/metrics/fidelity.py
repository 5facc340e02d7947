"""Paired fidelity metrics: PSNR and SSIM as BasicSR (``basicsr/metrics/psnr_ssim.py``) and the papers report them.

Images are numpy arrays (H, W) or (H, W, C) -- uint8, uint16 or float in [0, 1] -- or torch tensors
(..., C, H, W) in [0, 1]. PSNR: on RGB in [0, 1] without border shave by default. SSIM (Wang et al. 2004, as
BasicSR computes it): 11x11 Gaussian window with sigma 1.5, population (co)variances, K1=0.01, K2=0.03, the
valid region only, per channel then averaged; on uint8 images that is skimage's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``, not
skimage's default 7x7 uniform window (which gives different numbers). Both keep BasicSR's options: the BT.601 Y
channel (``test_y_channel``) and ``crop_border`` (``shave``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ots.errors import ConfigError

# ITU-R BT.601 luma as in MATLAB's rgb2ycbcr / skimage.color.rgb2ycbcr, for RGB in [0, 1] -> Y in [16, 235]/255.
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _to_batch(img, name: str) -> tuple[torch.Tensor, float]:
    """-> (B, C, H, W) float64 tensor in its native range, and that range (data_range)."""
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu", torch.float64)
        if t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[None]
        elif t.dim() != 4:
            raise ConfigError(f"{name}: expected (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")
        return t, 1.0
    a = np.asarray(img)
    if a.dtype == np.uint8:
        rng = 255.0
    elif a.dtype == np.uint16:
        rng = 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        rng = 1.0
    else:
        raise ConfigError(f"{name}: unsupported dtype {a.dtype} (uint8, uint16 or float in [0, 1])")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ConfigError(f"{name}: expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).permute(2, 0, 1)[None]
    return t, rng


def _prepare(a, b, shave: int, y_channel: bool, unit: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    x, rx = _to_batch(a, "first image")
    y, ry = _to_batch(b, "second image")
    if x.shape != y.shape:
        raise ConfigError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if rx != ry:
        raise ConfigError("images have different dtypes/ranges; convert both to the same dtype")
    rng = rx
    if y_channel or unit:
        x, y, rng = x / rx, y / ry, 1.0
    if y_channel:
        if x.shape[1] != 3:
            raise ConfigError(f"y_channel needs RGB images, got {x.shape[1]} channels")
        x, y = rgb_to_y(x), rgb_to_y(y)
    if shave:
        if min(x.shape[-2:]) <= 2 * shave:
            raise ConfigError(f"shave={shave} leaves nothing of a {tuple(x.shape[-2:])} image")
        x = x[..., shave:-shave, shave:-shave]
        y = y[..., shave:-shave, shave:-shave]
    return x, y, rng


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16/255, 235/255] (skimage rgb2ycbcr / 255)."""
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) / 255.0 + 16.0 / 255.0


def psnr_batch(a, b, *, shave: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB (float64 tensor of shape (B,)), images compared in [0, 1]."""
    x, y, _ = _prepare(a, b, shave, y_channel, unit=True)
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)  # inf for identical images, like skimage


def psnr(a, b, *, shave: int = 0, y_channel: bool = False) -> float:
    """PSNR of one image pair (== skimage peak_signal_noise_ratio(a/range, b/range, data_range=1))."""
    return float(psnr_batch(a, b, shave=shave, y_channel=y_channel).mean())


SSIM_WINDOW = 11   # BasicSR / Wang et al. 2004: an 11x11 Gaussian window ...
SSIM_SIGMA = 1.5   # ... with sigma 1.5 (cv2.getGaussianKernel(11, 1.5))


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1-D Gaussian (cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA)); the 2-D window is its outer
    product, applied separably."""
    r = torch.arange(SSIM_WINDOW, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(r * r) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_batch(a, b, *, shave: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM (B,), BasicSR's ``calculate_ssim`` (see the module docstring).

    data_range is the dtype range (255 for uint8, 65535 for uint16, 1 for floats/tensors) -- SSIM is invariant to
    a common rescaling of the images and the constants, so uint8 x/255 with range 1 equals x with range 255.
    """
    x, y, rng = _prepare(a, b, shave, y_channel, unit=False)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ConfigError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    B, C = x.shape[:2]
    x = x.reshape(B * C, 1, *x.shape[-2:])
    y = y.reshape(B * C, 1, *y.shape[-2:])
    g = _gaussian_window(x.dtype)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # valid region only (BasicSR crops 5 px per border after filter2D)
        return F.conv2d(F.conv2d(t, gh), gw)

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).view(B, C).mean(1)


def ssim(a, b, *, shave: int = 0, y_channel: bool = False) -> float:
    """SSIM of one image pair; for uint8 RGB == BasicSR's calculate_ssim(a, b, crop_border=shave,
    test_y_channel=y_channel)."""
    return float(ssim_batch(a, b, shave=shave, y_channel=y_channel).mean())


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float tensor -> the values a saved uint8 image would have, as float in [0, 1]."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0
