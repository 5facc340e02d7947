"""`ots bench train` command line: runs :func:`ots.bench.train.run_loop` per loop/compile mode, writes the JSON."""

from __future__ import annotations

import json
import sys
import time

import torch

from ots.atomic import write_text
from ots.bench.common import ISSUE_GFLOP_PER_HR_CROP, bf16_peak_tflops, device_name, first_line, write_json
from ots.bench.train import COMPILE_MODES, SMOKE, count_flops, run_loop
from ots.errors import ConfigError
from ots.models import build_map, build_potential, check_sizes, count_params


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
    check_sizes(args.scale, pot_cfg, args.hr_crop // args.scale, args.hr_crop)
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
