"""End to end: `dvc repro` on a copy of this repo with tiny params, data and checkpoints on S3 (moto on
127.0.0.1), then a no-op rerun, a one-parameter change, and `dvc push` / `dvc pull` through an S3 remote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "ots-e2e"


def run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        cmd = " ".join(map(str, args))
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def tiny_params(repo: Path) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["output"] = f"s3://{BUCKET}/demo"
    params["model"] = {
        "map": {"arch": "edsr", "n_blocks": 1, "n_features": 8, "res_scale": 1.0, "scale": 4, "bicubic_skip": True},
        "potential": {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16},
    }
    params["solver"]["k_T"] = 2
    params["train"].update({"steps": 4, "batch_size": 2, "lr_crop": 8, "hr_crop": 32, "checkpoint_every": 2,
                            "image_every": 2, "log_every": 2, "val_pairs": 2, "storage_path": f"s3://{BUCKET}/ray",
                            "resources_per_worker": {"CPU": 1}})
    return params


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_dvc_repro_end_to_end_with_s3_storage_and_remote(tmp_path, s3_env, moto_endpoint):
    s3 = s3_env
    s3.create_bucket(Bucket=BUCKET)
    repo = tmp_path / "repo"
    copy_repo(repo)
    assert (repo / ".dvc" / "config").is_file()  # `git ls-files -co` lists .dvc/config: DVC needs it
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(repo), sort_keys=False))

    # 1) the whole pipeline: prepare -> train, train_gan -> evaluate -> register
    out = run(["dvc", "repro"], repo).stdout
    for stage in ("prepare", "train", "train_gan", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "demo/manifest.json" in keys and any(k.startswith("demo/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("ray/") and k.endswith("checkpoint.pt") for k in keys)  # checkpoints on S3
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    report = json.loads((repo / "outputs/evaluate/report.json").read_text())
    for method in ("bicubic", "ots", "gan"):  # the GAN baseline side by side, same budget
        m = metrics["methods"][method]
        assert all(isinstance(m[k], float) for k in ("psnr", "ssim", "swd"))
        assert "lpips" not in m and "fid" not in m  # no weights here: unavailable, never a number
        assert report["methods"][method]["lpips"] is None
    assert {"lpips", "fid"} <= set(report["unavailable"])
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "metrics/evaluate.json" in json.dumps(shown) and "unavailable" not in json.dumps(shown)
    # the train summaries and val curves (issue 20.3): real numbers from the runs, as DVC shows them
    data = shown[""]["data"]
    for f, run_json in (("metrics/train.json", "outputs/train/run.json"), ("metrics/train_gan.json",
                                                                           "outputs/train_gan/run.json")):
        summary = json.loads((repo / run_json).read_text())
        assert data[f]["data"]["steps"] == 4 and data[f]["data"]["best_val_swd"] == summary["best_metric"]["value"]
    curves = (repo / "metrics/train_val.csv").read_text().splitlines()
    assert curves[0] == "step,val_swd,val_psnr,val_bicubic_swd,val_bicubic_psnr"
    assert [int(r.split(",")[0]) for r in curves[1:]] == [0, 2, 4]  # step 0 and every checkpoint_every
    assert all(r.split(",")[3] for r in curves[1:])  # bicubic's value at every step
    result = json.loads((repo / "outputs/register/result.json").read_text())
    ots, bic = metrics["methods"]["ots"], metrics["methods"]["bicubic"]
    beats_bicubic = ots["swd"] < 0.99 * bic["swd"] and ots["psnr"] >= bic["psnr"] - 0.5  # the floor + margin
    assert result["alias"] == "champion" and result["alias_moved"] is beats_bicubic  # bicubic is the floor
    if not beats_bicubic:
        assert "bicubic" in result["reason"]
    run_json = json.loads((repo / "outputs/train/run.json").read_text())
    assert run_json["steps"] == 4 and run_json["best_metric"]["name"] == "val_swd"
    assert report["checkpoint"] == run_json["best_checkpoint"]  # evaluated: the selected map, not the last one
    gan_run = json.loads((repo / "outputs/train_gan/run.json").read_text())
    assert gan_run["mlflow_run_id"] != run_json["mlflow_run_id"] and report["gan_checkpoint"] == \
        gan_run["best_checkpoint"]

    # 2) nothing changed: only prepare runs (always: its source is outside DVC's view); it verifies the shards,
    # writes nothing, and no stage after it runs
    out = run(["dvc", "repro"], repo).stdout
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'prepare':"]
    assert '"written": false' in out

    # 3) one parameter changed: exactly the stages that depend on it are stale
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["overlap"] = int(params["evaluate"]["overlap"]) + 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ["prepare", "train", "train_gan", "evaluate", "register"]  # the default pipeline (tune is opt-in)
    status = json.loads(run(["dvc", "status", "--json", *stages], repo).stdout)
    assert status.pop("prepare") == ["always changed"] and set(status) == {"evaluate"}

    # 4) DVC remote on S3: push, lose the local copies, pull them back
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc-store"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", moto_endpoint], repo)
    run(["dvc", "push"], repo)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="dvc-store/")["KeyCount"] > 0
    final = repo / "outputs/train/final.pt"
    digest = sha(final)
    final.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    run(["dvc", "pull"], repo)
    assert sha(final) == digest
