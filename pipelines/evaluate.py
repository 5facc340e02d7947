"""DVC stage ``evaluate``: bicubic vs the trained map (and the GAN baseline, if given) on the full val images.

    python -m pipelines.evaluate --params params.yaml

Reads the ``evaluate:`` section of params.yaml and ``data.output``; the map comes from ``evaluate.checkpoint`` or
the training stage's ``run.json`` -- its ``best_checkpoint`` (selected by val SWD during training), never blindly
the last one -- and the GAN baseline's from ``evaluate.gan_checkpoint`` or the baseline run's ``run.json``
(``evaluate.gan_run_info``), when it exists. Writes, in ``evaluate.out``: ``metrics.json`` (DVC
metrics; at ``evaluate.metrics`` when set), ``report.json``, ``metrics.md``, ``per_image.csv`` (DVC plots:
per-image PSNR/SSIM; at ``evaluate.per_image`` when set) and ``grid.png``, and logs the
metrics (``val_psnr``, ``val_ssim``, ``val_swd``, ``val_lpips``/``val_fid`` when their weights exist,
``val_bicubic_*``, ``val_gan_*``) and those files to the training run in MLflow. Unavailable metrics are null
in the JSON, absent from MLflow, and their reasons are tagged ``evaluate.unavailable.<metric>``. A progress
bar (stderr) follows the upscaling (``evaluate.progress``, default on). The run.json and metric-name handling it
shares with ``register`` is :mod:`pipelines.run_record`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ots.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from pipelines.params import section
from pipelines.registry import load_map
from pipelines.run_record import flat_metrics, read_run_info, selected_checkpoint, tracking_uri
from pipelines.stage import stage_main

DEFAULTS = {
    "run_info": "outputs/train/run.json",
    "checkpoint": None,  # default: run.json's best_checkpoint, else its final_checkpoint
    "gan_checkpoint": None,  # default: gan_run_info's best_checkpoint, when that file exists
    "gan_run_info": "outputs/train_gan/run.json",
    "out": "outputs/evaluate",
    "metrics": None,     # metrics.json elsewhere than `out` (params.yaml: the git-tracked metrics/ folder)
    "per_image": None,   # per_image.csv elsewhere than `out` (idem)
    "tile": DEFAULT_TILE,
    "overlap": DEFAULT_OVERLAP,
    "device": "auto",
    "precision": "auto",
    "lpips_net": "alex",
    "lpips_weights": None,
    "inception_weights": None,
    "fid_crop": 128,
    "crop_border": 0,        # PSNR/SSIM with this many border px shaved (BasicSR's protocol: the scale)
    "test_y_channel": False,  # PSNR/SSIM on the Y channel (BasicSR's protocol) instead of RGB
    "max_images": 0,
    "grid_images": 4,
    "grid_crop": 256,
    "mlflow": True,
    "progress": True,         # a progress bar (stderr) while the maps upscale the val images
}


# -------------------------------------------------------------------------------------------------------- run


def run(doc: dict, params_path: str | Path = "params.yaml") -> dict:
    from ots.data import read_val_pairs
    from ots.device import resolve_device
    from ots.errors import ConfigError
    from ots.eval_report import markdown_table, write_report
    from ots.evaluate import score_outputs, upscale_pairs

    p = section(doc, "evaluate", DEFAULTS, params_path)
    data = doc.get("data") or {}
    if not data.get("output"):
        raise ConfigError(f"{params_path}: data.output (the prepared dataset) is not set")
    info = read_run_info(p["run_info"], required=p["checkpoint"] is None)
    ckpt = p["checkpoint"] or selected_checkpoint(info) or "outputs/train/final.pt"
    gan_ckpt = p["gan_checkpoint"]
    if not gan_ckpt and p["gan_run_info"]:
        gan_ckpt = selected_checkpoint(read_run_info(p["gan_run_info"], required=False)) or None
    uri = tracking_uri(doc, info)
    sources = [str(ckpt)] + ([str(gan_ckpt)] if gan_ckpt else [])
    if not all(Path(s).is_file() for s in sources):  # runs:/, models:/ or run-id sources resolve through MLflow
        import mlflow

        mlflow.set_tracking_uri(uri)

    pairs = read_val_pairs(str(data["output"]))
    if p["max_images"]:
        pairs = pairs[: int(p["max_images"])]
    device = resolve_device(p["device"])
    maps = {"ots": load_map(str(ckpt), device)}  # files, storage URIs or registry sources (pipelines.registry)
    if gan_ckpt:
        maps["gan"] = load_map(str(gan_ckpt), device)
    tile = int(p["tile"]) or None
    outputs = upscale_pairs(pairs, maps, tile=tile, overlap=int(p["overlap"]), device=device,
                            precision=p["precision"], progress=bool(p["progress"]))
    results = score_outputs(pairs, outputs, lpips_weights=p["lpips_weights"], lpips_net=p["lpips_net"],
                            inception_weights=p["inception_weights"], device=device, fid_crop=int(p["fid_crop"]),
                            crop_border=int(p["crop_border"]), y_channel=bool(p["test_y_channel"]),
                            seed=int(doc.get("seed", 0) or 0))
    results["tiling"] = {"tile": tile, "overlap": int(p["overlap"])}
    results["checkpoint"] = str(ckpt)
    results["gan_checkpoint"] = gan_ckpt
    files = write_report(p["out"], pairs, outputs, results, grid_images=int(p["grid_images"]),
                         grid_crop=int(p["grid_crop"]) or None, metrics_file=p["metrics"],
                         per_image_file=p["per_image"])
    print(markdown_table(results), end="")
    if p["mlflow"] and info.get("mlflow_run_id"):
        log_to_mlflow(uri, str(info["mlflow_run_id"]), results, files, step=int(info.get("steps") or 0))
    elif p["mlflow"]:
        print("evaluate: no mlflow_run_id in run.json; metrics not logged to MLflow", file=sys.stderr)
    return results


def log_to_mlflow(uri: str, run_id: str, results: dict, files: dict[str, Path], step: int = 0) -> None:
    """Metrics at the training run's final ``step`` (the run may already hold in-training ``val_*`` points)."""
    import mlflow

    from ots.errors import ConfigError

    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"MLflow run {run_id} not found at the tracking server ({uri.split('://')[0]}://...)") \
            from e
    metrics = flat_metrics(results)
    for k, v in metrics.items():
        client.log_metric(run_id, k, v, step=step)
    client.set_tag(run_id, "evaluate.n_images", str(results["n_images"]))
    for metric, reason in results.get("unavailable", {}).items():
        client.set_tag(run_id, f"evaluate.unavailable.{metric}", reason[:4000])
    for path in files.values():
        client.log_artifact(run_id, str(path), artifact_path="evaluate")


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", __doc__, run, argv)

if __name__ == "__main__":
    raise SystemExit(main())
