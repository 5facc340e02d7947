"""FID (Heusel et al., 2017): Frechet distance between Gaussians fitted to 2048-d Inception pool features.

The network is the pytorch-fid port of the TF-slim Inception-v3 used by the original FID code (FIDInceptionA/C/E
blocks: average pools that ignore padding, a max pool in the last block, 1008 classes), built on torchvision's
Inception3 and loaded from ``pt_inception-2015-12-05-6726825d.pth`` resolved by :mod:`ots.weights` (never
downloaded). Inputs in [0, 1] are resized to 299x299 (bilinear) and mapped to [-1, 1], as in pytorch-fid.
Protocol (team notes): features of random 128-px crops, see :func:`fid_crops`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ots.errors import ConfigError, WeightsNotFoundError, one_line
from ots.linalg import sqrtm_psd
from ots.weights import RANDOM, load_state_dict, resolve_weights


def _fid_blocks():
    from torchvision.models import inception as tvi

    class FIDInceptionA(tvi.InceptionA):
        def forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b5, b3, bp], 1)

    class FIDInceptionC(tvi.InceptionC):
        def forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
            return torch.cat([b1, b7, bd, bp], 1)

    class FIDInceptionE(tvi.InceptionE):
        def __init__(self, in_channels: int, max_pool: bool):
            super().__init__(in_channels)
            self.max_pool = max_pool

        def forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:
                bp = F.max_pool2d(x, 3, stride=1, padding=1)
            else:
                bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
            return torch.cat([b1, b3, bd, self.branch_pool(bp)], 1)

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


class InceptionPool(nn.Module):
    """pytorch-fid Inception-v3 up to the 2048-d global average pool."""

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3

        A, C, E = _fid_blocks()
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
        net.Mixed_6b, net.Mixed_6c = C(768, channels_7x7=128), C(768, channels_7x7=160)
        net.Mixed_6d, net.Mixed_6e = C(768, channels_7x7=160), C(768, channels_7x7=192)
        net.Mixed_7b, net.Mixed_7c = E(1280, max_pool=False), E(2048, max_pool=True)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2048)."""
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(n, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def build_inception(weights: str | None = None, device: str | torch.device = "cpu") -> InceptionPool:
    """The FID feature extractor; WeightsNotFoundError when the pytorch-fid weights are absent."""
    path = resolve_weights("inception", weights)
    model = InceptionPool()
    if path != RANDOM:
        state = load_state_dict(path)
        try:
            model.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise WeightsNotFoundError(f"{path} is not the pytorch-fid Inception weights file: "
                                       f"{one_line(str(e).splitlines()[0])}") from e
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_features(model: InceptionPool, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """(N, 3, H, W) images in [0, 1] -> (N, 2048) float64 features (computed on the model's device)."""
    device = next(model.parameters()).device
    feats = [model(images[i : i + batch_size].to(device, torch.float32)).double().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(feats).numpy()


def fid_crops(images, size: int = 128, per_image: int = 1, generator: torch.Generator | None = None):
    """Random ``size`` crops from a list/batch of (3, H, W) images (the FID protocol: 128-px crops)."""
    out = []
    for img in images:
        h, w = img.shape[-2:]
        if h < size or w < size:
            raise ConfigError(f"image {h}x{w} is smaller than the {size}-px FID crop")
        for _ in range(per_image):
            top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
            out.append(img[..., top : top + size, left : left + size])
    return torch.stack(out)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Stable square root: tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD matrix, so both roots
    come from symmetric eigendecompositions with negative round-off eigenvalues clipped to 0 -- no complex parts
    and no singular-matrix failures (pytorch-fid needs an eps offset for those).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ConfigError(f"inconsistent statistics: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    r1 = sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


def fid(model: InceptionPool, images1: torch.Tensor, images2: torch.Tensor, batch_size: int = 32) -> float:
    """FID between two sets of (N, 3, H, W) images in [0, 1] (crop them first for the protocol)."""
    return fid_from_features(inception_features(model, images1, batch_size),
                             inception_features(model, images2, batch_size))
