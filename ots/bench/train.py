"""`ots bench train`: map steps/s, HR crops/s, peak memory and fraction of the bf16 peak of the training loop.

The reference loop reproduces the published code's habits (fp32, contiguous NCHW, default Adam, no
cudnn.benchmark, `torch.cuda.empty_cache()` and a `.item()` host sync after every step); the fast loop is
`OTSSolver` with channels_last, cudnn.benchmark, fused Adam, optional bf16 and no host syncs, eager or compiled
(one run per `--compile-modes` entry; "reduce-overhead" adds CUDA graphs). All loops run on the same synthetic
batches in one process, so their ratios are measured in one run. The JSON is rewritten after every run, so a
run stopped by `timeout` keeps what it measured. This module measures; the CLI is :mod:`ots.bench.train_cli`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ots.bench.common import (
    first_line,
    peak_memory,
    profile,
    reset_peak_memory,
    sync,
)
from ots.config import SolverConfig
from ots.costs import ReferenceMap, WeightedCost
from ots.errors import ConfigError
from ots.models import build_map, build_potential
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

    scale = map_cfg["scale"]
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
    scale = map_cfg["scale"]
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
                           config=SolverConfig(k_T=k_T, channels_last=True, bf16=bf16, check_every=0))
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
