"""`ots bench ladder`: build the rungs, train OTS and the GAN on each, write ladder.json, a figure and grids."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ots.bench.ladder import METHODS, RUNGS, LadderJob, build_rung, reference_scores, run_job, summarise
from ots.data.config import DataConfig
from ots.errors import ConfigError

DEFAULT_PHOTOS = "data/photos"  # what `make photoset` (`ots data photos --out data/photos`) gathers


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("ladder", help="known-answer degradations on real photos: OTS vs GAN vs bicubic vs "
                                            "oracle, gap closed per rung (JSON, figure, grids)")
    p.add_argument("--photos", default=DEFAULT_PHOTOS,
                   help="folder of photos (gathered from packages by `ots data photos` when it is the default and "
                        "missing)")
    p.add_argument("--rungs", default=",".join(RUNGS), help=f"comma list of {', '.join(RUNGS)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of ots, gan")
    p.add_argument("--seeds", default="0", help="comma list of training seeds (mean and spread are reported)")
    p.add_argument("--steps", type=int, default=300, help="potential steps per run (k_T map steps each)")
    p.add_argument("--eval-every", type=int, default=0, help="validation curve period (0: steps / 4)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    p.add_argument("--val-patches", type=int, default=None,
                   help="SWD patches per val image and level (default: the evaluation's, 1024)")
    p.add_argument("--params", default="params.yaml", help="the recipe: model, solver, train and baseline sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set solver.k_T=3 (YAML value)")
    p.add_argument("--max-side", type=int, default=DataConfig.max_side,
                   help="photos are downscaled to at most this many px")
    p.add_argument("--val-crop", type=int, default=DataConfig.val_crop,
                   help="centre crop of each held-out val photo (HR px)")
    p.add_argument("--cell", type=int, default=DataConfig.cell, help="checkerboard cell size (HR px)")
    p.add_argument("--work", default="outputs/ladder", help="rung data, checkpoints and curves")
    p.add_argument("--out", default="bench/ladder.json", help="the JSON; the figure and grids go beside it")
    p.add_argument("--probe", action="store_true",
                   help="instead of training: the potential alone as a classifier of R(x) vs y, per rung")
    p.add_argument("--probe-steps", type=int, default=300)
    p.set_defaults(func=_bench)


def _csv(text: str, allowed, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ConfigError(f"unknown {what} {', '.join(bad) or '(none given)'}: choose from {', '.join(allowed)}")
    return items


def load_recipe(path: str, sets: list[str]) -> dict:
    import yaml

    from ots.dotted import apply_set_args

    try:
        params = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read params {path}: {e}") from e
    if not isinstance(params, dict) or "model" not in params:
        raise ConfigError(f"{path}: not a recipe (needs model, solver and train sections)")
    return apply_set_args(params, sets)


def _photos(path: str) -> str:
    if not Path(path).is_dir():
        if path != DEFAULT_PHOTOS:
            raise ConfigError(f"--photos {path}: not a folder")
        from ots.data.photos import gather_photos

        gather_photos(path)
    return path


def _job_key(job: LadderJob) -> str:
    what = [job.rung, job.method, job.seed, job.steps, job.dataset, job.params]
    blob = json.dumps(what + ([job.val_patches] if job.val_patches else []), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run_cached(job: LadderJob) -> dict:
    """A finished run with the same inputs is read back, not retrained (the ladder can be extended run by run)."""
    done = Path(job.out) / "result.json"
    key = _job_key(job)
    if done.is_file():
        got = json.loads(done.read_text())
        if got.get("key") == key:
            return got
    result = {**run_job(job), "key": key}
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _bench(args) -> int:
    from ots.bench.common import device_name, write_json
    from ots.config import OTSConfig
    from ots.validation import Validation

    rungs, methods = _csv(args.rungs, RUNGS, "rung(s)"), _csv(args.methods, METHODS, "method(s)")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--seeds must be a comma list of integers, got {args.seeds!r}") from e
    if args.steps < 1 or args.jobs < 1 or not seeds:
        raise ConfigError("--steps and --jobs must be >= 1 and --seeds non-empty")
    params, photos = load_recipe(args.params, args.set), _photos(args.photos)
    t0 = time.perf_counter()
    data = {r: build_rung(r, photos, args.work, args.max_side, args.val_crop, args.cell) for r in rungs}
    cfg = OTSConfig.from_params(params)  # checked once, before any rung trains
    if args.probe:
        from ots.bench.probe import plot_probe, probe_rung

        result = {"photos": photos, "steps": args.probe_steps, "potential": cfg.model.potential,
                  "rungs": {r: probe_rung(data[r].dataset, cfg, args.probe_steps, seed=seeds[0]) for r in rungs}}
        write_json(args.out, result)
        plot_probe(Path(args.out).with_suffix(".png"), result)
        print(json.dumps({r: v["accuracy"][-1] for r, v in result["rungs"].items()}))
        return 0
    # Run folders are named by what decides the run (recipe, steps), so several recipes share one work folder.
    tag = hashlib.sha256(json.dumps([params, args.steps], sort_keys=True).encode()).hexdigest()[:8]
    jobs = [LadderJob(r, m, s, data[r].dataset, str(Path(args.work) / r / f"{m}-seed{s}-{tag}"), params, args.steps,
                      args.eval_every, args.val_patches) for r in rungs for m in methods for s in seeds]
    runs = _run_all(jobs, args.jobs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out: dict = {"photos": photos, "steps": args.steps, "seeds": seeds, "device": device_name(torch.device("cpu")),
                 "recipe": {k: params.get(k) for k in ("model", "solver", "train", "baseline")}, "rungs": {}}
    for r in rungs:
        val = Validation(data[r].dataset, cfg.model.scale, torch.device("cpu"), seed=0, patches=args.val_patches)
        out["rungs"][r] = summarise(r, reference_scores(data[r], val), [x for x in runs if x["rung"] == r])
        out["rungs"][r]["curves"] = {f"{x['method']}-seed{x['seed']}": x["curve"] for x in runs if x["rung"] == r}
        _rung_grid(Path(args.out).with_name(f"{Path(args.out).stem}_{r}.png"), data[r], val, jobs, seeds[0])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, out)
    from ots.bench.ladder_plot import plot_ladder

    plot_ladder(Path(args.out).with_suffix(".png"), out)
    print(json.dumps({r: v["gap_closed"] for r, v in out["rungs"].items()}))
    return 0


def _run_all(jobs: list[LadderJob], n: int) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="ladder", unit="run", disable=None)
    results = []
    if n == 1:
        for job in jobs:
            results.append(_run_cached(job))
            bar.update(1)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n, maxtasksperchild=1) as pool:
            for res in pool.imap_unordered(_run_cached, jobs):
                results.append(res)
                bar.update(1)
    bar.close()
    return results


def _rung_grid(path: Path, data, val, jobs: list[LadderJob], seed: int) -> None:
    from ots.bench.ladder import _uint8_to_input, oracle_lr
    from ots.bench.ladder_plot import save_rung_grid
    from ots.checkpoint import load_map
    from ots.data import read_val_pairs

    pairs = read_val_pairs(data.dataset)
    oracle = val.bicubic_outputs([_uint8_to_input(a) for a in oracle_lr(data, [p[0] for p in pairs],
                                                                         [p[1] for p in pairs],
                                                                         [p[2] for p in pairs])])
    columns = {"bicubic": val.bicubic_outputs(), "oracle": oracle}
    for job in jobs:
        if job.rung == data.rung and job.seed == seed and (Path(job.out) / "final.pt").is_file():
            columns[job.method.upper()] = val.outputs(load_map(Path(job.out) / "final.pt"))
    save_rung_grid(path, val, columns, title=data.rung)
