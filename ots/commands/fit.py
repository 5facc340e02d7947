"""`ots fit` and `ots curves`: one-process training runs from a params YAML, and their curves in one figure."""

from __future__ import annotations

import json
from pathlib import Path

from ots.config import OTSConfig
from ots.dotted import apply_set_args
from ots.errors import ConfigError
from ots.fit import fit, plot_curves

__all__ = ["add_commands"]


def add_commands(sub) -> None:
    p = sub.add_parser("fit", help="train in one process (no Ray/MLflow) with val SWD/PSNR curves vs bicubic")
    p.add_argument("--params", required=True, help="a params YAML (model, solver, train sections)")
    p.add_argument("--dataset", required=True, help="shard dataset URI (ots data prepare)")
    p.add_argument("--out", required=True, help="folder for curve.json/png, grid.png, best.pt, final.pt")
    p.add_argument("--steps", type=int, help="potential steps (default: train.steps)")
    p.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0 = no limit)")
    p.add_argument("--eval-every", type=int, help="potential steps between validations (default 25)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params key, e.g. --set solver.lr_map=1e-5 (YAML value)")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("curves", help="plot the val SWD/PSNR curves of several `ots fit` runs in one figure")
    p.add_argument("runs", nargs="+", help="output folders of `ots fit`")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="")
    p.set_defaults(func=_cmd_curves)


def _cmd_curves(args) -> int:
    curves = {}
    for d in args.runs:
        p = Path(d) / "curve.json"
        try:
            curves[Path(d).name] = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: not a readable curve ({e})") from e
    plot_curves(args.out, curves, title=args.title)
    rows = []
    for name, c in curves.items():
        last, b = c["history"][-1], c["bicubic"]
        rows.append({"run": name, "bicubic_swd": round(b["swd"], 2), "bicubic_psnr": round(b["psnr"], 2),
                     "best": c["best"], "last_step": last["step"],
                     "last_swd": round(last.get("ema_swd", last["swd"]), 2),
                     "last_psnr": round(last.get("ema_psnr", last["psnr"]), 2)})
    print(json.dumps(rows, indent=1))
    return 0


def _cmd_fit(args) -> int:
    import yaml

    try:
        params = yaml.safe_load(Path(args.params).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read params {args.params}: {e}") from e
    params = apply_set_args(params, args.set)
    params["train"] = {**(params.get("train") or {}), "dataset": args.dataset}
    curve = fit(OTSConfig.from_params(params), args.out, steps=args.steps, time_budget=args.time_budget,
                eval_every=args.eval_every, device=args.device, seed=args.seed)
    last = curve["history"][-1]
    print(json.dumps({"out": args.out, "bicubic": curve["bicubic"], "best": curve["best"],
                      "last": {k: last[k] for k in last if k in ("step", "swd", "psnr", "ema_swd", "ema_psnr")},
                      "wall_s": curve["wall_s"]}))
    return 0
