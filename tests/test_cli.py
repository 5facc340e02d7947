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


def test_help_shows_the_defaults(capsys):
    """Issue 20.8: `--help` states each option's default, also for sub-commands of sub-commands."""
    for argv, shown in ((["evaluate", "--help"], ["(default: outputs/evaluate)", "(default: alex)",
                                                  "(default: 4)"]),
                        (["bench", "gaussian", "--help"], ["(default: "])):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(s in out for s in shown), (argv, out)
        assert "(default: None)" not in out and "(default: False)" not in out


def test_a_closed_pipe_ends_quietly(tmp_path):
    """Issue 20.8: `ots bench env | head` -- the reader goes away before ots writes: no BrokenPipeError
    traceback, exit status 141 (128 + SIGPIPE) as for any producer cut off by `head`."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "ots", "bench", "env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # before ots has printed anything (it imports torch first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
