"""Stage `tune`: Ray Tune + ASHA on the unpaired SWD metric, MLflow parent/child runs, best params for train.

Tiny models (EDSR 1x8, critic for 32-px crops with 8 filters), LR 8 / HR 32 crops, 3 trials x 6 steps on CPU,
reports every 2 steps, ASHA grace 2. Only the function-trainable mode exists (no TorchTrainer per trial).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ots.errors import ConfigError
from pipelines import params as params_file
from pipelines import raywire
from pipelines.params import run_config
from pipelines.tune import driver, space, trial

TINY_MODEL = {
    "map": {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4, "bicubic_skip": True},
    "potential": {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16},
}
SPACE = {
    "solver.lr_map": {"loguniform": [3e-5, 3e-3]},
    "solver.k_T": {"choice": [1, 2]},
    "solver.cost.mse": {"uniform": [0.5, 4.0]},
    "train.batch_size": {"choice": [2, 4]},
}


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_params(tmp_path: Path, dataset: str, tracking_uri: str, space=None, **tune_overrides) -> dict:
    t = {
        "space": space or SPACE, "num_samples": 3, "max_steps": 6, "report_every": 2, "grace_period": 2,
        "reduction_factor": 2, "time_budget_s": 120, "val_crops": 8, "resources_per_trial": {"CPU": 1},
        "storage_path": str(tmp_path / "ray"), "output": str(tmp_path / "out" / "best_params.yaml"), "verbose": 0,
    }
    t.update(tune_overrides)
    return {
        "seed": 0, "model": TINY_MODEL,
        "solver": {"k_T": 2, "lr_map": 1e-4, "lr_potential": 1e-4, "cost": {"mse": 1.0}, "anchor_every": 0},
        "train": {"dataset": dataset, "batch_size": 2, "lr_crop": 8, "hr_crop": 32,
                  "mlflow": {"tracking_uri": tracking_uri, "experiment": "test-tune"}},
        "tune": t,
    }


def write(tmp_path: Path, params: dict) -> str:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    return str(p)


# -- no Ray ---------------------------------------------------------------------------------------------------
def test_repo_params_and_dvc_stage():
    root = Path(__file__).resolve().parents[1]
    params = params_file.load_params(root / "params.yaml")
    t, base = space.resolve_tune(params)
    searched = {"solver.lr_map", "solver.lr_potential", "solver.k_T", "solver.anchor_every", "train.batch_size"}
    assert searched <= set(t.space) and t.space_spec()["solver.k_T"] == {"choice": [3, 5, 10]}
    assert base["train"]["overrides"] is None  # the search starts from params.yaml, not from a previous result
    assert params["train"]["overrides"] == "configs/train_overrides.yaml"  # where a tune result is copied to
    stage = yaml.safe_load((root / "pipelines" / "optional" / "dvc.yaml").read_text())["stages"]["tune"]
    assert stage["cmd"] == "python -m pipelines.tune --params params.yaml" and stage["wdir"] == "../.."
    assert {"tune", "solver", "model", "seed"} <= set(stage["params"])
    assert "tune" not in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]  # default repro skips it


@pytest.mark.parametrize("space, message", [
    ({"solver.lr_mapp": {"uniform": [1e-5, 1e-4]}}, "unknown key 'solver.lr_mapp'"),
    ({"solver.lr_map": {"gaussian": [0, 1]}}, "unknown sampler 'gaussian'"),
    ({"solver.lr_map": {"loguniform": [1e-3, 1e-4]}}, "low < high"),
    ({"solver.k_T": {"choice": [0, 2]}}, "value 0 is invalid"),
    ({"train.steps": {"choice": [2, 4]}}, "cannot be searched"),
    ({"solver": {"choice": [1]}}, "is a section"),
])
def test_bad_space_is_a_one_line_error(tmp_path, capsys, space, message):
    path = write(tmp_path, make_params(tmp_path, "nowhere", f"sqlite:///{tmp_path}/m.db", space=space))
    assert driver.main(["--params", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error:") and message in err and "\n" not in err


def test_tune_defaults_live_in_one_place():
    """TuneConfig holds the defaults; params.yaml's `tune:` sets only what differs from them."""
    import dataclasses

    root = Path(__file__).resolve().parents[1]
    section = params_file.load_params(root / "params.yaml")["tune"]
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(space.TuneConfig) if f.name != "space"}
    assert "space" in section
    repeated = {k: v for k, v in section.items() if k != "space" and defaults.get(k) == v}
    assert not repeated, f"params.yaml repeats TuneConfig defaults: {repeated}"
    assert not hasattr(driver, "TUNE_DEFAULTS") and not hasattr(space, "TUNE_DEFAULTS")


def test_trials_build_through_build_solver_and_use_no_private_helpers():
    """The trial builds its solver with ots.solver.build_solver (no hand wiring of map/potential/cost/solver) and
    the tune modules import no `_private` name from another module."""
    import ast

    root = Path(__file__).resolve().parents[1] / "pipelines" / "tune"
    tree = ast.parse((root / "trial.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "build_solver" in names
    assert not names & {"build_map", "build_potential", "WeightedCost", "ReferenceMap", "OTSSolver", "SOLVERS"}
    for name in ("trial.py", "space.py", "report.py"):
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not [a.name for a in node.names if a.name.startswith("_")], (name, node.module)
    for path in root.glob("*.py"):
        assert len(path.read_text().splitlines()) < 300, path.name


def test_unpaired_val_crops(tiny_dataset):
    from ots.validation import unpaired_crops

    lr, hr, source = unpaired_crops(tiny_dataset, 5, 8, 32, seed=3)
    assert source == "val" and lr.shape == (5, 3, 8, 8) and hr.shape == (5, 3, 32, 32)
    assert float(lr.min()) >= -1 and float(lr.max()) <= 1
    again, _, _ = unpaired_crops(tiny_dataset, 5, 8, 32, seed=3)
    assert (again == lr).all()  # fixed: the same crops for every trial


def test_unknown_tune_key_and_missing_dataset(tmp_path, capsys):
    params = make_params(tmp_path, str(tmp_path / "nothing"), f"sqlite:///{tmp_path}/m.db", bogus=1)
    assert driver.main(["--params", write(tmp_path, params)]) == 2
    assert "unknown key 'tune.bogus'" in capsys.readouterr().err
    del params["tune"]["bogus"]
    assert driver.main(["--params", write(tmp_path, params)]) == 2
    assert capsys.readouterr().err.startswith("tune: error:")


def test_train_consumes_overrides(tmp_path):
    over = tmp_path / "best.yaml"
    over.write_text(yaml.safe_dump({"solver": {"lr_map": 2e-4, "cost": {"mse": 3.0}}, "train": {"batch_size": 4}}))
    params = make_params(tmp_path, "ds", "sqlite:///x.db")
    params["solver"]["cost"] = {"mse": 1.0, "l1": 0.5}
    params["train"]["overrides"] = str(over)
    r = run_config(params).to_params()
    assert r["solver"]["lr_map"] == 2e-4 and r["solver"]["k_T"] == 2
    assert r["solver"]["cost"] == {"mse": 3.0, "l1": 0.5} and r["train"]["batch_size"] == 4
    params["train"]["overrides"] = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read params"):
        run_config(params).to_params()


# -- Ray ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_trials_mlflow_and_best_params(tmp_path, tiny_dataset, mlflow_server, capsys):
    import json

    import ray
    from mlflow import MlflowClient

    raywire.local_only()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=False)
    try:
        params = make_params(tmp_path, tiny_dataset, mlflow_server)
        assert driver.main(["--params", write(tmp_path, params)]) == 0
    finally:
        ray.shutdown()
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 3 and results["metric"] == "swd"
    assert all(t["steps"] and t["history"] for t in trials)  # every trial reported intermediate metrics
    assert max(len(t["steps"]) for t in trials) > 1
    assert all(t["steps"] == list(range(2, 2 * len(t["steps"]) + 1, 2)) for t in trials)
    assert any(t["status"] == "completed" for t in trials)

    # best_params.yaml: only the searched keys, nested; the best trial has the minimum last metric
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert set(best) == {"solver", "train"} and set(best["solver"]) == {"lr_map", "k_T", "cost"}
    assert set(best["train"]) == {"batch_size"} and set(best["solver"]["cost"]) == {"mse"}
    winner = min(trials, key=lambda t: t["last"])
    assert results["best"]["trial_id"] == winner["trial_id"] and results["best"]["value"] == winner["last"]
    assert space.nest(winner["config"]) == best
    assert (out / "metric_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the train stage consumes it
    tp = make_params(tmp_path, tiny_dataset, mlflow_server)
    tp["train"]["overrides"] = str(out / "best_params.yaml")
    assert run_config(tp).to_params()["solver"]["lr_map"] == best["solver"]["lr_map"]

    # MLflow: one parent, one child per trial with its params and metric history
    client = MlflowClient(mlflow_server)
    parent = client.get_run(results["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["ots.stage"] == "tune"
    assert float(parent.data.params["best.solver.lr_map"]) == pytest.approx(best["solver"]["lr_map"])
    assert parent.data.metrics["best_swd"] == pytest.approx(winner["last"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "best_params.yaml", "results.json", "metric_vs_step.png"}
    exp = client.get_experiment_by_name("test-tune")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    by_trial = {c.data.tags["ots.trial_id"]: c for c in children}
    for t in trials:
        child = by_trial[t["trial_id"]]
        assert child.info.run_id == t["mlflow_run_id"] and child.info.status == "FINISHED"
        hist = client.get_metric_history(child.info.run_id, "swd")
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == t["steps"]
        assert child.data.params["solver.k_T"] == str(t["config"]["solver.k_T"])
        assert not any("aws" in k.lower() or "secret" in k.lower() for k in child.data.params)
    assert "tune: best swd=" in capsys.readouterr().out


# -- deployment fixes: device, resource names, s3:// storage ---------------------------------------------------
def test_trial_resources_keep_custom_names():
    assert space.trial_resources({"cpu": 2, "GPU": 1, "node_A": 1, "accelerator_type:H100": 0.001}) == {
        "CPU": 2.0, "GPU": 1.0, "node_A": 1.0, "accelerator_type:H100": 0.001}
    with pytest.raises(ConfigError, match="given twice"):
        space.trial_resources({"cpu": 1, "CPU": 2})
    with pytest.raises(ConfigError, match="resources_per_trial must be a mapping"):
        space.trial_resources({"CPU": -1})
    assert trial.trial_device({"CPU": 1.0, "GPU": 1.0}) == "cuda"
    assert trial.trial_device({"CPU": 1.0, "GPU": 0.25}) == "cuda"  # a fractional GPU is still a GPU
    assert trial.trial_device({"CPU": 1.0}) == "cpu"


def test_trial_trains_on_the_reserved_gpu(tmp_path, tiny_dataset):
    """A trial that reserved a GPU uses CUDA: here (no GPU) it must say so, not quietly train on the CPU."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_tune_on_s3_storage_with_custom_resources covers the CUDA path")
    cfg, base = space.resolve_tune(make_params(tmp_path, tiny_dataset, "sqlite:///x.db", max_steps=2))
    ctx = trial.TrialContext(params=base, tune=cfg, metric="swd",
                                  resources=space.trial_resources({"CPU": 1, "GPU": 1}))
    with pytest.raises(ConfigError, match="reserves a GPU but the trial sees no CUDA device"):
        trial.run_trial({}, ctx)


@pytest.mark.slow
def test_tune_on_s3_storage_with_custom_resources(tmp_path, tiny_dataset, s3_env, monkeypatch):
    """`tune.storage_path: s3://...` lands in the bucket (not in a local `s3:` folder); a case-sensitive custom
    resource schedules the trials; every trial reports the device it trained on."""
    import json
    import uuid

    import ray
    import torch

    monkeypatch.chdir(tmp_path)
    bucket = f"ots-tune-{uuid.uuid4().hex[:8]}"
    gpu = torch.cuda.is_available()
    resources = {"CPU": 1, "ots_Slot": 1, **({"GPU": 1} if gpu else {})}
    params = make_params(tmp_path, tiny_dataset, f"sqlite:///{tmp_path}/m.db", num_samples=2, max_steps=4,
                         grace_period=4, time_budget_s=900, storage_path=f"s3://{bucket}/tune",
                         resources_per_trial=resources,
                         space={"solver.lr_map": {"loguniform": [3e-5, 3e-3]}})
    raywire.local_only()
    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1 if gpu else 0, resources={"ots_Slot": 2},
             include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
    try:
        assert driver.main(["--params", write(tmp_path, params)]) == 0
    finally:
        ray.shutdown()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["trials"]) == 2 and all(t["steps"] and t["status"] != "error" for t in results["trials"])
    assert {t["device"] for t in results["trials"]} == {"cuda" if gpu else "cpu"}
    assert results["ray_storage"] == f"s3://{bucket}/tune/{results['ray_run_name']}"
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith(f"tune/{results['ray_run_name']}/") for k in keys), keys
    assert not (tmp_path / "s3:").exists()


def test_trial_errors_become_the_exception_line():
    """A trial's remote traceback is reported by its exception line (credentials in URIs masked)."""
    from pipelines.tune.report import error_line

    remote = ("Failure # 1 (occurred at 2026-11-26_19-00-00)\nTraceback (most recent call last):\n"
              '  File "x.py", line 1, in f\n    raise ConfigError(msg)\n'
              "ots.errors.ConfigError: tune.resources_per_trial reserves a GPU but the trial sees no CUDA device\n")
    assert error_line(remote) == ("ots.errors.ConfigError: tune.resources_per_trial reserves a GPU but the trial "
                                  "sees no CUDA device")
    assert error_line(RuntimeError("s3://key:secret@host/bucket unreachable")) == "s3://key:***@host/bucket unreachable"
    assert len(error_line("x" * 1000)) == 300
