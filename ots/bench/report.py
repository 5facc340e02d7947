"""`ots bench report DIR`: one Markdown summary (stdout + DIR/summary.md) of the JSON files a GPU check wrote."""

from __future__ import annotations

import json
from pathlib import Path

from ots.atomic import write_text
from ots.bench.common import write_json
from ots.errors import ConfigError

TRAIN_FILES = ("train_b8_fp32.json", "train_b32_bf16.json", "train_b32_bf16_compiled.json")
INFER_FILES = ("infer.json", "infer_compiled.json")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def _parts(d: Path) -> list[str]:
    p = d / "parts.tsv"
    if not p.exists():
        return []
    rows = [ln.split("\t") for ln in p.read_text().splitlines()[1:] if ln.strip()]
    out = ["| part | exit | seconds | timeout |", "|---|---|---|---|"]
    out += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows if len(r) == 4]
    return out


def _env(d: Path) -> list[str]:
    env = _load(d / "env.json")
    if not env:
        return ["env.json missing"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", [])) or "no GPU"
    return [f"{gpus}; torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}; "
            f"nvidia-smi: {(env.get('nvidia_smi_query') or 'not found').splitlines()[-1]}"]


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _header(*columns: str) -> list[str]:
    return [_row(*columns), "|" + "---|" * len(columns)]


def _loaded(d: Path, names, lines: list[str]):
    """(name, result) of each benchmark JSON present; a "missing" table row for each absent one."""
    for name in names:
        r = _load(d / name)
        if r is None:
            lines.append(f"| {name} | missing |" + " |" * (lines[0].count("|") - 3))
        else:
            yield name, r


def _train(d: Path) -> tuple[list[str], list[dict]]:
    lines = _header("file", "loop", "batch", "precision", "compile", "map steps/s", "HR crops/s",
                    "% of bf16 peak (counted / 140 GFLOP)", "peak MB", "note")
    rows = []
    for name, r in _loaded(d, TRAIN_FILES, lines):
        for run in r.get("runs", []):
            ok = run.get("status") == "ok"
            frac = [run.get(f"fraction_of_bf16_peak_{k}") for k in ("counted", "issue_140gflop")]
            pct = " / ".join(_fmt(100 * f if f is not None else None) for f in frac)
            note = run.get("error", "") if not ok else "; ".join(x for x in (
                f"fallback for {run['fallback_for']}" if run.get("fallback_for") else "",
                f"{run['cudagraph_skips']} CUDA-graph skips" if run.get("cudagraph_skips") else "") if x)
            lines.append(_row(name, run["loop"], run["batch"], "bf16" if run["bf16"] else "fp32", run["compile"],
                              _fmt(run.get("map_steps_per_s"), ".2f"), _fmt(run.get("hr_crops_per_s")),
                              pct if ok else "—", _fmt(run.get("peak_memory_mb"), ".0f"), note))
            rows.append({"file": name, **{k: v for k, v in run.items() if k != "profile"}})
        if "speedup_hr_crops_per_s" in r:
            lines.append(f"| {name} | fast / reference | | | | | **{r['speedup_hr_crops_per_s']:.2f}×** | | | |")
        if r.get("running"):
            lines.append(f"| {name} | cut short while running {r['running']} | | | | | | | | |")
    return lines, rows


def _infer(d: Path) -> tuple[list[str], list[dict]]:
    lines = _header("file", "input → output", "precision", "compile", "tiling", "output MP/s (network alone)",
                    "vs untiled", "peak MB", "note")
    rows = []
    for name, r in _loaded(d, INFER_FILES, lines):
        for x in r.get("results", []):
            s = x["input"][0]
            out = x.get("output") or [s * r["model"]["scale"]] * 2
            tiling = "untiled" if x["tile"] is None else (
                f"tile {x['tile']}, overlap {x.get('overlap')}: {x.get('tiles')} tiles, "
                f"{_fmt(x.get('pixels_processed_ratio'), '.2f')}× px")
            rel = x.get("relative_to_untiled")
            alone = f" ({x['model_only_mp_per_s']:.1f})" if x.get("model_only_mp_per_s") else ""
            lines.append(_row(name, f"{s}² → {out[0]}²", x["precision"], x["compile"], tiling,
                              _fmt(x.get("output_mp_per_s")) + alone, _fmt(100 * rel, ".0f") + "%" if rel else "—",
                              _fmt(x.get("peak_memory_mb"), ".0f"), x.get("error", "")))
            rows.append({"file": name, **x})
        if r.get("running"):
            lines.append(f"| {name} | cut short while running {r['running']} | | | | | | | |")
    return lines, rows


def _fit(d: Path) -> list[str]:
    """The run's curve (`ots fit` writes history rows, bicubic's scores, the best row, why it stopped)."""
    curve = _load(d / "fit" / "curve.json")
    if not isinstance(curve, dict):
        return ["fit/curve.json missing (see 4.log)"]
    history = curve.get("history") or []
    lines = [f"device {curve.get('device')}, {curve.get('wall_s')} s, stopped: {curve.get('stopped')}",
             f"bicubic: {json.dumps(curve.get('bicubic'))}", f"best: {json.dumps(curve.get('best'))}"]
    if history:
        lines += [f"{len(history)} validations; last: {json.dumps(history[-1])}"]
    return [f"- {x}" for x in lines] + ["", "(curve: fit/curve.png, samples: fit/grid.png)"]


def report(d: Path) -> tuple[str, dict]:
    if not d.is_dir():
        raise ConfigError(f"no such folder: {d}")
    train, train_rows = _train(d)
    infer, infer_rows = _infer(d)
    md = ["## GPU check (`bash bench/gpu_all.sh`)", "", *_env(d), "", "### Parts", *_parts(d), "",
          "### Training step", *train, "", "### Inference", *infer, "", "### 3-minute training run", *_fit(d), ""]
    return "\n".join(md), {"train": train_rows, "infer": infer_rows}


def add_bench_command(bench_sub) -> None:
    p = bench_sub.add_parser("report", help="Markdown summary of a folder of benchmark JSON (bench/gpu_all.sh)")
    p.add_argument("dir", nargs="?", default="bench/out")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    d = Path(args.dir)
    text, rows = report(d)
    write_text(d / "summary.md", text)
    write_json(d / "summary.json", rows)
    print(text)
    return 0
