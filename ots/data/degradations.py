"""LR-domain degradations of HR photos (x4), each with its oracle: what undoing the degradation gives.

``mix`` is the demo's AIM19-like unknown degradation (random blur kernel, x4 bicubic, Gaussian or Poisson noise,
JPEG). The others are the image ladder's known-answer rungs, one degradation each, whose inverse is known:
- ``cast``: an RGB colour cast (x0.75, x1, x1.25) then x4 bicubic: the oracle undoes the cast on the LR image;
- ``noise10``: x4 bicubic then Gaussian noise sigma 10/255; ``blur``: Gaussian blur sigma 1.5 then x4 bicubic;
  ``jpeg``: x4 bicubic then JPEG quality 30. Their oracle (and ``mix``'s) is the clean LR image, x4 bicubic of
  the HR: a perfect restoration of the degradation, adding no detail.
Every degradation maps a uint8 HWC image (cut to a multiple of the scale) and a seeded generator to
``(lr uint8, params)``; every oracle maps ``(hr, lr, params)`` to the LR image bicubic upsampling should start from.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ots.data.sources import SCALE, decode_rgb8
from ots.errors import DataError

CAST = (0.75, 1.0, 1.25)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def modcrop(img: np.ndarray, scale: int = SCALE) -> np.ndarray:
    h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
    return img[:h, :w]


def bicubic_down(img: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """x``scale`` bicubic downscale (Pillow) of a uint8 HWC image: the LR image without any other degradation."""
    from PIL import Image

    img = modcrop(img, scale)
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((w // scale, h // scale), Image.BICUBIC), dtype=np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return decode_rgb8(buf.getvalue(), "jpeg")


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy.ndimage import convolve

    x = img.astype(np.float32)
    return np.stack([convolve(x[..., c], kernel, mode="reflect") for c in range(x.shape[-1])], axis=-1)


def gaussian_kernel(sx: float, sy: float | None = None, theta: float = 0.0, size: int = 21) -> np.ndarray:
    sy = sx if sy is None else sy
    r = np.arange(size) - size // 2
    xx, yy = np.meshgrid(r, r)
    c, s_ = np.cos(theta), np.sin(theta)
    u, v = c * xx + s_ * yy, -s_ * xx + c * yy
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return k / k.sum()


def _random_kernel(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    if rng.random() < 0.5:
        s = float(rng.uniform(0.4, 2.5))
        sx, sy, theta, kind = s, s, 0.0, "isotropic"
    else:
        sx, sy = (float(v) for v in rng.uniform(0.4, 3.0, size=2))
        theta, kind = float(rng.uniform(0, np.pi)), "anisotropic"
    return gaussian_kernel(sx, sy, theta), {"kernel": kind, "sigma_x": round(sx, 4), "sigma_y": round(sy, 4),
                                            "theta": round(theta, 4)}


def degrade(img: np.ndarray, rng: np.random.Generator, scale: int = SCALE) -> tuple[np.ndarray, dict]:
    """AIM19-like unknown degradation of a uint8 HWC image: blur, x``scale`` bicubic, noise, JPEG."""
    k, params = _random_kernel(rng)
    lr = bicubic_down(_u8(_convolve(modcrop(img, scale), k)), scale).astype(np.float32)
    if rng.random() < 0.5:
        sigma = float(rng.uniform(1.0, 15.0))
        lr = lr + rng.normal(0.0, sigma, size=lr.shape)
        params.update(noise="gaussian", noise_sigma=round(sigma, 4))
    else:
        peak = float(rng.uniform(30.0, 300.0))
        lr = rng.poisson(np.clip(lr, 0, 255) / 255.0 * peak) / peak * 255.0
        params.update(noise="poisson", noise_peak=round(peak, 4))
    q = int(rng.integers(40, 91))
    params.update(jpeg_quality=q, scale=scale)
    return _jpeg(_u8(lr), q), params


def _cast(img, rng, scale=SCALE):
    return bicubic_down(_u8(modcrop(img, scale) * np.float32(CAST)), scale), {"cast": list(CAST), "scale": scale}


def _uncast(hr, lr, params):
    return _u8(lr / np.float32(params["cast"]))


def _noise10(img, rng, scale=SCALE):
    lr = bicubic_down(img, scale).astype(np.float32)
    return _u8(lr + rng.normal(0.0, 10.0, size=lr.shape)), {"noise": "gaussian", "noise_sigma": 10.0, "scale": scale}


def _blur(img, rng, scale=SCALE):
    return bicubic_down(_u8(_convolve(modcrop(img, scale), gaussian_kernel(1.5))), scale), \
        {"kernel": "isotropic", "sigma_x": 1.5, "sigma_y": 1.5, "scale": scale}


def _jpeg30(img, rng, scale=SCALE):
    return _jpeg(bicubic_down(img, scale), 30), {"jpeg_quality": 30, "scale": scale}


def clean_lr(hr, lr, params):
    """The oracle of a degradation that loses information: the LR image without it."""
    return bicubic_down(hr, int(params.get("scale", SCALE)))


@dataclass(frozen=True)
class Degradation:
    apply: Callable[..., tuple[np.ndarray, dict]]
    oracle: Callable[[np.ndarray, np.ndarray, dict], np.ndarray]
    about: str


DEGRADATIONS = {
    "mix": Degradation(degrade, clean_lr, "random blur, x4 bicubic, Gaussian/Poisson noise, JPEG 40-90 (AIM19-like)"),
    "cast": Degradation(_cast, _uncast, "RGB x (0.75, 1.0, 1.25), then x4 bicubic"),
    "noise10": Degradation(_noise10, clean_lr, "x4 bicubic, then Gaussian noise sigma 10/255"),
    "blur": Degradation(_blur, clean_lr, "Gaussian blur sigma 1.5, then x4 bicubic"),
    "jpeg": Degradation(_jpeg30, clean_lr, "x4 bicubic, then JPEG quality 30"),
}


def get_degradation(name: str) -> Degradation:
    if name not in DEGRADATIONS:
        raise DataError(f"unknown degradation {name!r}; choose one of {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name]
