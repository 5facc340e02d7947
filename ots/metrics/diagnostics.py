"""What a map changed, beyond fidelity: the period-2 grid it paints and its colour statistics against HR.

Both are read on the 0-255 scale of the images a user gets, from (N, C, H, W) tensors or lists of (C, H, W)
in [0, 1].
- ``grid_rms(outputs, references)``: RMS of the period-2 component of ``outputs - references`` (T(x) - R(x)).
  The residual is demodulated by the three period-2 carriers (-1)^y, (-1)^x, (-1)^(x+y) and averaged over
  ``block``-px blocks: each block's carrier amplitudes are the local strength of a checkerboard/stripe grid,
  while ordinary detail (which is not coherent at exactly period 2 over a block) averages out.
- ``color_distance(images, reference)``: per-channel mean and standard deviation of each set (all pixels pooled)
  and sqrt(sum over channels of (d mean^2 + d std^2) / C): 0 for the same colour statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ots.errors import ConfigError


def _stack(images) -> list[torch.Tensor]:
    items = list(images) if not isinstance(images, torch.Tensor) else list(images if images.dim() == 4 else [images])
    if not items or any(x.dim() != 3 for x in items):
        raise ConfigError("expected (N, C, H, W) images or a non-empty list of (C, H, W) images")
    return [x.detach().float().cpu() for x in items]


def grid_rms(outputs, references, block: int = 8) -> float:
    """RMS (0-255 scale) of the period-2 component of outputs - references, over all images."""
    outs, refs = _stack(outputs), _stack(references)
    if len(outs) != len(refs):
        raise ConfigError(f"grid_rms needs paired images, got {len(outs)} and {len(refs)}")
    total, count = 0.0, 0
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            raise ConfigError(f"grid_rms: image sizes differ: {tuple(o.shape)} vs {tuple(r.shape)}")
        h, w = (o.shape[-2] // block) * block, (o.shape[-1] // block) * block
        if h == 0 or w == 0:
            raise ConfigError(f"grid_rms needs images of at least {block}x{block} px")
        d = (o - r)[:, :h, :w] * 255.0
        sy = (1 - 2 * (torch.arange(h) % 2)).float()[:, None]
        sx = (1 - 2 * (torch.arange(w) % 2)).float()[None, :]
        energy = sum(F.avg_pool2d((d * carrier)[None], block)[0].square() for carrier in (sy, sx, sy * sx))
        total += float(energy.sum())
        count += energy.numel()
    return (total / count) ** 0.5


def color_stats(images) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (0-255 scale) of a set of images, all pixels pooled."""
    flat = torch.cat([x.flatten(1) for x in _stack(images)], dim=1).double() * 255.0
    return flat.mean(dim=1), flat.std(dim=1)


def color_distance(images, reference) -> float:
    """Distance (0-255 scale) between the per-channel mean/std of ``images`` and of ``reference``."""
    (m1, s1), (m2, s2) = color_stats(images), color_stats(reference)
    if m1.shape != m2.shape:
        raise ConfigError(f"color_distance: channel counts differ: {m1.numel()} vs {m2.numel()}")
    return float((((m1 - m2) ** 2 + (s1 - s2) ** 2).sum() / m1.numel()).sqrt())
