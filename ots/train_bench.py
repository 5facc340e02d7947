"""`ots bench train`: map steps/s, HR crops/s and peak memory of the training loop, reference vs ours.

The reference loop reproduces the published code's habits (fp32, contiguous NCHW, default Adam, no
cudnn.benchmark, `torch.cuda.empty_cache()` and a `.item()` host sync after every step); the fast loop is
`OTSSolver` with channels_last, cudnn.benchmark, fused Adam, optional bf16/compile and no host syncs. Both run on
the same synthetic batches in one process, so their ratio is measured in one run.
"""

from __future__ import annotations

import json
import platform
import resource
import time

import torch

from ots.costs import ReferenceMap, WeightedCost
from ots.errors import ConfigError
from ots.models import build_map, build_potential, check_sizes, count_params
from ots.solver import OTSSolver


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _batches(n: int, batch: int, size: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    pool = [(torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device) for _ in range(n)]
    i = -1

    def next_batch():
        nonlocal i
        i = (i + 1) % n
        return pool[i]

    return next_batch


def reference_step(T, f, opt_T, opt_f, next_lr, next_hr, k_T, scale, device):
    """One step the way the reference code does it (kept deliberately naive: it is the baseline)."""
    for _ in range(k_T):
        x = next_lr()
        Tx = T(x)
        cost = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic")
        loss_T = 0.5 * (Tx - cost).square().flatten(1).mean(1).mean() - f(Tx).mean()
        opt_T.zero_grad()
        loss_T.backward()
        opt_T.step()
        loss_T.item()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    x, y = next_lr(), next_hr()
    with torch.no_grad():
        Tx = T(x)
    loss_f = f(Tx).mean() - f(y).mean()
    opt_f.zero_grad()
    loss_f.backward()
    opt_f.step()
    loss_f.item()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_loop(loop: str, map_cfg: dict, pot_cfg: dict, batch: int, hr_crop: int, k_T: int, steps: int,
             warmup: int, device: torch.device, bf16: bool = False, compile: bool = False, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    scale = map_cfg.get("scale", 4)
    T, f = build_map(map_cfg), build_potential(pot_cfg)
    next_lr = _batches(4, batch, hr_crop // scale, device, seed)
    next_hr = _batches(4, batch, hr_crop, device, seed + 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = loop == "fast"
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if loop == "reference":
        T, f = T.to(device), f.to(device)
        opt_T, opt_f = torch.optim.Adam(T.parameters(), 1e-4), torch.optim.Adam(f.parameters(), 1e-4)

        def step():
            reference_step(T, f, opt_T, opt_f, next_lr, next_hr, k_T, scale, device)
    elif loop == "fast":
        solver = OTSSolver(T, f, WeightedCost({"mse": 0.5}), ReferenceMap(scale), device=device,
                           config={"k_T": k_T, "channels_last": True, "bf16": bf16, "compile": compile,
                                   "check_every": 0})

        def step():
            solver.step(next_lr, next_hr)
    else:
        raise ConfigError(f"unknown loop {loop!r}: use reference or fast")
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t0
    if loop == "fast":
        solver.check_finite()
    map_steps_s = steps * k_T / seconds
    return {"loop": loop, "bf16": bf16, "compile": compile, "batch": batch, "map_steps_per_s": map_steps_s,
            "hr_crops_per_s": map_steps_s * batch, "seconds": seconds, "warmup_seconds": warmup_s,
            "peak_memory_mb": _peak_memory_mb(device),
            # CUDA: this loop's max allocated; CPU: the process's max RSS so far (not reset between loops)
            "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("train", help="training-step throughput: reference loop vs ours (JSON)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hr-crop", type=int, default=64)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--k-T", dest="k_T", type=int, default=15)
    p.add_argument("--steps", type=int, default=2, help="timed potential steps (each has k_T map steps)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--loop", choices=["reference", "fast", "both"], default="both")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the fast loop")
    p.add_argument("--compile", action="store_true", help="torch.compile in the fast loop")
    p.add_argument("--fast-batch", type=int, help="batch for the fast loop (default: --batch)")
    p.add_argument("--device", default=None)
    p.add_argument("--out")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    map_cfg = {"arch": "edsr", "n_blocks": args.blocks, "n_features": args.features, "scale": args.scale}
    pot_cfg = {"arch": "resnet", "crop": args.hr_crop}
    check_sizes(map_cfg, pot_cfg, args.hr_crop // args.scale, args.hr_crop)
    if args.steps < 1 or args.batch < 1 or args.warmup < 0:
        raise ConfigError("need --steps >= 1, --batch >= 1, --warmup >= 0")
    out = {"device": device_name(device), "torch": torch.__version__,
           "config": {"map": map_cfg, "potential": pot_cfg, "batch": args.batch, "hr_crop": args.hr_crop,
                      "k_T": args.k_T, "steps": args.steps, "warmup": args.warmup,
                      "map_params": count_params(build_map(map_cfg)),
                      "potential_params": count_params(build_potential(pot_cfg))}}
    common = dict(map_cfg=map_cfg, pot_cfg=pot_cfg, hr_crop=args.hr_crop, k_T=args.k_T, steps=args.steps,
                  warmup=args.warmup, device=device)
    if args.loop in ("reference", "both"):
        out["reference"] = run_loop("reference", batch=args.batch, **common)
    if args.loop in ("fast", "both"):
        out["fast"] = run_loop("fast", batch=args.fast_batch or args.batch, bf16=args.bf16, compile=args.compile,
                               **common)
    if "reference" in out and "fast" in out:
        out["speedup_hr_crops_per_s"] = out["fast"]["hr_crops_per_s"] / out["reference"]["hr_crops_per_s"]
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0
