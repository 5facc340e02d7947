"""The registry gate: the champion alias moves only on a strict improvement; the `register` stage end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

import mlflow  # noqa: E402

from ots.errors import ConfigError  # noqa: E402
from pipelines import register, run_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_decide_rules():
    d = register.decide
    assert d(20.0, None, has_champion=False, metric="val_psnr") == (True, "promoted: no champion yet (val_psnr=20)")
    assert d(21.0, 20.0, has_champion=True, metric="val_psnr")[0] is True
    assert d(19.0, 20.0, has_champion=True, metric="val_psnr")[0] is False
    move, why = d(20.0, 20.0, has_champion=True, metric="val_psnr", current_version="3")
    assert not move and "ties champion v3" in why
    assert d(None, 20.0, has_champion=True, metric="val_psnr") == (False, "not promoted: this version has no val_psnr")
    assert d(float("nan"), None, has_champion=False, metric="val_psnr")[0] is False
    assert d(21.0, None, has_champion=True, metric="val_psnr")[0] is False  # champion without the metric stays
    assert d(0.1, 0.2, has_champion=True, metric="val_lpips", greater_is_better=False)[0] is True
    assert d(0.3, 0.2, has_champion=True, metric="val_lpips", greater_is_better=False)[0] is False


def test_bicubic_floor_rules():
    f = register.below_floor
    good = {"val_swd": 8.0, "val_bicubic_swd": 10.0, "val_psnr": 18.7, "val_bicubic_psnr": 19.0}
    assert f(good, "val_swd", False, "bicubic", 0.5) is None
    assert f(good, "val_swd", False, "bicubic", 0.5, margin=0.1) is None  # 8 < 10 - 1
    tie = {**good, "val_swd": 9.95}  # better by 0.5 %: a tie for the gate
    assert "is not better than bicubic (10) by 1%" in f(tie, "val_swd", False, "bicubic", 0.5, margin=0.01)
    assert "not better than bicubic" in f({**good, "val_swd": 10.0}, "val_swd", False, "bicubic", 0.5)
    assert "more than 0.5 dB below bicubic" in f({**good, "val_psnr": 18.4}, "val_swd", False, "bicubic", 0.5)
    assert f({**good, "val_psnr": 18.4}, "val_swd", False, "bicubic", None) is None
    assert "is missing" in f({"val_swd": 1.0}, "val_swd", False, "bicubic", 0.5)
    assert f({"val_swd": 12.0}, "val_swd", False, None, 0.5) is None  # no floor configured
    assert "not better than bicubic" in f({"val_psnr": 18.0, "val_bicubic_psnr": 19.0}, "val_psnr", True,
                                          "bicubic", None)


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(f"register-{uuid.uuid4().hex[:8]}")
    return mlflow_server


def write_stage_inputs(tmp_path, run_id: str, tracking_uri: str, ckpt, psnr: float | None, name: str):
    (tmp_path / "outputs/train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "outputs/evaluate").mkdir(parents=True, exist_ok=True)
    (tmp_path / "outputs/train/run.json").write_text(json.dumps({
        "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "experiment": "x", "steps": 1,
        "final_checkpoint": str(ckpt)}))
    methods = {"bicubic": {"psnr": 19.0, "ssim": 0.5, "lpips": None, "fid": None, "swd": 10.0},
               "ots": {"psnr": psnr, "ssim": 0.6, "lpips": None, "fid": None, "swd": 8.0}}
    (tmp_path / "outputs/evaluate/metrics.json").write_text(json.dumps({"methods": methods, "unavailable": {}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"register": {"model_name": name},
                                      "serve": {"tile": 16, "overlap": 4, "max_pixels": 10_000}}))
    return params


@pytest.mark.slow
def test_register_stage_and_champion_gate(tracking, tmp_path, monkeypatch):
    from test_serving import make_checkpoint

    monkeypatch.chdir(tmp_path)
    ckpt = make_checkpoint(tmp_path / "final.pt")
    name = f"ots-sr-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient()

    # v1 through the stage, as DVC runs it (a fresh process): logs the pyfunc into the training run, registers,
    # becomes champion -- and prints no warnings (MLflow's type-hint advice, cloudpickle) on stderr
    with mlflow.start_run() as run:
        pass
    params = write_stage_inputs(tmp_path, run.info.run_id, tracking, ckpt, 20.0, name)
    proc = subprocess.run([sys.executable, "-m", "pipelines.register", "--params", str(params)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [ln for ln in proc.stderr.splitlines() if "Warning" in ln], proc.stderr
    res = json.loads((tmp_path / "outputs/register/result.json").read_text())
    assert res["version"] == "1" and res["alias_moved"] and res["champion"] == "1"
    assert not list((tmp_path / "outputs/register").glob(".*tmp*"))

    # MLflow 3: the evaluation metrics are linked to the logged model, not only to the run
    logged = client.get_logged_model(res["model_id"])
    on_model = {m.key: m.value for m in logged.metrics or []}
    assert on_model["val_psnr"] == 20.0 and on_model["val_bicubic_swd"] == 10.0
    assert logged.source_run_id == run.info.run_id
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string="metrics.val_swd < 9", output_format="list")
    assert res["model_id"] in {m.model_id for m in found}
    v1 = client.get_model_version(name, "1")
    assert v1.tags["metric.val_psnr"] == "20.0" and v1.tags["champion.decision"] == "promoted"
    assert v1.tags["metric.val_bicubic_psnr"] == "19.0" and "no champion yet" in v1.description
    assert v1.run_id == run.info.run_id
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "1" and res["challenger"] == "1"
    assert f"v1 is @challenger (serve it: models:/{name}@challenger)" in proc.stdout
    model_uri = res["model_uri"]

    def champion():
        return client.get_model_version_by_alias(name, "champion").version

    cases = [  # (metrics, moves?, expected champion, words in the reason)
        ({"val_psnr": 19.5}, False, "1", "does not beat champion v1"),
        ({"val_psnr": 20.0}, False, "1", "ties champion v1"),
        ({"val_psnr": 20.5, "val_ssim": 0.7}, True, "4", "beats champion v1"),
        ({"val_ssim": 0.9}, False, "4", "has no val_psnr"),
        ({"val_psnr": float("nan")}, False, "4", "has no val_psnr"),
    ]
    for i, (metrics, moves, expected, words) in enumerate(cases, start=2):
        r = register.register_version(model_uri, name, metrics, run_id=run.info.run_id, metric="val_psnr",
                                      greater_is_better=True, floor=None)
        assert r["version"] == str(i) and r["alias_moved"] is moves and words in r["reason"], r
        assert champion() == expected
        assert client.get_model_version_by_alias(name, "challenger").version == str(i)  # always the newest
        mv = client.get_model_version(name, str(i))
        assert mv.tags["champion.decision"] == ("promoted" if moves else "kept")
        assert mv.tags["champion.reason"] == r["reason"] and words in mv.description
    assert client.get_model_version(name, "4").tags["champion.previous"] == "1"

    # lower-is-better metric on the same registry: champion v4 has no val_swd tag, so its value comes from its
    # logged model (the stage linked the evaluation, val_swd=8.0, to it)
    r = register.register_version(model_uri, name, {"val_psnr": 1.0, "val_swd": 9.0}, metric="val_swd",
                                  greater_is_better=False, floor=None)
    assert not r["alias_moved"] and r["champion_value"] == 8.0 and "does not beat champion v4 (8;" in r["reason"]

    # bicubic is the floor (the defaults): a map worse than bicubic is registered but never champion, and why
    broken = {"val_swd": 12.0, "val_bicubic_swd": 10.0, "val_psnr": 25.0, "val_bicubic_psnr": 19.0}
    r = register.register_version(model_uri, f"{name}-floor", broken, run_id=run.info.run_id)
    assert not r["alias_moved"] and r["champion"] is None and "not better than bicubic" in r["reason"]
    mv = client.get_model_version(f"{name}-floor", r["version"])
    assert mv.tags["champion.decision"] == "kept" and "bicubic is the floor" in mv.description
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(f"{name}-floor", "champion")
    # ... yet the demo leaves something to serve: the challenger (issue 20.1)
    assert r["challenger"] == r["version"]
    assert client.get_model_version_by_alias(f"{name}-floor", "challenger").version == r["version"]


def test_register_stage_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {"bogus": 1}}))
    assert register.main(["--params", "params.yaml"]) == 2
    assert "unknown key 'register.bogus'" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {}}))
    assert register.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("register: error:") and "run.json not found" in err and len(err.splitlines()) == 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {"challenger": "champion"}}))
    assert register.main(["--params", "params.yaml"]) == 2
    assert "register.challenger and register.alias are both 'champion'" in capsys.readouterr().err


def test_run_record_reads_what_train_and_evaluate_wrote(tmp_path, monkeypatch):
    """register reads run.json and metrics.json through pipelines.run_record, not through the evaluate stage."""
    import ast

    tree = ast.parse((ROOT / "pipelines" / "register.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "pipelines.evaluate" not in imported and "pipelines.run_record" in imported

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    info = {"tracking_uri": "http://u:***@host:5000", "best_checkpoint": "b.pt", "final_checkpoint": "f.pt"}
    assert run_record.selected_checkpoint(info) == "b.pt"
    assert run_record.selected_checkpoint({"final_checkpoint": "f.pt"}) == "f.pt"
    doc = {"train": {"mlflow": {"tracking_uri": "http://127.0.0.1:5001"}}}
    assert run_record.tracking_uri(doc, info) == "http://127.0.0.1:5001"  # a redacted URI cannot connect
    assert run_record.tracking_uri(doc, {"tracking_uri": "http://127.0.0.1:7"}) == "http://127.0.0.1:7"
    assert run_record.tracking_uri({}, {}).startswith("sqlite:////")  # the default, made absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert run_record.tracking_uri(doc, {"tracking_uri": "http://127.0.0.1:7"}) == "http://127.0.0.1:9"

    f = tmp_path / "metrics.json"
    f.write_text(json.dumps({"methods": {"ots": {"psnr": 20.0, "lpips": None}, "bicubic": {"swd": 3.0}}}))
    assert run_record.read_metrics(f) == {"val_psnr": 20.0, "val_bicubic_swd": 3.0}
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable metrics"):
        run_record.read_metrics(f)
    (tmp_path / "run.json").write_text("[1]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        run_record.read_run_info(tmp_path / "run.json")
    assert run_record.read_run_info(tmp_path / "missing.json", required=False) == {}
