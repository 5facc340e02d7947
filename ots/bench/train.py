"""`ots bench train`: map steps/s, HR crops/s, peak memory and fraction of the bf16 peak of the training loop.

The reference loop reproduces the published code's habits (fp32, contiguous NCHW, default Adam, no
cudnn.benchmark, `torch.cuda.empty_cache()` and a `.item()` host sync after every step); the fast loop is
`OTSSolver` with channels_last, cudnn.benchmark, fused Adam, optional bf16 and no host syncs, eager or compiled
(one run per `--compile-modes` entry; "reduce-overhead" adds CUDA graphs). All loops run on the same synthetic
batches in one process, so their ratios are measured in one run. The JSON is rewritten after every run, so a
run stopped by `timeout` keeps what it measured.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

from ots.bench.common import (
    ISSUE_GFLOP_PER_HR_CROP,
    bf16_peak_tflops,
    device_name,
    first_line,
    peak_memory,
    profile,
    reset_peak_memory,
    sync,
    write_json,
    write_text,
)
from ots.costs import ReferenceMap, WeightedCost
from ots.errors import ConfigError
from ots.models import build_map, build_potential, check_sizes, count_params
from ots.solver import OTSSolver

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")

# --smoke: every code path at toy sizes on the CPU (seconds); compiled runs use the `aot_eager` backend, which
# traces with dynamo + AOTAutograd like inductor does, without generating C++/Triton code.
SMOKE = {"blocks": 1, "features": 8, "potential_filters": 8, "potential_max_filters": 16, "hr_crop": 32,
         "batch": 2, "fast_batch": None, "k_T": 2, "steps": 1, "warmup": 1, "device": "cpu"}


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
    return {"loss_map": loss_T.detach(), "loss_potential": loss_f.detach()}


class CloneOutputs(nn.Module):
    """A compiled network whose outputs own their memory.

    Under CUDA graphs a replay writes its outputs into the same static buffers, so an output still in use when
    the graph runs again -- f(T(x)) while f(y) runs in the potential step, a loss read after the step -- would
    be overwritten (the earlier `reduce-overhead` attempt failed exactly so). One clone per call (an image batch
    or a B-vector) is cheap next to the network.
    """

    def __init__(self, module: nn.Module, mode: str, backend: str):
        super().__init__()
        kwargs = {"mode": mode} if backend == "inductor" else {}  # modes are inductor options
        self.compiled = torch.compile(module, backend=backend, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x).clone()


def compile_solver(solver: OTSSolver, mode: str, backend: str = "inductor") -> None:
    """What `SolverConfig(compile=True)` does, with a compile mode and graph-safe outputs (bench-side until the
    solver takes a mode itself)."""
    solver.T_net = solver.T_train = CloneOutputs(solver.T, mode, backend)
    solver.f_net = solver.f_train = CloneOutputs(solver.f, mode, backend)


def count_flops(map_cfg: dict, pot_cfg: dict, hr_crop: int, k_T: int) -> dict:
    """FLOP per HR crop of one map step (T fwd+bwd, frozen f fwd+bwd through T(x)) and of one potential step
    (T fwd, f fwd+bwd on T(x) and on y), counted by torch's FlopCounterMode on meta tensors (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    scale = map_cfg.get("scale", 4)
    with torch.device("meta"):
        T, f = build_map(map_cfg), build_potential(pot_cfg)
        x, y = torch.empty(1, 3, hr_crop // scale, hr_crop // scale), torch.empty(1, 3, hr_crop, hr_crop)
    counter = FlopCounterMode(display=False)
    with counter:
        f.requires_grad_(False)
        (-f(T(x)).mean()).backward()
    map_step = counter.get_total_flops()
    f.requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            Tx = T(x)
        (f(Tx).mean() - f(y).mean()).backward()
    potential_step = counter.get_total_flops()
    return {"map_step_gflop": map_step / 1e9, "potential_step_gflop": potential_step / 1e9,
            "per_hr_crop_per_map_step_gflop": (map_step + potential_step / k_T) / 1e9}


def run_loop(loop: str, map_cfg: dict, pot_cfg: dict, batch: int, hr_crop: int, k_T: int, steps: int,
             warmup: int, device: torch.device, bf16: bool = False, compile: str = "eager",
             backend: str = "inductor", seed: int = 0, profile_steps: int = 0) -> dict:
    """Build fresh networks, run ``warmup`` then ``steps`` timed potential steps; throughput, memory, losses."""
    torch.manual_seed(seed)
    scale = map_cfg.get("scale", 4)
    T, f = build_map(map_cfg), build_potential(pot_cfg)
    next_lr = _batches(4, batch, hr_crop // scale, device, seed)
    next_hr = _batches(4, batch, hr_crop, device, seed + 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = loop == "fast"
    reset_peak_memory(device)
    if loop == "reference":
        if bf16 or compile != "eager":
            raise ConfigError("the reference loop is fp32 eager only")
        T, f = T.to(device), f.to(device)
        opt_T, opt_f = torch.optim.Adam(T.parameters(), 1e-4), torch.optim.Adam(f.parameters(), 1e-4)

        def step():
            return reference_step(T, f, opt_T, opt_f, next_lr, next_hr, k_T, scale, device)
    elif loop == "fast":
        solver = OTSSolver(T, f, WeightedCost({"mse": 0.5}), ReferenceMap(scale), device=device,
                           config={"k_T": k_T, "channels_last": True, "bf16": bf16, "check_every": 0})
        if compile != "eager":
            compile_solver(solver, compile, backend)
        graphs = compile in CUDAGRAPH_MODES and backend == "inductor"

        def step():
            if graphs:  # a new iteration: outputs of earlier replays may be reused from here on
                torch.compiler.cudagraph_mark_step_begin()
            return solver.step(next_lr, next_hr)
    else:
        raise ConfigError(f"unknown loop {loop!r}: use reference or fast")
    counters = _compile_counters()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = step()
    sync(device)
    seconds = time.perf_counter() - t0
    if loop == "fast":
        solver.check_finite()
    map_steps_s = steps * k_T / seconds
    result = {"loop": loop, "status": "ok", "bf16": bf16, "compile": compile, "batch": batch,
              "map_steps_per_s": map_steps_s, "hr_crops_per_s": map_steps_s * batch, "seconds": seconds,
              "warmup_seconds": warmup_s, **peak_memory(device),
              "final_losses": {k: float(v) for k, v in losses.items()}}  # same seed and batches in every run
    if compile != "eager":
        result.update(_compile_counters(since=counters))
    if profile_steps > 0:
        try:
            result["profile"], result["profile_text"] = profile(step, device, profile_steps)
        except Exception as e:  # noqa: BLE001 - a profiler failure must not discard the measurement
            result["profile_error"] = first_line(e)
    return result


def _compile_counters(since: dict | None = None) -> dict:
    """Graphs compiled and CUDA-graph skips (inductor says why in its log) since ``since``."""
    from torch._dynamo.utils import counters

    now = {"graphs_compiled": counters["stats"]["unique_graphs"],
           "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}
    return {k: v - since[k] for k, v in now.items()} if since else now


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("train", help="training-step throughput: reference loop vs ours, eager/compiled (JSON)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--potential-filters", type=int, default=64, help="critic width at full resolution")
    p.add_argument("--potential-max-filters", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--hr-crop", type=int, default=64)
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--k-T", dest="k_T", type=int, default=15)
    p.add_argument("--steps", type=int, default=2, help="timed potential steps (each has k_T map steps)")
    p.add_argument("--warmup", type=int, default=1, help="untimed potential steps first (compilation happens here)")
    p.add_argument("--loop", choices=["reference", "fast", "both"], default="both")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the fast loop")
    p.add_argument("--compile", action="store_true", help="same as --compile-modes default")
    p.add_argument("--compile-modes", default=None,
                   help=f"comma list, one fast run each: {', '.join(COMPILE_MODES)} (default: eager)")
    p.add_argument("--compile-fallback", choices=COMPILE_MODES, default=None,
                   help="when a compiled run fails, run this mode instead (e.g. default after reduce-overhead)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor; aot_eager with --smoke)")
    p.add_argument("--fast-batch", type=int, help="batch for the fast loop (default: --batch)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile this many potential steps of each fast run: top kernels in the JSON, table in "
                        "<out>.<compile>.profile.txt")
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks every code path in seconds")
    p.add_argument("--out")
    p.set_defaults(func=_bench)


def _modes(args) -> list[str]:
    modes = [m.strip() for m in (args.compile_modes or ("default" if args.compile else "eager")).split(",")]
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad or not modes:
        raise ConfigError(f"unknown compile mode(s) {', '.join(bad)}: use {', '.join(COMPILE_MODES)}")
    return modes


def _bench(args) -> int:
    if args.smoke:  # toy sizes whatever the command line says: gpu_all.sh --smoke runs its GPU commands so
        for k, v in SMOKE.items():
            setattr(args, k, v)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    map_cfg = {"arch": "edsr", "n_blocks": args.blocks, "n_features": args.features, "scale": args.scale}
    pot_cfg = {"arch": "resnet", "crop": args.hr_crop, "n_filters": args.potential_filters,
               "max_filters": args.potential_max_filters}
    check_sizes(map_cfg, pot_cfg, args.hr_crop // args.scale, args.hr_crop)
    if args.steps < 1 or args.batch < 1 or args.warmup < 0 or args.profile_steps < 0:
        raise ConfigError("need --steps >= 1, --batch >= 1, --warmup >= 0, --profile-steps >= 0")
    modes, notes = _modes(args), []
    compiled = [m for m in modes if m != "eager"]
    if args.compile_backend != "inductor" and len(compiled) > 1:  # modes are inductor options: one run is enough
        notes.append(f"backend {args.compile_backend} ignores compile modes: ran {compiled[0]} only, not "
                     f"{', '.join(compiled[1:])}")
        modes = [m for m in modes if m not in compiled[1:]]
    name = device_name(device)
    flops = count_flops(map_cfg, pot_cfg, args.hr_crop, args.k_T)
    out = {"bench": "train", "device": name, "torch": torch.__version__, "smoke": args.smoke, "complete": False,
           "config": {"map": map_cfg, "potential": pot_cfg, "batch": args.batch, "hr_crop": args.hr_crop,
                      "k_T": args.k_T, "steps": args.steps, "warmup": args.warmup,
                      "compile_backend": args.compile_backend,
                      "map_params": count_params(build_map(map_cfg)),
                      "potential_params": count_params(build_potential(pot_cfg))},
           "flops": {**flops, "issue_gflop_per_hr_crop": ISSUE_GFLOP_PER_HR_CROP},
           "bf16_peak_tflops": bf16_peak_tflops(name) if device.type == "cuda" else None,
           "notes": notes, "runs": []}
    common = dict(map_cfg=map_cfg, pot_cfg=pot_cfg, hr_crop=args.hr_crop, k_T=args.k_T, steps=args.steps,
                  warmup=args.warmup, device=device)
    plan = []
    if args.loop in ("reference", "both"):
        plan.append(dict(loop="reference", batch=args.batch))
    if args.loop in ("fast", "both"):
        fast_batch = args.fast_batch or args.batch
        plan += [dict(loop="fast", batch=fast_batch, bf16=args.bf16, compile=m, backend=args.compile_backend,
                      profile_steps=args.profile_steps) for m in modes]
    for spec in plan:
        out["runs"].append(_one_run(spec, common, out, args.out))
        last = out["runs"][-1]
        if last["status"] != "ok" and args.compile_fallback and spec.get("compile") not in ("eager", None) \
                and args.compile_fallback not in modes:  # e.g. CUDA graphs did not hold: the same without them
            retry = _one_run({**spec, "compile": args.compile_fallback}, common, out, args.out)
            out["runs"].append({**retry, "fallback_for": spec["compile"], "fallback_reason": last["error"]})
    ok = {r["loop"]: r for r in reversed(out["runs"]) if r["status"] == "ok"}  # first ok run of each loop
    out.update(ok)
    if "reference" in ok and "fast" in ok:
        out["speedup_hr_crops_per_s"] = ok["fast"]["hr_crops_per_s"] / ok["reference"]["hr_crops_per_s"]
    out["complete"] = True
    write_json(args.out, out)
    print(json.dumps(out, indent=2))
    print(_summary(out), file=sys.stderr)
    return 0


def _one_run(spec: dict, common: dict, out: dict, path: str | None) -> dict:
    """One configuration; a failure (e.g. a compile mode that does not hold) is recorded, not raised."""
    label = {"loop": spec["loop"], "batch": spec["batch"], "bf16": spec.get("bf16", False),
             "compile": spec.get("compile", "eager")}
    write_json(path, {**out, "running": label})  # a timeout leaves the name of the run it cut short
    t0 = time.perf_counter()
    try:
        r = run_loop(**spec, **common)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a configuration that fails (compile, CUDA graphs, OOM, NaN) is a result
        r = {**label, "status": "failed", "error": first_line(e), "seconds_until_failure": time.perf_counter() - t0}
    finally:
        if spec.get("compile", "eager") != "eager":
            torch._dynamo.reset()  # the next mode compiles from scratch, not from this one's caches
    if r["status"] == "ok":
        _add_fractions(r, out)
    text = r.pop("profile_text", None)
    if text and path:
        r["profile_table"] = f"{path.removesuffix('.json')}.{r['compile']}.profile.txt"
        write_text(r["profile_table"], f"{out['device']} -- {label}\n{text}")
    return r


def _add_fractions(r: dict, out: dict) -> None:
    """Achieved TFLOP/s and the fraction of the card's dense bf16 peak (the issue's 'physical limit')."""
    for key, gflop in (("counted", out["flops"]["per_hr_crop_per_map_step_gflop"]),
                       ("issue_140gflop", ISSUE_GFLOP_PER_HR_CROP)):
        tflops = r["hr_crops_per_s"] * gflop / 1e3
        r[f"tflops_{key}"] = tflops
        peak = out["bf16_peak_tflops"]
        r[f"fraction_of_bf16_peak_{key}"] = tflops / peak if peak else None


def _summary(out: dict) -> str:
    lines = [f"ots bench train on {out['device']} (torch {out['torch']})"]
    for r in out["runs"]:
        tag = f"{r['loop']:9s} batch {r['batch']:3d} {'bf16' if r['bf16'] else 'fp32'} {r['compile']:26s}"
        if r["status"] != "ok":
            lines.append(f"  {tag} FAILED: {r['error']}")
            continue
        frac = r.get("fraction_of_bf16_peak_counted")
        lines.append(f"  {tag} {r['map_steps_per_s']:8.2f} map steps/s {r['hr_crops_per_s']:9.1f} HR crops/s "
                     f"peak {r['peak_memory_mb']:7.0f} MB" + (f"  {100 * frac:5.1f}% of bf16 peak" if frac else ""))
    if "speedup_hr_crops_per_s" in out:
        lines.append(f"  speedup fast/reference: {out['speedup_hr_crops_per_s']:.2f}x")
    return "\n".join(lines)
