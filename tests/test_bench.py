"""The GPU check (bench/gpu_all.sh) and the benchmarks behind it, run at toy sizes on the CPU (--smoke)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ots.bench.common import bf16_peak_tflops
from ots.bench.train import count_flops, run_loop
from ots.cli import main
from ots.models import REFERENCE_MAP, REFERENCE_POTENTIAL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_all.sh"


def run_script(out: Path, *args: str, timeout: int = 900, **env) -> subprocess.CompletedProcess:
    """bench/gpu_all.sh in its own process group, all of which is killed if it overruns (~35 s for parts 1-3
    on a quiet 2-core VM; the generous limit is for a busy one)."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **env}
    cmd = ["bash", str(SCRIPT), "--out", str(out), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session the script leads (`timeout` gives its child a process group of its
    own, so killing the script's group would leave the benchmark running)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def parts(out: Path) -> dict[str, str]:
    rows = [ln.split("\t") for ln in (out / "parts.tsv").read_text().splitlines()[1:]]
    return {r[0]: r[1] for r in rows}


def test_gpu_all_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_all_smoke_runs_parts_1_to_3_and_writes_their_json(tmp_path):
    done = run_script(tmp_path, "--smoke", "--parts", "env,1,2,3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert parts(tmp_path) == {"env": "0", "1": "0", "2": "0", "3": "0"}, done.stdout

    env = json.loads((tmp_path / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False and env["gpus"] == []

    # (1) reference vs fast loop, one process, fp32
    b8 = json.loads((tmp_path / "train_b8_fp32.json").read_text())
    assert b8["complete"] and b8["smoke"] and "running" not in b8
    assert [(r["loop"], r["status"], r["bf16"]) for r in b8["runs"]] == [("reference", "ok", False),
                                                                         ("fast", "ok", False)]
    for r in b8["runs"]:
        assert r["map_steps_per_s"] > 0 and r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "process_max_rss"
        assert r["hr_crops_per_s"] == pytest.approx(r["map_steps_per_s"] * r["batch"])
        assert r["fraction_of_bf16_peak_counted"] is None  # no peak for a CPU
    assert b8["speedup_hr_crops_per_s"] == pytest.approx(b8["fast"]["hr_crops_per_s"] /
                                                         b8["reference"]["hr_crops_per_s"])
    assert b8["flops"]["per_hr_crop_per_map_step_gflop"] > b8["flops"]["map_step_gflop"] > 0

    # (2) fast loop, bf16, eager, with the profiler's top kernels
    b32 = json.loads((tmp_path / "train_b32_bf16.json").read_text())
    (run,) = b32["runs"]
    assert run["status"] == "ok" and run["bf16"] and run["compile"] == "eager"
    assert run["profile"] and {"name", "calls", "self_ms", "percent"} <= set(run["profile"][0])
    assert sum(k["percent"] for k in run["profile"]) <= 100.0 + 1e-6
    assert "aten::" in Path(run["profile_table"]).read_text()

    # (3) inference: untiled and tiled, MP/s and peak memory each, tiled relative to untiled
    inf = json.loads((tmp_path / "infer.json").read_text())
    assert inf["complete"] and all(r["status"] == "ok" for r in inf["results"])
    assert [(r["tile"], r["overlap"]) for r in inf["results"]] == [(None, 0), (16, 2), (16, 4)]
    for r in inf["results"]:
        assert r["output"] == [4 * r["input"][0]] * 2 and r["output_mp_per_s"] > 0 and r["peak_memory_mb"] > 0
    assert all(0 < r["relative_to_untiled"] for r in inf["results"][1:])
    assert inf["results"][0]["model_only_mp_per_s"] > 0 and inf["results"][1]["model_only_mp_per_s"] is None
    assert inf["results"][2]["tiles"] == 4 and inf["results"][2]["pixels_processed_ratio"] == pytest.approx(
        (2 * 16) ** 2 / 24**2)

    summary = (tmp_path / "summary.md").read_text()
    assert "### Training step" in summary and "fast / reference" in summary and summary in done.stdout


def test_gpu_all_smoke_compiled_parts(tmp_path):
    done = run_script(tmp_path, "--smoke", "--parts", "2c,3c")
    assert done.returncode == 0, done.stdout + done.stderr
    assert parts(tmp_path) == {"2c": "0", "3c": "0"}, done.stdout
    comp = json.loads((tmp_path / "train_b32_bf16_compiled.json").read_text())
    (run,) = comp["runs"]
    assert run["status"] == "ok" and run["compile"] == "reduce-overhead" and run["graphs_compiled"] >= 2
    assert comp["config"]["compile_backend"] == "aot_eager" and run["profile"]
    inf = json.loads((tmp_path / "infer_compiled.json").read_text())
    assert {r["compile"] for r in inf["results"]} == {"default"} and all(r["status"] == "ok" for r in inf["results"])


def test_gpu_all_respects_its_time_budget(tmp_path):
    done = run_script(tmp_path, "--smoke", BUDGET_S="5")
    assert done.returncode == 0, done.stderr
    assert set(parts(tmp_path).values()) == {"skipped"} and "skipped" in done.stdout
    assert "train_b8_fp32.json | missing" in (tmp_path / "summary.md").read_text()


def test_gpu_all_refuses_a_machine_without_gpu_unless_smoke(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_script(tmp_path)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--smoke" in done.stderr
    bad = run_script(tmp_path, "--frobnicate")
    assert bad.returncode == 2 and "unknown argument --frobnicate" in bad.stderr


def test_compiled_fast_loop_computes_the_same_step_as_eager():
    """The graph-safe compile path (outputs cloned at the boundary) changes speed, not the optimisation."""
    kw = dict(map_cfg={"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4},
              pot_cfg={"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16}, batch=2, hr_crop=32,
              k_T=2, steps=2, warmup=1, device=torch.device("cpu"))
    eager = run_loop("fast", **kw)
    compiled = run_loop("fast", compile="reduce-overhead", backend="aot_eager", **kw)
    torch._dynamo.reset()
    assert compiled["graphs_compiled"] >= 2
    for term, value in eager["final_losses"].items():
        assert compiled["final_losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-7), term


def test_a_compile_mode_that_fails_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["bench", "train", "--smoke", "--loop", "fast", "--compile-modes", "eager,default",
               "--compile-backend", "no_such_backend", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    ok, failed = report["runs"]
    assert ok["status"] == "ok" and report["fast"] == ok
    assert failed["status"] == "failed" and failed["compile"] == "default" and "no_such_backend" in failed["error"]
    assert "\n" not in failed["error"] and "FAILED" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["bench", "train", "--smoke", "--compile-modes", "turbo"], "unknown compile mode(s) turbo"),
    (["bench", "infer", "--tiles", "8", "--overlaps", "8"], "overlap must be smaller"),
    (["bench", "infer", "--sizes", "a,b"], "comma list of integers"),
    (["bench", "report", "/no/such/dir"], "no such folder"),
])
def test_bad_bench_arguments_are_one_line_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ots: error:") and message in err and "\n" not in err


def test_bf16_peak_table_matches_card_names():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("Tesla T4") is None


def test_flops_of_the_paper_config():
    """Counted on meta tensors: EDSR 64x128 fwd 45 GFLOP per crop; a map step (T fwd+bwd, frozen f fwd + input
    grad) is ~186 GFLOP per HR crop, above the issue's round 140 (which is about T's fwd+bwd alone)."""
    f = count_flops(REFERENCE_MAP, REFERENCE_POTENTIAL, hr_crop=128, k_T=15)
    assert 180 < f["map_step_gflop"] < 192
    assert f["per_hr_crop_per_map_step_gflop"] == pytest.approx(f["map_step_gflop"] + f["potential_step_gflop"] / 15)


def test_report_shows_runs_cut_short_and_the_training_curve(tmp_path, capsys):
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "curve.json").write_text(json.dumps({
        "device": "cuda", "wall_s": 181.0, "stopped": "time budget 180 s reached at step 900",
        "bicubic": {"swd": 30.0, "psnr": 24.0}, "best": {"step": 900, "swd": 25.5, "psnr": 23.1},
        "history": [{"step": 0, "swd": 40.0}, {"step": 900, "swd": 25.5, "psnr": 23.1}]}))
    running = {"loop": "fast", "batch": 32, "bf16": True, "compile": "reduce-overhead"}
    (tmp_path / "train_b32_bf16_compiled.json").write_text(json.dumps({"runs": [], "running": running}))
    assert main(["bench", "report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "cut short while running" in text and "reduce-overhead" in text
    assert "time budget 180 s reached at step 900" in text and '"swd": 25.5' in text
    assert text == (tmp_path / "summary.md").read_text() + "\n"
    assert "env.json missing" in text and "infer.json | missing" in text


def test_cuda_graphs_that_fail_fall_back_to_plain_compile_and_say_why(tmp_path, monkeypatch):
    import ots.bench.train as bench_train

    real = bench_train.compile_solver

    def graphs_fail(solver, mode, backend="inductor"):
        if mode == "reduce-overhead":
            raise RuntimeError("Error: accessing tensor output of CUDAGraphs that has been overwritten\nmore")
        real(solver, mode, backend)

    monkeypatch.setattr(bench_train, "compile_solver", graphs_fail)
    out = tmp_path / "t.json"
    assert main(["bench", "train", "--smoke", "--loop", "fast", "--compile-modes", "reduce-overhead",
                 "--compile-fallback", "default", "--out", str(out)]) == 0
    failed, fallback = json.loads(out.read_text())["runs"]
    assert failed["status"] == "failed" and "overwritten" in failed["error"] and "more" not in failed["error"]
    assert fallback["status"] == "ok" and fallback["compile"] == "default"
    assert fallback["fallback_for"] == "reduce-overhead" and fallback["fallback_reason"] == failed["error"]
