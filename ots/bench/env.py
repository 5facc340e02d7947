"""`ots bench env`: the machine a benchmark ran on (GPU, driver, torch/CUDA/cuDNN versions) as JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

import torch

from ots.bench.common import bf16_peak_tflops, write_json

NVIDIA_SMI_QUERY = "name,memory.total,driver_version,power.limit,clocks.max.sm,pcie.link.gen.current"
PACKAGES = ("numpy", "scipy", "pyarrow", "scikit-image", "torchvision", "triton", "tqdm")


def _nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return done.stdout.strip() if done.returncode == 0 else f"nvidia-smi exit {done.returncode}: {done.stderr.strip()}"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                     "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
                     "bf16_peak_tflops": bf16_peak_tflops(p.name)})
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "gpus": gpus,
        "nvidia_smi_query": _nvidia_smi(f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv"),
        "nvidia_smi": _nvidia_smi(),
        "packages": {name: _version(name) for name in PACKAGES},
        "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS") if k in os.environ},
    }


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("env", help="GPU, driver and torch/CUDA/cuDNN versions (JSON)")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_cmd_env)


def _cmd_env(args) -> int:
    info = environment()
    write_json(args.out, info)
    print(json.dumps(info, indent=2))
    return 0
