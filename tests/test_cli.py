import json

import pytest

from ots.cli import main


def test_info_prints_reference_parameter_counts(capsys):
    assert main(["info"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["map"]["params"] / 1e6, 1) == 20.2
    assert round(out["potential"]["params"] / 1e6, 1) == 32.4


def test_bench_train_reports_both_loops_and_their_ratio(capsys, tmp_path):
    out_file = tmp_path / "train.json"
    args = ["bench", "train", "--blocks", "1", "--features", "8", "--batch", "2", "--hr-crop", "32",
            "--k-T", "2", "--steps", "1", "--warmup", "1", "--out", str(out_file)]
    assert main(args) == 0
    out = json.loads(out_file.read_text())
    assert json.loads(capsys.readouterr().out) == out
    for loop in ("reference", "fast"):
        r = out[loop]
        assert r["map_steps_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["hr_crops_per_s"] == pytest.approx(r["map_steps_per_s"] * 2)
    ratio = out["fast"]["hr_crops_per_s"] / out["reference"]["hr_crops_per_s"]
    assert out["speedup_hr_crops_per_s"] == pytest.approx(ratio)


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "train", "--hr-crop", "66"], "not divisible by the scale"),
        (["bench", "train", "--steps", "0"], "--steps >= 1"),
        (["bench", "gaussian", "--dim", "0"], "--dim >= 1"),
    ],
)
def test_bad_bench_arguments_are_one_line_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ots: error:") and message in err and "\n" not in err
