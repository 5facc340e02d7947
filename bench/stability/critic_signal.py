"""How much does the potential's gradient know about Q? Train f alone on bicubic(LR) vs HR crops, then move the
bicubic validation outputs along its gradient and score them (val SWD / PSNR).

    python bench/stability/critic_signal.py data/demo --steps 300 --lr 1e-3 [--noise 0.1]
"""

import argparse

import torch
import torch.nn.functional as F
import yaml

from ots.data import CropStream
from ots.fit import Validation
from ots.solver import build_solver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--params", default="bench/stability/base.yaml")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = yaml.safe_load(open(args.params))
    # warmup = forever: T stays at R = bicubic, only the potential learns
    s = build_solver(p["model"], {**p["solver"], "warmup": 10**9, "lr_potential": args.lr, "noise": args.noise},
                     device="cpu", seed=0)
    lr = CropStream(args.dataset, "lr", crop=16, batch_size=16, seed=0)
    hr = CropStream(args.dataset, "hr", crop=64, batch_size=16, seed=0)
    pos = {"lr": 0, "hr": 0}

    def nxt(stream, key):
        def batch():
            pos[key] += 1
            return stream.batch(pos[key])
        return batch

    for _ in range(args.steps):
        out = s.step(nxt(lr, "lr"), nxt(hr, "hr"))
    print(f"potential alone, {args.steps} steps at lr {args.lr}: f(T x) - f(y) = {float(out['loss_potential']):.4g}")
    val, f = Validation(args.dataset, 4, torch.device("cpu")), s.f.eval()
    bic = [F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False) for x in val.lr]
    grads = []
    for b in bic:  # gradient of the mean potential over 64-px tiles (stride 32), averaged over the noise
        g = 0
        for _ in range(4 if args.noise else 1):
            y = b.clone().requires_grad_(True)
            t = (y + args.noise * torch.randn_like(y)).unfold(2, 64, 32).unfold(3, 64, 32)
            f(t.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 64, 64)).sum().backward()
            g = g + y.grad
        grads.append(g)
    for alpha in (0.0, 1.0, 2.0, 4.0, 8.0):
        outs = [val._quantize(b + g / (g.square().mean().sqrt() + 1e-12) * 0.01 * alpha) for b, g in zip(bic, grads)]
        sc = val.score(outs)
        print(f"step along grad f, RMS {0.01 * alpha:.2f}: SWD {sc['swd']:.2f}  PSNR {sc['psnr']:.2f}")


if __name__ == "__main__":
    main()
