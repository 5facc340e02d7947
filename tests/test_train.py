"""Stage `train`: Ray Train (DDP) + checkpoints in storage + fault-tolerant resume + MLflow tracking.

Tiny models (EDSR 1x8, critic for 32-px crops with 8 filters), LR 8 / HR 32 crops, a handful of steps.
One local Ray instance (127.0.0.1) is shared by the single-node tests; the multi-node test (last) shuts it
down and starts a two-node ``ray.cluster_utils.Cluster`` with S3 (moto) as shared checkpoint storage.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import mlflow_access, raywire
from pipelines import params as params_file
from pipelines.params import run_config
from pipelines.train import driver as train

TINY_MODEL = {
    "map": {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "bicubic_skip": True},
    "potential": {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16},
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    raywire.init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_params(tmp_path: Path, dataset: str, tracking_uri: str, **train_overrides) -> dict:
    t = {
        "dataset": dataset, "steps": 6, "batch_size": 2, "lr_crop": 8, "hr_crop": 32,
        "checkpoint_every": 2, "keep_best_k": 2, "max_failures": 2, "num_workers": 1,
        "resources_per_worker": {"CPU": 1}, "storage_path": str(tmp_path / "ray"), "log_every": 1,
        "image_every": 4, "image_count": 2, "val_pairs": 2, "output_dir": str(tmp_path / "out"),
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "test-train"},
    }
    t.update(train_overrides)
    return {"seed": 0, "model": TINY_MODEL,
            "solver": {"k_T": 2, "lr_map": 1e-4, "lr_potential": 1e-4, "cost": {"mse": 1.0}, "anchor_every": 0},
            "train": t}


def write(tmp_path: Path, params: dict) -> str:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    return str(p)


def kept_checkpoints(run_dir: Path) -> list[int]:
    return sorted(json.loads((d / "meta.json").read_text())["step"] for d in run_dir.glob("checkpoint_*") if d.is_dir())


def image_steps(client, run_id: str, key: str) -> set[int]:
    """Steps of the MLflow images logged under ``key`` (``images/<key>+step+<n>+...png``)."""
    return {int(a.path.split("+step+")[1].split("+")[0]) for a in client.list_artifacts(run_id, "images")
            if a.path.startswith(f"images/{key}+step+") and a.path.endswith(".png")}


# -- no Ray ---------------------------------------------------------------------------------------------------
def test_common_helpers(tmp_path, monkeypatch):
    flat = mlflow_access.flatten({"a": {"b": 1, "aws_secret_access_key": "x", "token": "t"}, "AWS_ACCESS_KEY_ID": "k",
                           "c": [1, 2]})
    assert flat == {"a.b": "1", "c": "[1, 2]"}
    monkeypatch.chdir(tmp_path)
    assert mlflow_access.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert mlflow_access.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert mlflow_access.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:1"
    (tmp_path / "bad.yaml").write_text("a: [")
    from ots.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read params"):
        params_file.load_params(tmp_path / "bad.yaml")
    assert params_file.load_params(write(tmp_path, {"seed": 3}))["seed"] == 3


def test_repo_params_and_dvc_stage():
    root = Path(__file__).resolve().parents[1]
    params = run_config(params_file.load_params(root / "params.yaml")).to_params()
    assert params["train"]["dataset"] == params["data"]["output"]
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["cmd"] == "python -m pipelines.train --params params.yaml"
    assert {"model", "solver", "train", "seed"} <= {p for p in stage["params"] if isinstance(p, str)}
    assert "outputs/train/final.pt" in stage["outs"]


@pytest.mark.parametrize("override, message", [
    ({"bogus": 1}, "unknown key 'train.bogus'"),
    ({"stpes": 3}, "unknown key 'train.stpes' (did you mean 'steps'?)"),
    ({"steps": True}, "train.steps must be a number, got True (bool)"),
    ({"hr_crop": 64}, "does not match the crops"),
    ({"steps": 0}, "train.steps must be an integer >= 1"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    path = write(tmp_path, make_params(tmp_path, "nowhere", "sqlite:///x.db", **override))
    assert train.main(["--params", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error:") and message in err and "\n" not in err


def test_missing_dataset_fails_on_the_driver(tmp_path, capsys):
    path = write(tmp_path, make_params(tmp_path, str(tmp_path / "nothing"), f"sqlite:///{tmp_path}/m.db"))
    assert train.main(["--params", path]) == 2
    assert capsys.readouterr().err.startswith("train: error:")


def test_new_data_under_the_same_output_is_never_resumed(tmp_path, tiny_dataset, monkeypatch):
    """#19.1, the driver's resume decision without Ray (``_fit`` stubbed as a killed driver): the rerun on the
    same data resumes the unfinished run; after ``prepare`` wrote other data (seed 1) to the same output it starts
    a new run, retires the old one naming the dataset digest, and records the manifest's data params."""
    import shutil

    from conftest import TINY, make_aim19
    from mlflow import MlflowClient

    from ots.data.shards import ShardConfig, build_shards

    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, str(ds), uri)
    seen = []

    def killed(params, client, run_id, *rest):  # what a driver killed mid-run leaves: an unfinished run
        seen.append(run_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_fit", killed)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train.run(run_config(params))
    assert seen[0] == seen[1]  # same data, same config: resumed
    build_shards(make_aim19(tmp_path / "aim19"), str(ds), cfg=ShardConfig(**TINY, shard_bytes=40_000),
                 extra={"source": "demo", "seed": 1}, progress=False)  # `prepare` with data.seed: 1, same output
    with pytest.raises(KeyboardInterrupt):
        train.run(run_config(params))
    client = MlflowClient(uri)
    old, new = client.get_run(seen[0]), client.get_run(seen[2])
    assert seen[2] != seen[0] and old.data.tags["ots.superseded_by"] == seen[2]
    assert "dataset.digest: " in old.data.tags["ots.superseded_reason"]
    assert old.data.params["dataset.seed"] == "None" and new.data.params["dataset.seed"] == "1"
    assert new.data.params["dataset.shards.hr_tile"] == "96"
    assert old.data.params["dataset.digest"] != new.data.params["dataset.digest"]


# -- Ray, one node --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fault_tolerant_resume_into_the_same_mlflow_run(tmp_path, tiny_dataset, ray_local, mlflow_server, capsys,
                                                        monkeypatch):
    from mlflow import MlflowClient

    from ots.checkpoint import load_checkpoint, load_map

    monkeypatch.setenv(train.TEST_HOOKS["inject_failure_at_step"], "5")
    # credentials in the tracking URI (the server ignores them) must never be printed or stored
    with_password = mlflow_server.replace("http://", "http://ots-user:s3cr3t-pw@")
    params = make_params(tmp_path, tiny_dataset, with_password, steps=8, summary=str(tmp_path / "m" / "train.json"),
                         curves=str(tmp_path / "m" / "train_val.csv"))
    assert train.main(["--params", write(tmp_path, params)]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["steps"] == 8 and summary["resumed_from"] == 4  # resumed from the step-4 checkpoint, not 0
    assert summary["tracking_uri"] == mlflow_server.replace("http://", "http://ots-user:***@")
    assert "s3cr3t-pw" not in (tmp_path / "out" / "run.json").read_text()
    assert (tmp_path / "out" / f".failure-injected-{summary['ray_run_name']}").read_text() == "5"

    # storage: Ray keeps the K=2 best by val SWD + the latest, each a full OTS checkpoint; best.pt is the best
    run_dir = tmp_path / "ray" / summary["ray_run_name"]
    kept = kept_checkpoints(run_dir)
    assert 8 in kept and len(kept) <= 3 and summary["best_metric"]["step"] in kept
    assert summary["best_checkpoint_storage"].startswith(str(run_dir)) and Path(summary["best_checkpoint"]).is_file()
    assert not (run_dir / "nonfinite.json").exists() and not (run_dir / "best").exists()
    state = load_checkpoint(summary["final_checkpoint"])
    assert state["step"] == 8 and state["extra"]["mlflow_run_id"] == summary["mlflow_run_id"]
    assert state["extra"]["data"]["position"] == {"lr": 8 * 3, "hr": 8}  # (k_T + 1) LR batches per step
    T = load_map(summary["final_checkpoint"])
    assert T(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 32, 32)

    # MLflow: one run, every step logged once, the replayed step matches what was logged before the failure
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_step"] == "4"
    assert run.data.params["train.steps"] == "8" and not any("aws" in k.lower() for k in run.data.params)
    hist = client.get_metric_history(run.info.run_id, "loss_map")
    assert sorted(m.step for m in hist) == list(range(1, 9))
    replay = client.get_metric_history(run.info.run_id, "resume_replay_diff")
    assert [m.step for m in replay] == [5] and replay[0].value < 1e-5
    assert {m.step for m in client.get_metric_history(run.info.run_id, "crops_per_s")} == set(range(1, 9))
    for metric in ("val_psnr", "val_swd", "val_bicubic_swd", "val_bicubic_psnr"):  # curves from step 0
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [0, 2, 4, 6, 8]
    assert len({m.value for m in client.get_metric_history(run.info.run_id, "val_bicubic_swd")}) == 1
    # the same curves and the summary as files for `dvc plots` / `dvc metrics` (issue 20.3), one row per step
    curves = (tmp_path / "m" / "train_val.csv").read_text().splitlines()
    assert curves[0] == "step,val_swd,val_psnr,val_bicubic_swd,val_bicubic_psnr"
    rows = {int(r.split(",")[0]): [float(v) for v in r.split(",")[1:]] for r in curves[1:]}
    assert sorted(rows) == [0, 2, 4, 6, 8] and len(curves) == 6
    last_swd = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_swd"),
                                                   key=lambda m: m.timestamp)}
    assert all(rows[s][0] == pytest.approx(last_swd[s], rel=1e-5) for s in rows)
    numbers = json.loads((tmp_path / "m" / "train.json").read_text())
    assert numbers["steps"] == 8 and numbers["best_val_swd"] == summary["best_metric"]["value"]
    assert numbers["best_step"] == summary["best_metric"]["step"] and "loss_map" in numbers
    best = load_checkpoint(summary["best_checkpoint"])  # selected by val SWD, not by PSNR and not the last
    swd = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_swd")}
    assert summary["best_metric"]["name"] == "val_swd" and best["step"] == min(swd, key=swd.get)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert arts == {"checkpoints/final.pt"}
    assert {4, 8} <= image_steps(client, run.info.run_id, "val") and 8 in image_steps(client, run.info.run_id, "train")
    assert run.data.tags["ots.config_hash"] == summary["config_hash"]
    assert run.data.tags.get("mlflow.source.git.commit") or "mlflow.source.git.commit" not in run.data.tags
    (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs  # lineage: the shard manifest
    assert inp.dataset.name == Path(tiny_dataset).name and len(inp.dataset.digest) == 32
    out = capsys.readouterr()
    assert "train: step 8/8" in out.out and "crops/s=" in out.out
    assert "s3cr3t-pw" not in out.out + out.err
    assert not any("s3cr3t" in v for v in run.data.params.values())


@pytest.mark.slow
def test_nonfinite_loss_stops_with_a_clear_error(tmp_path, tiny_dataset, ray_local, capsys, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(train.TEST_HOOKS["inject_nan_at_step"], "3")
    params = make_params(tmp_path, tiny_dataset, uri, image_every=0)
    assert train.main(["--params", write(tmp_path, params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train: error: non-finite loss_map at step 4") and "last good checkpoint" in err
    (run_dir,) = (tmp_path / "ray").iterdir()
    assert kept_checkpoints(run_dir) == [0, 2]  # the last good checkpoint stays
    assert not (run_dir / "nonfinite.json").exists()  # reported as a metric, not a side file
    assert str(run_dir) in err
    assert not (tmp_path / "out" / "run.json").exists()
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("test-train").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_divergence_guard_stops_and_keeps_the_best_map(tmp_path, tiny_dataset, ray_local, capsys):
    """A map pushed far from R(x) (huge map learning rate, almost no cost) must be stopped by the guard, and the
    map kept must be the best one seen (here the untrained map = bicubic), not the diverged last one."""
    from mlflow import MlflowClient

    from ots.checkpoint import load_checkpoint, load_map

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, tiny_dataset, uri, steps=20, image_every=0, guard={"patience": 2})
    params["solver"].update(lr_map=0.05, cost={"mse": 1e-4})
    assert train.main(["--params", write(tmp_path, params)]) == 0
    out = capsys.readouterr().out
    assert "train: stopped at step 4: val SWD" in out and "worse than bicubic" in out
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["steps"] == 4 and summary["stopped_early"].startswith("stopped at step 4")
    best = load_checkpoint(summary["best_checkpoint"])
    assert best["step"] == 0 and summary["best_metric"]["step"] == 0
    x = torch.rand(1, 3, 8, 8)
    bic = torch.nn.functional.interpolate(x * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(load_map(summary["best_checkpoint"])(x * 2 - 1), bic, atol=1e-5)
    assert not torch.allclose(load_map(summary["final_checkpoint"])(x * 2 - 1), bic, atol=1e-2)
    run = MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["ots.stopped_early"] == summary["stopped_early"]


def train_runs(client, name: str = "test-train") -> dict:
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return {r.info.run_id: r for r in runs}


def interrupted(tmp_path, params, monkeypatch, at: int = 5) -> str:
    """Run ``params`` until an injected failure at step ``at`` with no restarts left, then mark its MLflow run
    RUNNING again: what a driver killed with SIGKILL leaves behind. Returns the run id."""
    from mlflow import MlflowClient

    monkeypatch.setenv(train.TEST_HOOKS["inject_failure_at_step"], str(at))
    assert train.main(["--params", write(tmp_path, {**params, "train": {**params["train"], "max_failures": 0}})]) == 2
    monkeypatch.delenv(train.TEST_HOOKS["inject_failure_at_step"])
    client = MlflowClient(params["train"]["mlflow"]["tracking_uri"])
    (run,) = [r for r in train_runs(client).values() if r.info.status == "FAILED"]  # try/finally ended it FAILED
    client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


@pytest.mark.slow
def test_interrupted_run_resumes_into_the_same_mlflow_run(tmp_path, tiny_dataset, ray_local, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, tiny_dataset, uri, image_every=0)
    first = interrupted(tmp_path, params, monkeypatch)
    params["train"]["steps"] = 8  # `steps` may grow: still the same run
    assert train.main(["--params", write(tmp_path, params)]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    client = MlflowClient(uri)
    runs = train_runs(client)
    assert list(runs) == [first] and summary["mlflow_run_id"] == first  # run.json names the run with the metrics
    assert summary["resumed_from"] == 4 and summary["steps"] == 8
    assert summary["ray_run_name"] == runs[first].data.tags["ots.ray_run"]
    assert runs[first].info.status == "FINISHED" and runs[first].data.tags["ots.steps"] == "8"
    assert sorted(m.step for m in client.get_metric_history(first, "loss_map")) == list(range(1, 9))
    assert [p.name for p in (tmp_path / "ray").iterdir()] == [summary["ray_run_name"]]


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_and_the_rerun_resumes_it(tmp_path, tiny_dataset, ray_local):
    """The CLI in its own process, stopped by SIGTERM after a checkpoint: its MLflow run ends KILLED (not RUNNING
    forever), and the rerun continues that run from its checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, tiny_dataset, uri, steps=400, image_every=0, log_every=50)
    path = write(tmp_path, params)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.train", "--params", path], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    def registered() -> int:  # checkpoints Ray's controller has registered (what a rerun restores from)
        snaps = list((tmp_path / "ray").glob("*/checkpoint_manager_snapshot.json"))
        try:
            return len(json.loads(snaps[0].read_text())["checkpoint_results"]) if snaps else 0
        except (OSError, ValueError, KeyError):
            return 0

    try:  # wait (on the files, not the database the child is creating) for 2 registered checkpoints (steps 0, 2)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            if registered() >= 2:
                break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    client = MlflowClient(uri)
    (run,) = train_runs(client).values()
    # 128 + SIGTERM like any process a signal stopped (#19.7: it was 134, an abort in Ray's teardown)
    assert proc.returncode == 143, proc.stderr.read()[-2000:]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    done = int(client.get_run(run.info.run_id).data.tags["ots.last_checkpoint_step"])
    params["train"]["steps"] = done + 2
    assert train.main(["--params", write(tmp_path, params)]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    # Ray restores the latest checkpoint it registered (the one being written at SIGTERM may not count)
    assert summary["mlflow_run_id"] == run.info.run_id and summary["resumed_from"] >= 2
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_changed_config_is_never_silently_resumed(tmp_path, tiny_dataset, ray_local, monkeypatch, capsys):
    """Default run name: a changed lr starts a new run and retires the old one (KILLED, tagged, checkpoints
    pruned to its best). Fixed run name: refused in one line; --fresh starts over from step 0."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, tiny_dataset, uri, steps=4, image_every=0)
    old = interrupted(tmp_path, params, monkeypatch, at=3)
    client = MlflowClient(uri)
    old_dir = tmp_path / "ray" / client.get_run(old).data.tags["ots.ray_run"]
    assert kept_checkpoints(old_dir) == [0, 2]
    params["solver"]["lr_map"] = 1e-3
    assert train.main(["--params", write(tmp_path, params)]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["mlflow_run_id"] != old and summary["resumed_from"] == 0
    tags = client.get_run(old).data.tags
    assert client.get_run(old).info.status == "KILLED" and tags["ots.superseded_by"] == summary["mlflow_run_id"]
    assert "solver.lr_map: 0.0001 -> 0.001" in tags["ots.superseded_reason"]
    assert [p.name for p in old_dir.iterdir()] == ["best"] and (old_dir / "best" / "checkpoint.pt").is_file()

    # a fixed run name: a changed config is refused in one line; --fresh starts over and retires the old run
    params["train"]["run_name"] = "fixed"
    fixed = interrupted(tmp_path, params, monkeypatch, at=3)
    capsys.readouterr()
    params["solver"]["lr_map"] = 2e-3
    path = write(tmp_path, params)
    assert train.main(["--params", path]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"unfinished run {fixed}" in err and "solver.lr_map: 0.001 -> 0.002" in err
    assert "--fresh" in err and client.get_run(fixed).info.status == "RUNNING"
    assert train.main(["--params", path, "--fresh"]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["resumed_from"] == 0 and summary["ray_run_name"] == "fixed" and summary["mlflow_run_id"] != fixed
    assert client.get_run(fixed).info.status == "KILLED"
    assert (tmp_path / "ray" / f"fixed-{fixed[:8]}" / "best" / "checkpoint.pt").is_file()
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    # a finished run is never resumed: the rerun is a new run, the old folder's best is moved aside
    assert train.main(["--params", path]) == 0
    again = json.loads((tmp_path / "out" / "run.json").read_text())
    assert again["mlflow_run_id"] != summary["mlflow_run_id"] and again["resumed_from"] == 0
    moved = [p for p in (tmp_path / "ray").glob("fixed-*/best/checkpoint.pt")
             if re.fullmatch(r"fixed-\d{8}-\d{6}", p.parent.parent.name)]  # <name>-<time>, not a retired run id
    assert len(moved) == 1


def corrupt_copy(src: str, dst: Path) -> str:
    """A copy of the dataset with one byte flipped in a train shard (its checksum no longer matches)."""
    import shutil

    shutil.copytree(src, dst)
    shard = next(p for p in sorted(dst.rglob("*.parquet")) if "val" not in str(p))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return str(dst)


@pytest.mark.slow
def test_deterministic_failures_are_not_retried(tmp_path, tiny_dataset, ray_local, capfd):
    """A corrupt shard (found by a worker) and read-only storage (found by the driver): one line, exit 2, no
    restarts, no tracebacks."""
    import time

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = make_params(tmp_path, corrupt_copy(tiny_dataset, tmp_path / "ds"), uri, max_failures=3)
    t0 = time.perf_counter()
    assert train.main(["--params", write(tmp_path, params)]) == 2
    took = time.perf_counter() - t0
    out, err = capfd.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: error:") and "checksum mismatch" in last and "not retried" in last
    assert "Traceback" not in out + err and "resumed from" not in out, (out + err)[-3000:]
    assert took < 60, took
    (run,) = train_runs(MlflowClient(uri)).values()
    assert run.info.status == "FAILED"

    # unwritable storage (a file where the folder should be: fails for root too, unlike chmod)
    (tmp_path / "file").write_text("x")
    params = make_params(tmp_path, tiny_dataset, uri, storage_path=str(tmp_path / "file" / "ray"), fresh=True)
    t0 = time.perf_counter()
    assert train.main(["--params", write(tmp_path, params)]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("train: error: checkpoint storage") and "not writable" in err and "\n" not in err
    assert time.perf_counter() - t0 < 20


@pytest.mark.slow
def test_a_train_run_prints_no_ray_noise(tmp_path, tiny_dataset):
    """The CLI in its own process (its own local Ray): Ray Train's placement-group cleaner polls the state API
    every second; without a dashboard it logged "Failed to query Ray Train Controller actor state" each time.
    Ray Train's per-report INFO line and the preemption watcher's start-up error line stay out too."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path, make_params(tmp_path, tiny_dataset, uri, steps=2, image_every=0))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-m", "pipelines.train", "--params", path], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Failed to query Ray Train Controller actor state" not in proc.stdout + proc.stderr
    assert "PlacementGroupCleaner" not in proc.stderr
    out = proc.stdout + proc.stderr
    assert "Reporting training result" not in out and "PreemptionWatcher" not in out
    assert "train: step 2/2" in out  # our own progress lines still show


# -- Ray, two nodes, S3 storage -------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_nodes_one_worker_each_with_s3_checkpoints(tmp_path, tiny_dataset, s3_env, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's single-node instance
    raywire.local_only()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, configure_logging=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}

        bucket = f"ots-{uuid.uuid4().hex[:8]}"
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        params = make_params(tmp_path, tiny_dataset, uri, steps=4, num_workers=2, image_every=0,
                             storage_path=f"s3://{bucket}/ray")
        summary = train.run(run_config(params))
        assert summary["steps"] == 4 and summary["num_workers"] == 2
        assert len(set(summary["worker_nodes"])) == 2  # one worker per node
        assert set(summary["worker_nodes"]) == {n["NodeID"] for n in nodes}
        keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]]
        run_prefix = f"ray/{summary['ray_run_name']}/"
        ckpts = {k for k in keys if k.startswith(run_prefix + "checkpoint_") and k.endswith("/checkpoint.pt")}
        assert 2 <= len(ckpts) <= 3  # K=2 best by val SWD + the latest (steps 0, 2, 4 reported)
        assert summary["best_checkpoint_storage"].startswith(f"s3://{bucket}/{run_prefix}checkpoint_")
        assert summary["final_checkpoint_storage"].startswith(f"s3://{bucket}/ray/")
        assert os.path.isfile(summary["final_checkpoint"])
    finally:
        ray.shutdown()
        cluster.shutdown()
