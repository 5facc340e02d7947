"""Evaluation: bicubic vs maps on full val images, unavailable metrics, reports, CLI and the DVC stage."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import yaml

from ots.cli import main as ots_main
from ots.errors import ConfigError
from ots.eval_report import grid_image, markdown_table
from ots.evaluate import bicubic_upscale, evaluate_pairs, score_outputs, upscale_pairs
from ots.infer import upscale_array


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No backbone weights anywhere: empty hub cache, no OTS_*_WEIGHTS variables."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    for k in ("OTS_ALEXNET_WEIGHTS", "OTS_VGG16_WEIGHTS", "OTS_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def dataset(aim19_dir, tiny_cfg, tmp_path):
    from ots.data.shards import prepare_dataset

    out = tmp_path / "ds"
    prepare_dataset(str(aim19_dir), str(out), cfg=tiny_cfg, progress=False)
    return str(out)


@pytest.fixture
def pairs(dataset):
    from ots.data import read_val_pairs

    return read_val_pairs(dataset)


@pytest.fixture
def ckpt(tmp_path):
    from test_serving import make_checkpoint

    return make_checkpoint(tmp_path / "map.pt")


def test_evaluate_pairs_with_absent_weights_reports_unavailable(pairs, ckpt, no_weights):
    from ots.checkpoint import load_map

    model = load_map(ckpt)
    res = evaluate_pairs(pairs, {"ots": model, "gan": None}, tile=16, overlap=4, device="cpu")
    assert set(res["methods"]) == {"bicubic", "ots"} and res["n_images"] == 2 and res["scale"] == 4
    for vals in res["methods"].values():
        assert vals["lpips"] is None and vals["fid"] is None
        assert isinstance(vals["psnr"], float) and 5 < vals["psnr"] < 60
        assert 0 < vals["ssim"] <= 1 and vals["swd"] > 0
    assert "alexnet weights missing" in res["unavailable"]["lpips"]
    assert "inception weights missing" in res["unavailable"]["fid"]
    assert [r["image"] for r in res["per_image"]] == [n for n, _, _ in pairs]
    assert res["methods"]["ots"]["psnr"] != res["methods"]["bicubic"]["psnr"]
    table = markdown_table(res)
    assert "| bicubic |" in table and "| ots |" in table and "n/a" in table
    assert "lpips unavailable: alexnet weights missing" in table
    json.dumps(res, allow_nan=False)  # strict JSON: no NaN anywhere


@pytest.mark.slow
def test_evaluate_pairs_with_injected_random_backbones(pairs):
    # bicubic only: each FID costs ~20 s on 2 CPU cores (2048-d matrix square root)
    res = evaluate_pairs(pairs, {}, device="cpu", lpips_weights="random", inception_weights="random", fid_crop=64)
    assert res["unavailable"] == {} and res["fid_crop"] == 64 and set(res["methods"]) == {"bicubic"}
    for vals in res["methods"].values():
        assert isinstance(vals["lpips"], float) and isinstance(vals["fid"], float)


def test_outputs_are_full_images_through_tiled_inference(pairs, ckpt):
    from ots.checkpoint import load_map

    model = load_map(ckpt)
    outs = upscale_pairs(pairs, {"ots": model}, tile=16, overlap=4, device="cpu")
    for (_, lr, hr), b, o in zip(pairs, outs["bicubic"], outs["ots"]):
        assert b.shape == hr.shape == o.shape and o.dtype == np.uint8
        np.testing.assert_array_equal(o, upscale_array(model, lr, tile=16, overlap=4, device="cpu"))
    # bicubic of a constant image is that constant
    flat = np.full((5, 6, 3), 77, np.uint8)
    np.testing.assert_array_equal(bicubic_upscale(flat, 4), np.full((20, 24, 3), 77, np.uint8))
    # perfect outputs: PSNR is capped/infinite -> never NaN in the JSON
    res = score_outputs(pairs, {"perfect": [hr for _, _, hr in pairs]}, device="cpu")
    json.dumps(res, allow_nan=False)
    assert res["methods"]["perfect"]["ssim"] == pytest.approx(1.0)


def test_errors(pairs, ckpt):
    from ots.models import build_map

    x2 = build_map({"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 2})
    with pytest.raises(ConfigError, match="upscales x2 but the validation pairs are x4"):
        upscale_pairs(pairs, {"ots": x2}, device="cpu")
    with pytest.raises(ConfigError, match="no validation pairs"):
        upscale_pairs([], {}, device="cpu")
    with pytest.raises(ConfigError, match="baseline's name"):
        upscale_pairs(pairs, {"bicubic": x2}, device="cpu")


def test_grid_layout(pairs):
    outs = {"bicubic": [bicubic_upscale(lr, 4) for _, lr, _ in pairs], "ots": [hr for _, _, hr in pairs],
            "gan": [hr for _, _, hr in pairs]}
    g = grid_image(pairs, outs, crop=64, gap=4)
    assert g.dtype == np.uint8 and g.shape == (16 + 2 * 64 + 3 * 4, 5 * 64 + 6 * 4, 3)  # LR|bic|ots|gan|HR


def test_cli_evaluate_writes_reports(dataset, ckpt, tmp_path, no_weights, capsys):
    out = tmp_path / "eval"
    rc = ots_main(["evaluate", "--data", dataset, "--checkpoint", str(ckpt), "--gan", str(ckpt), "--out", str(out),
                   "--tile", "16", "--overlap", "4", "--device", "cpu", "--grid-crop", "64"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"bicubic", "ots", "gan"} and "per_image" not in m
    assert m["methods"]["ots"] == m["methods"]["gan"]
    assert "lpips" not in m["methods"]["ots"] and "unavailable" not in m  # DVC metrics: numbers only
    numbers = []

    def walk(d):
        for v in d.values():
            walk(v) if isinstance(v, dict) else numbers.append(v)

    walk(m)
    assert numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["ots"]["lpips"] is None and "lpips" in report["unavailable"]
    assert report["methods"]["ots"]["psnr"] == m["methods"]["ots"]["psnr"] and "per_image" not in report
    assert (out / "metrics.md").read_text() in capsys.readouterr().out
    csv = (out / "per_image.csv").read_text().splitlines()
    assert csv[0] == "image,bicubic_psnr,bicubic_ssim,ots_psnr,ots_ssim,gan_psnr,gan_ssim" and len(csv) == 3
    from ots.imageio import read_image

    assert read_image(out / "grid.png").shape == (16 + 2 * 64 + 3 * 4, 5 * 64 + 6 * 4, 3)
    assert not list(out.glob(".*tmp*"))
    assert ots_main(["evaluate", "--data", dataset, "--checkpoint", str(tmp_path / "nope.pt")]) == 2


@pytest.mark.slow
def test_evaluate_stage_logs_to_the_training_run(dataset, ckpt, tmp_path, mlflow_server, monkeypatch, no_weights):
    import mlflow

    from pipelines import evaluate as stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment(f"evaluate-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run() as run:
        pass
    (tmp_path / "outputs/train").mkdir(parents=True)
    (tmp_path / "outputs/train/run.json").write_text(json.dumps({
        "mlflow_run_id": run.info.run_id, "tracking_uri": mlflow_server, "experiment": "e", "steps": 1,
        "final_checkpoint": str(ckpt)}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "data": {"output": dataset},
                                      "evaluate": {"tile": 16, "overlap": 4, "device": "cpu", "grid_crop": 64}}))
    assert stage.main(["--params", str(params)]) == 0
    out = tmp_path / "outputs/evaluate"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.json", "metrics.md", "per_image.csv",
                                               "grid.png"}
    m = json.loads((out / "metrics.json").read_text())
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    assert got.data.metrics["val_psnr"] == pytest.approx(m["methods"]["ots"]["psnr"])
    assert got.data.metrics["val_bicubic_psnr"] == pytest.approx(m["methods"]["bicubic"]["psnr"])
    assert {"val_ssim", "val_swd"} <= set(got.data.metrics) and "val_lpips" not in got.data.metrics
    assert "weights missing" in got.data.tags["evaluate.unavailable.fid"]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert "evaluate/grid.png" in names and "evaluate/metrics.json" in names

    params.write_text(yaml.safe_dump({"data": {"output": dataset}, "evaluate": {"tiles": 3}}))
    assert stage.main(["--params", str(params)]) == 2


def test_evaluate_stage_without_training_run(tmp_path, monkeypatch, capsys):
    from pipelines import evaluate as stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"output": "data/demo"}}))
    assert stage.main(["--params", "params.yaml"]) == 2
    assert "run the train stage first" in capsys.readouterr().err


def test_no_mlflow_import_in_ots():
    import subprocess
    import sys

    code = "import sys, ots.evaluate, ots.cli; ots.cli.build_parser(); print('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_cli_y_channel_and_crop_border(dataset, ckpt, tmp_path, no_weights, pairs):
    """Issue 10 item 14: BasicSR's protocol (Y channel, crop_border) from the CLI, checked by hand."""
    out_rgb, out_y = tmp_path / "rgb", tmp_path / "y"
    base = ["evaluate", "--data", dataset, "--checkpoint", str(ckpt), "--tile", "0", "--device", "cpu",
            "--grid-images", "1"]
    assert ots_main(base + ["--out", str(out_rgb)]) == 0
    assert ots_main(base + ["--out", str(out_y), "--crop-border", "4", "--test-y-channel"]) == 0
    rgb = json.loads((out_rgb / "metrics.json").read_text())["methods"]["bicubic"]
    y = json.loads((out_y / "metrics.json").read_text())
    psnrs = []
    for _, lr, hr in pairs:
        sr = bicubic_upscale(lr, 4).astype(np.float64) / 255
        h = hr.astype(np.float64) / 255
        w = np.array([65.481, 128.553, 24.966]) / 255
        ys, yh = (sr @ w + 16 / 255)[4:-4, 4:-4], (h @ w + 16 / 255)[4:-4, 4:-4]
        psnrs.append(10 * np.log10(1 / np.mean((ys - yh) ** 2)))
    assert y["methods"]["bicubic"]["psnr"] == pytest.approx(float(np.mean(psnrs)), abs=1e-6)
    assert abs(y["methods"]["bicubic"]["psnr"] - rgb["psnr"]) > 0.05
    assert "Y channel, 4 border px" in (out_y / "metrics.md").read_text()
    assert ots_main(base + ["--out", str(out_y), "--crop-border", "-1"]) == 2


def test_evaluate_stage_shows_progress(dataset, ckpt, tmp_path, monkeypatch, no_weights, capsys):
    """The stage passes `evaluate.progress` through: a tqdm bar on stderr while the maps upscale, none when off."""
    from pipelines import evaluate as stage

    monkeypatch.chdir(tmp_path)
    for progress in (True, False):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"data": {"output": dataset}, "evaluate": {
            "checkpoint": str(ckpt), "tile": 16, "overlap": 4, "device": "cpu", "grid_crop": 64, "mlflow": False,
            "progress": progress}}))
        assert stage.main(["--params", str(params)]) == 0
        err = capsys.readouterr().err
        assert ("evaluate: upscale" in err) is progress, err


def test_upscaling_many_images_shows_a_progress_bar(pairs, ckpt, capsys):
    """Issue #10.12: evaluating full 2K images takes minutes; a bar over images x maps says how far it is."""
    from ots.checkpoint import load_map
    from ots.evaluate import upscale_pairs

    model = load_map(ckpt)
    out = upscale_pairs(pairs, {"ots": model, "gan": model}, tile=16, overlap=4, device="cpu")
    err = capsys.readouterr().err
    assert "evaluate: upscale" in err and f"{2 * len(pairs)}/{2 * len(pairs)}" in err
    quiet = upscale_pairs(pairs, {"ots": model}, tile=16, overlap=4, device="cpu", progress=False)
    assert capsys.readouterr().err == ""
    for a, b in zip(out["ots"], quiet["ots"]):
        np.testing.assert_array_equal(a, b)
