"""`ots bench infer`: output megapixels/s and peak memory of `ots.infer.upscale_tensor`, untiled and tiled.

One configuration per (input size, precision, compile mode, tile): the timing is end to end as a user sees it
(host tensor in, host tensor out, tiles blended on the host), best of ``repeats`` after ``warmup`` calls (which
include compilation). The JSON is rewritten after every configuration, so a run stopped by `timeout` keeps what
it measured.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

from ots.bench.common import device_name, first_line, peak_memory, reset_peak_memory, sync, write_json
from ots.checkpoint import load_map
from ots.device import resolve_device
from ots.errors import ConfigError
from ots.tiling import DEFAULT_OVERLAP, resolve_precision, tile_starts, upscale_tensor

COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
# --smoke: every code path at toy sizes on the CPU (seconds); compiled runs use the `aot_eager` backend.
SMOKE = {"sizes": "24", "tiles": "0,16", "overlaps": "2,4", "n_blocks": 1, "n_features": 8, "repeats": 1,
         "warmup": 1, "precisions": "fp32", "device": "cpu"}


def bench_infer(
    model: nn.Module,
    size: int,
    *,
    tile: int | None,
    overlap: int = DEFAULT_OVERLAP,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    batch_tiles: int = 4,
    repeats: int = 3,
    warmup: int = 1,
) -> dict:
    """Best-of-``repeats`` output megapixels/s for a size x size input (CPU tensor in, CPU tensor out)."""
    dev = resolve_device(device)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kw = dict(tile=tile, overlap=overlap, device=dev, precision=precision, batch_tiles=batch_tiles)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    for _ in range(warmup):
        upscale_tensor(model, x, **kw)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(max(1, repeats)):
        sync(dev)
        t0 = time.perf_counter()
        y = upscale_tensor(model, x, **kw)
        sync(dev)
        times.append(time.perf_counter() - t0)
    mp = y.shape[-1] * y.shape[-2] / 1e6
    best = min(times)
    model_s = _model_only_seconds(model, x, dev, precision, repeats) if tile is None else None
    n = len(tile_starts(size, tile, overlap)) if tile else 1
    side = min(tile, size) if tile else size
    return {"tiled": tile is not None, "tile": tile, "overlap": overlap if tile else 0, "precision": precision,
            "input": [size, size], "output": list(y.shape[-2:]), "tiles": n * n,
            # pixels the network processes / image pixels: the geometric cost of overlapping tiles
            "pixels_processed_ratio": (n * side) ** 2 / size**2, "seconds": best,
            "median_seconds": sorted(times)[len(times) // 2], "warmup_seconds": warmup_s,
            "output_mp_per_s": mp / best,
            # the network alone (input already on the device, output left there): the rest is transfers/tiling
            "model_only_mp_per_s": mp / model_s if model_s else None, **peak_memory(dev)}


@torch.inference_mode()
def _model_only_seconds(model: nn.Module, x: torch.Tensor, dev: torch.device, precision: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds of one forward pass on a device-resident input (after one untimed pass)."""
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format  # as upscale_tensor feeds it
    x = x.to(dev).contiguous(memory_format=fmt)
    times = []
    for i in range(max(1, repeats) + 1):
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(x)
        sync(dev)
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("infer", help="inference throughput (output MP/s) and peak memory, tiled/untiled (JSON)")
    p.add_argument("--size", "--sizes", dest="sizes", default="128",
                   help="LR input size(s), square, comma list (e.g. 256,512)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--n-blocks", type=int, default=8)
    p.add_argument("--n-features", type=int, default=64)
    p.add_argument("--checkpoint", default=None, help="benchmark this map instead of a random EDSR")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration (compilation included)")
    p.add_argument("--tile", "--tiles", dest="tiles", default="64",
                   help="tile size(s) in LR px besides the untiled run, comma list; 0 = untiled only; tiles not "
                        "smaller than the input are skipped (they are the untiled run)")
    p.add_argument("--overlap", "--overlaps", dest="overlaps", default="16",
                   help="LR px shared by neighbouring tiles, comma list (one tiled run per tile and overlap)")
    p.add_argument("--batch-tiles", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="one precision")
    p.add_argument("--precisions", default=None,
                   help="comma list, e.g. fp32,bf16 (default: --precision; auto = fp32, plus bf16 on CUDA)")
    p.add_argument("--compile-modes", default="eager", help=f"comma list: {', '.join(COMPILE_MODES)}")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor; aot_eager with --smoke)")
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks every code path in seconds")
    p.add_argument("--out", help="also write the JSON here (rewritten after every configuration)")
    p.set_defaults(func=_cmd_bench)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{what} must be non-negative integers, got {text!r}")
    return values


def _plan(args, dev: torch.device) -> tuple[list[int], list[tuple[int, int]], list[str], list[str]]:
    sizes = _ints(args.sizes, "--size")
    if 0 in sizes:
        raise ConfigError("--size must be >= 1")
    overlaps = _ints(args.overlaps, "--overlap")
    tiles = [(t, o) for t in sorted({t for t in _ints(args.tiles, "--tile") if t}) for o in overlaps]
    if any(o >= t for t, o in tiles):
        raise ConfigError(f"every overlap must be smaller than every tile, got tiles {args.tiles!r}, "
                          f"overlaps {args.overlaps!r}")
    if args.precisions:
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    elif args.precision != "auto":
        precisions = [args.precision]
    else:
        precisions = ["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]
    precisions = [resolve_precision(p, dev) for p in precisions]  # one-line error for bf16 on a CPU
    modes = [m.strip() for m in args.compile_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in COMPILE_MODES]
    if bad or not modes:
        raise ConfigError(f"unknown compile mode(s) {', '.join(bad)}: use {', '.join(COMPILE_MODES)}")
    if args.repeats < 1 or args.warmup < 0 or args.batch_tiles < 1:
        raise ConfigError("need --repeats >= 1, --warmup >= 0, --batch-tiles >= 1")
    return sizes, tiles, precisions, modes


def _compiled(model: nn.Module, mode: str, backend: str) -> nn.Module:
    if mode == "eager":
        return model
    kwargs = {"mode": mode} if backend == "inductor" else {}  # modes are inductor options
    # dynamic=False: one specialised graph per tile-batch shape (a handful), no slower symbolic-shape kernels.
    return torch.compile(model, backend=backend, dynamic=False, **kwargs)


def _cmd_bench(args) -> int:
    if args.smoke:  # toy sizes whatever the command line says: gpu_all.sh --smoke runs its GPU commands so
        for k, v in SMOKE.items():
            setattr(args, k, v)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    dev = resolve_device(args.device)
    sizes, tiles, precisions, modes = _plan(args, dev)
    if args.checkpoint:
        model = load_map(args.checkpoint, device=str(dev))
        desc = {"checkpoint": args.checkpoint}
    else:
        from ots.models.edsr import EDSR

        torch.manual_seed(0)
        model = EDSR(n_blocks=args.n_blocks, n_features=args.n_features, scale=args.scale)
        desc = {"arch": "edsr", "n_blocks": args.n_blocks, "n_features": args.n_features, "scale": args.scale}
    report = {"bench": "infer", "device": device_name(dev), "torch": torch.__version__, "smoke": args.smoke,
              "model": desc, "compile_backend": args.compile_backend, "complete": False, "results": []}
    for mode in modes:
        net = _compiled(model, mode, args.compile_backend)
        for prec in precisions:
            for size in sizes:
                for tile, overlap in [(None, 0)] + [(t, o) for t, o in tiles if t < size]:
                    label = {"compile": mode, "precision": prec, "input": [size, size], "tile": tile,
                             "overlap": overlap}
                    write_json(args.out, {**report, "running": label})
                    try:
                        r = bench_infer(net, size, tile=tile, overlap=overlap, device=dev, precision=prec,
                                        batch_tiles=args.batch_tiles, repeats=args.repeats, warmup=args.warmup)
                        r = {"compile": mode, "status": "ok", **r}
                    except ConfigError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a failed configuration (compile, OOM) is a result
                        r = {**label, "status": "failed", "error": first_line(e)}
                    report["results"].append(r)
        if mode != "eager":
            torch._dynamo.reset()
    _relative_to_untiled(report["results"])
    report["complete"] = True
    write_json(args.out, report)
    print(json.dumps(report, indent=2))
    print(_summary(report), file=sys.stderr)
    return 0


def _relative_to_untiled(results: list[dict]) -> None:
    """Tiled MP/s as a fraction of the untiled run with the same input, precision and compile mode."""
    untiled = {(r["compile"], r["precision"], tuple(r["input"])): r["output_mp_per_s"]
               for r in results if r["status"] == "ok" and r["tile"] is None}
    for r in results:
        base = untiled.get((r["compile"], r["precision"], tuple(r["input"])))
        if r["status"] == "ok" and r["tile"] is not None and base:
            r["relative_to_untiled"] = r["output_mp_per_s"] / base


def _summary(report: dict) -> str:
    lines = [f"ots bench infer on {report['device']} (torch {report['torch']})"]
    for r in report["results"]:
        tiling = "untiled" if r["tile"] is None else f"tile {r['tile']}/{r['overlap']}"
        tag = f"{r['input'][0]:5d}px {r['precision']} {r['compile']:26s} {tiling:13s}"
        if r["status"] != "ok":
            lines.append(f"  {tag} FAILED: {r['error']}")
            continue
        rel = f"  ({100 * r['relative_to_untiled']:.0f}% of untiled)" if "relative_to_untiled" in r else ""
        alone = f" (network alone {r['model_only_mp_per_s']:.2f})" if r.get("model_only_mp_per_s") else ""
        lines.append(f"  {tag} {r['output_mp_per_s']:8.2f} output MP/s{alone}  peak {r['peak_memory_mb']:7.0f} MB{rel}")
    return "\n".join(lines)
