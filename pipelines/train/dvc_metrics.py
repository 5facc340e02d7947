"""The train stage's numbers as DVC reads them: the run's summary (JSON) and its validation curves (CSV), files meant
for git (``metrics/`` in params.yaml), so every commit and ``dvc exp`` keeps them."""

from __future__ import annotations

import json
import math
from typing import Any

CURVES = ("val_swd", "val_psnr", "val_bicubic_swd", "val_bicubic_psnr")  # logged at every validation


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_train_metrics(client, run_id: str, summary: dict, summary_path: str | None, curves_path: str | None) -> None:
    """The train stage's numbers as DVC reads them (files meant for git, so every commit and ``dvc exp`` keeps
    them): ``summary_path`` (JSON: steps, best val SWD and its step, final losses/metrics, wall time) and
    ``curves_path`` (CSV, one row per validation step: the run's MLflow history of :data:`CURVES`, the last value
    per step after a resume)."""
    from ots.atomic import write_text

    if summary_path:
        best = summary.get("best_metric") or {}
        numbers = {"steps": summary.get("steps"), "best_val_swd": best.get("value"), "best_step": best.get("step"),
                   "wall_s": summary.get("wall_s"), **(summary.get("final_metrics") or {})}
        write_text(summary_path, json.dumps({k: v for k, v in numbers.items() if _finite(v)}, indent=2,
                                            sort_keys=True) + "\n")
    if curves_path:
        rows: dict[int, dict[str, float]] = {}
        for key in CURVES:
            for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
                rows.setdefault(int(m.step), {})[key] = m.value
        lines = ["step," + ",".join(CURVES)]
        lines += [f"{step}," + ",".join(f"{r[k]:.6g}" if _finite(r.get(k)) else "" for k in CURVES)
                  for step, r in sorted(rows.items())]
        write_text(curves_path, "\n".join(lines) + "\n")
