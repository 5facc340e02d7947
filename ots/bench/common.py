"""What every benchmark shares: device names and peaks, timing syncs, peak memory, profiler tables, JSON files."""

from __future__ import annotations

import json
import os
import platform
import resource

import torch

from ots.atomic import write_text
from ots.errors import one_line

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Keys are matched as
# substrings of torch.cuda.get_device_name(); the longest match wins ("H100 PCIe" before "H100").
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM (H100 80GB HBM3)
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}

# The issue's round figure for one map step: FLOP per HR crop (EDSR 64x128 fwd+bwd, critic fwd+bwd through T(x)).
ISSUE_GFLOP_PER_HR_CROP = 140.0


def bf16_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card not in the table (and for CPUs)."""
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for queued device work (timings are host clocks around device work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak since the last reset: CUDA max_memory_allocated; on CPU the process's max RSS (never reset)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "peak_memory_kind": "process_max_rss"}


def first_line(e: BaseException) -> str:
    """An exception as one short line (type and first line of its message) for a JSON field."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {one_line(lines[0], 300)}" if lines else type(e).__name__


def write_json(path: str | os.PathLike | None, obj) -> None:
    """Atomic write (:mod:`ots.atomic`): a reader, or a run killed by `timeout`, never sees half a file."""
    if path:
        write_text(path, json.dumps(obj, indent=2) + "\n")


def profile(fn, device: torch.device, steps: int, top: int = 15) -> tuple[list[dict], str]:
    """Run ``fn`` ``steps`` times under torch.profiler; the top kernels (device time on CUDA, CPU time
    elsewhere) as JSON rows and as the profiler's text table."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # On CUDA the kernels themselves (device events), not the aten ops that launched them (no double count).
    rows = [e for e in events if getattr(e, key) > 0 and (not cuda or e.device_type == DeviceType.CUDA)]
    total = sum(getattr(e, key) for e in rows) or 1.0
    rows.sort(key=lambda e: getattr(e, key), reverse=True)
    table = [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3,
              "percent": 100.0 * getattr(e, key) / total} for e in rows[:top]]
    text = events.table(sort_by=key, row_limit=top, max_name_column_width=90)
    return table, text
