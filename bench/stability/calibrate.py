"""Calibrate val SWD: what bicubic, fixed filters, the clean HR and HR itself score on a data set's val pairs.

    python bench/stability/calibrate.py data/demo
"""

import sys

import torch
import torch.nn.functional as F

from ots.fit import Validation


def blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(3 * sigma) * 2 + 1
    g = torch.exp(-((torch.arange(k) - k // 2) ** 2) / (2 * sigma * sigma))
    g = (g / g.sum()).to(t)
    t = F.conv2d(F.pad(t, (k // 2, k // 2, 0, 0), mode="reflect"), g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(t, (0, 0, k // 2, k // 2), mode="reflect"), g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)


def main(dataset: str) -> None:
    torch.set_num_threads(1)
    val = Validation(dataset, 4, torch.device("cpu"))
    up = lambda x: F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)  # noqa: E731
    rows = {"bicubic": [up(x) for x in val.lr]}
    for a, s in ((1.0, 1.0), (2.0, 1.0)):
        rows[f"bicubic + unsharp mask (amount {a}, sigma {s})"] = [(lambda b: b + a * (b - blur(b, s)))(up(x))
                                                                     for x in val.lr]
    rows["LR blurred (sigma 1) + bicubic + unsharp mask"] = [(lambda b: b + (b - blur(b, 2.0)))(up(blur(x, 1.0)))
                                                             for x in val.lr]
    rows["bicubic of the clean HR (degradation undone)"] = [up(F.interpolate(h * 2 - 1, scale_factor=0.25,
                                                                             mode="area")) for h in val.hr]
    for name, outs in rows.items():
        s = val.score([val._quantize(o) for o in outs])
        print(f"{name:48s} SWD {s['swd']:7.2f}  PSNR {s['psnr']:6.2f}")
    s = val.score([h for h in val.hr])
    print(f"{'HR itself (the estimator floor)':48s} SWD {s['swd']:7.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/demo")
