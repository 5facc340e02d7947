"""The one validator: how a map is scored while it trains and what its grids show.

:class:`Validation` maps the full validation LR images and scores them against the validation HR images --
colour-aware SWD (the selection metric), mean PSNR, colour distance -- beside bicubic's scores; ``ots fit``, the
Ray worker (:mod:`pipelines.train.tracking`), the ladder and the probe use it. :func:`unpaired_crops` and
:func:`crop_score` are the tune trial's cheaper variant: a metric on fixed crops of each domain. Grids of
LR | bicubic | map | HR are :mod:`ots.imagegrid` canvases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ots.errors import ConfigError


def _dataset(data):
    """A shard dataset: ``data`` itself, or opened from its URI (the manifest is read once, by whoever opens)."""
    from ots.data.shard_reader import open_dataset

    return open_dataset(data, verify=False) if isinstance(data, str) else data


def quantize(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] on the uint8 grid: what a user gets as a PNG."""
    return ((y.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


class Validation:
    """Full validation images, mapped by T and compared with the HR images (SWD) and pairwise (PSNR)."""

    def __init__(self, data, scale: int, device: torch.device, max_images: int = 0, seed: int = 0,
                 patches: int | None = None):
        from ots.data.loader import crops_to_tensor
        from ots.metrics.swd import EVAL_PATCHES

        self.dataset = _dataset(data)
        self.all_pairs = self.dataset.val_pairs()  # decoded once: the scores and the grids' crops read them
        pairs = self.all_pairs[:max_images] if max_images else self.all_pairs
        if not pairs:
            raise ConfigError(f"{self.dataset.uri}: no validation pairs to select the map by")
        self.pairs = pairs
        self.names = [n for n, _, _ in pairs]
        self.lr = [crops_to_tensor(lr[None]) for _, lr, _ in pairs]
        self.hr = [(crops_to_tensor(hr[None]) + 1) / 2 for _, _, hr in pairs]
        self.scale, self.device, self.seed, self.patches = scale, device, seed, patches or EVAL_PATCHES
        self.bicubic = self.score(self.bicubic_outputs())

    def bicubic_outputs(self, lr: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Bicubic x scale of the val LR images (or of ``lr``, inputs in [-1, 1]), on the uint8 grid: R(x)."""
        return [quantize(F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False))
                for x in (self.lr if lr is None else lr)]

    @torch.no_grad()
    def outputs(self, net: torch.nn.Module) -> list[torch.Tensor]:
        was = net.training
        net.eval()
        out = [quantize(net(x.to(self.device)).cpu()) for x in self.lr]
        net.train(was)
        return out

    def score(self, outputs: list[torch.Tensor]) -> dict:
        """Colour-aware SWD against the HR set (the selection metric), mean PSNR, colour distance to HR."""
        from ots.metrics import color_distance, psnr, swd

        sr, hr = [o[0] for o in outputs], [h[0] for h in self.hr]
        s = swd(sr, hr, patches_per_image=self.patches, seed=self.seed)
        p = sum(psnr(o, h) for o, h in zip(outputs, self.hr)) / len(outputs)
        return {"swd": s["mean"], "psnr": p, "color": color_distance(sr, hr)}

    def __call__(self, net: torch.nn.Module) -> dict:
        return self.score(self.outputs(net))

    def grid(self, columns: dict[str, list[torch.Tensor]], images: int = 4, crop: int = 192,
             title: str = "") -> np.ndarray:
        """LR (nearest) | each of ``columns`` (outputs in [0, 1], one per val image) | HR: centre crops of the
        first ``images`` val images, labelled (``title`` before the first label)."""
        from ots.imagegrid import center_crop, nearest, panel_grid, tensor_rgb8

        rows = []
        for i, (_, lr, hr) in enumerate(self.pairs[:images]):
            panels = [nearest(lr, self.scale), *(tensor_rgb8(col[i]) for col in columns.values()), hr]
            rows.append([center_crop(p, crop) for p in panels])
        return panel_grid(rows, [f"{title}: LR" if title else "LR", *columns, "HR"], gap=2)

    def save_grid(self, path: str | Path, net: torch.nn.Module, images: int = 4, crop: int = 192) -> None:
        """LR | bicubic | map | HR for ``net`` as a PNG."""
        from ots.imagewrite import write_image

        write_image(path, self.grid({"bicubic": self.bicubic_outputs(), "map": self.outputs(net)}, images, crop))


def val_crops(pairs, n: int, lr_crop: int, scale: int):
    """Centre crops of the first ``n`` val ``pairs`` (LR and the matching HR, [-1, 1] NCHW), for the train run's
    image grids; (None, None) when no val image is large enough."""
    from ots.data.loader import crops_to_tensor

    lrs, hrs = [], []
    for _, lr, hr in pairs[:n]:
        h, w = lr.shape[:2]
        if h < lr_crop or w < lr_crop:
            continue
        y, x = (h - lr_crop) // 2, (w - lr_crop) // 2
        lrs.append(lr[y : y + lr_crop, x : x + lr_crop])
        hrs.append(hr[y * scale : (y + lr_crop) * scale, x * scale : (x + lr_crop) * scale])
    if not lrs:
        return None, None
    return crops_to_tensor(np.stack(lrs)), crops_to_tensor(np.stack(hrs))


def unpaired_crops(data, n: int, lr_crop: int, hr_crop: int, seed: int):
    """(LR crops, HR crops, source): ``n`` fixed random crops of each domain, drawn independently of each other
    -- from the val pairs' LR and HR images, else (no val pairs large enough) from the training domains."""
    from ots.data.loader import CropStream, crops_to_tensor, random_crops

    ds = _dataset(data)
    pairs = ds.val_pairs()
    lrs = [lr for _, lr, _ in pairs if min(lr.shape[:2]) >= lr_crop]
    hrs = [hr for _, _, hr in pairs if min(hr.shape[:2]) >= hr_crop]
    if lrs and hrs:
        lr = random_crops(lrs, lr_crop, n, np.random.default_rng([seed, 1]), augment=False)
        hr = random_crops(hrs, hr_crop, n, np.random.default_rng([seed, 2]), augment=False)
        return crops_to_tensor(lr), crops_to_tensor(hr), "val"
    lr = CropStream(ds, "lr", crop=lr_crop, batch_size=n, seed=seed + 7919, augment=False).batch(0)
    hr = CropStream(ds, "hr", crop=hr_crop, batch_size=n, seed=seed + 104729, augment=False).batch(0)
    return lr, hr, "train"


def crop_score(metric: str, net_of, val_lr: torch.Tensor, val_hr: torch.Tensor, device, seed: int,
               inception_weights=None):
    """A function of no arguments: ``metric`` (``swd`` or ``fid``) of the map ``net_of()`` returns, on the fixed
    crops (the map runs on ``device``, the metric on the host: a host sync)."""
    from ots import metrics

    inception = metrics.build_inception(inception_weights) if metric == "fid" else None

    def score() -> float:
        T = net_of()
        was = T.training
        T.eval()
        with torch.no_grad():
            sr = T(val_lr.to(device)).float().clamp(-1, 1).cpu()
        T.train(was)
        if metric == "fid":
            return float(metrics.fid(inception, (sr + 1) / 2, (val_hr + 1) / 2))
        return float(metrics.swd(sr, val_hr, seed=seed)["mean"])

    return score
