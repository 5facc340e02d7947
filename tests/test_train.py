"""Stage `train`: Ray Train (DDP) + checkpoints in storage + fault-tolerant resume + MLflow tracking.

Tiny models (EDSR 1x8, critic for 32-px crops with 8 filters), LR 8 / HR 32 crops, a handful of steps.
One local Ray instance (127.0.0.1) is shared by the single-node tests; the multi-node test (last) shuts it
down and starts a two-node ``ray.cluster_utils.Cluster`` with S3 (moto) as shared checkpoint storage.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import common, train

TINY_MODEL = {
    "map": {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "bicubic_skip": True},
    "potential": {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16},
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    train.local_only()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_params(tmp_path: Path, dataset: str, tracking_uri: str, **train_overrides) -> dict:
    t = {
        "dataset": dataset, "steps": 6, "batch_size": 2, "lr_crop": 8, "hr_crop": 32,
        "checkpoint_every": 2, "keep_last_k": 2, "max_failures": 2, "num_workers": 1,
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


# -- no Ray ---------------------------------------------------------------------------------------------------
def test_common_helpers(tmp_path, monkeypatch):
    flat = common.flatten({"a": {"b": 1, "aws_secret_access_key": "x", "token": "t"}, "AWS_ACCESS_KEY_ID": "k",
                           "c": [1, 2]})
    assert flat == {"a.b": "1", "c": "[1, 2]"}
    monkeypatch.chdir(tmp_path)
    assert common.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert common.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert common.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:1"
    (tmp_path / "bad.yaml").write_text("a: [")
    from ots.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read params"):
        common.load_params(tmp_path / "bad.yaml")
    assert common.load_params(write(tmp_path, {"seed": 3}))["seed"] == 3


def test_repo_params_and_dvc_stage():
    root = Path(__file__).resolve().parents[1]
    params = train.resolve(common.load_params(root / "params.yaml"))
    assert params["train"]["dataset"] == params["data"]["output"]
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["cmd"] == "python -m pipelines.train --params params.yaml"
    assert {"model", "solver", "train", "seed"} <= {p for p in stage["params"] if isinstance(p, str)}
    assert "outputs/train/final.pt" in stage["outs"]


@pytest.mark.parametrize("override, message", [
    ({"bogus": 1}, "unknown keys in train section: bogus"),
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


# -- Ray, one node --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fault_tolerant_resume_into_the_same_mlflow_run(tmp_path, tiny_dataset, ray_local, mlflow_server, capsys,
                                                        monkeypatch):
    from mlflow import MlflowClient

    from ots.solver import load_checkpoint, load_map

    monkeypatch.setenv(train.TEST_HOOKS["inject_failure_at_step"], "5")
    # credentials in the tracking URI (the server ignores them) must never be printed or stored
    with_password = mlflow_server.replace("http://", "http://ots-user:s3cr3t-pw@")
    params = make_params(tmp_path, tiny_dataset, with_password, steps=8)
    assert train.main(["--params", write(tmp_path, params)]) == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["steps"] == 8 and summary["resumed_from"] == 4  # resumed from the step-4 checkpoint, not 0
    assert summary["tracking_uri"] == mlflow_server.replace("http://", "http://ots-user:***@")
    assert "s3cr3t-pw" not in (tmp_path / "out" / "run.json").read_text()
    assert (tmp_path / "out" / f".failure-injected-{summary['ray_run_name']}").read_text() == "5"

    # storage: the last K=2 checkpoints + the best, each a full OTS checkpoint
    run_dir = tmp_path / "ray" / summary["ray_run_name"]
    assert kept_checkpoints(run_dir) == [6, 8]
    assert (run_dir / "best" / "checkpoint.pt").is_file() and Path(summary["best_checkpoint"]).is_file()
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
    best = load_checkpoint(summary["best_checkpoint"])  # selected by val SWD, not by PSNR and not the last
    swd = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_swd")}
    assert summary["best_metric"]["name"] == "val_swd" and best["step"] == min(swd, key=swd.get)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert arts == {"checkpoints/final.pt"}
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images/val")}
    assert {"images/val/val_step000004.png", "images/val/val_step000008.png"} <= images
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
    assert kept_checkpoints(run_dir) == [2]  # the last good checkpoint stays
    assert str(run_dir) in err
    assert not (tmp_path / "out" / "run.json").exists()
    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("test-train").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_divergence_guard_stops_and_keeps_the_best_map(tmp_path, tiny_dataset, ray_local, capsys):
    """A map pushed far from R(x) (huge map learning rate, almost no cost) must be stopped by the guard, and the
    map kept must be the best one seen (here the untrained map = bicubic), not the diverged last one."""
    from mlflow import MlflowClient

    from ots.solver import load_checkpoint, load_map

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


# -- Ray, two nodes, S3 storage -------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_nodes_one_worker_each_with_s3_checkpoints(tmp_path, tiny_dataset, s3_env, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's single-node instance
    train.local_only()
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
        summary = train.run(params)
        assert summary["steps"] == 4 and summary["num_workers"] == 2
        assert len(set(summary["worker_nodes"])) == 2  # one worker per node
        assert set(summary["worker_nodes"]) == {n["NodeID"] for n in nodes}
        keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket, Prefix="ray/")["Contents"]]
        run_prefix = f"ray/{summary['ray_run_name']}/"
        ckpts = {k for k in keys if k.startswith(run_prefix + "checkpoint_") and k.endswith("/checkpoint.pt")}
        assert len(ckpts) == 2 and f"{run_prefix}best/checkpoint.pt" in keys
        assert summary["final_checkpoint_storage"].startswith(f"s3://{bucket}/ray/")
        assert os.path.isfile(summary["final_checkpoint"])
    finally:
        ray.shutdown()
        cluster.shutdown()
