import json

import numpy as np
import pytest
import torch

from ots.bench import gaussian
from ots.bench.gaussian import benchmark, plan
from ots.cli import main
from ots.gaussian import (
    GaussianPair,
    GaussianRun,
    _eval_samples,
    bures_wasserstein2,
    evaluate_map,
    ot_displacement,
    stream_seed,
)


class Linear(torch.nn.Module):
    def __init__(self, pair):
        super().__init__()
        self.A = torch.tensor(pair.ot_matrix(), dtype=torch.float32)
        self.m1 = torch.tensor(pair.m1, dtype=torch.float32)
        self.m2 = torch.tensor(pair.m2, dtype=torch.float32)

    def forward(self, x):
        return self.m2 + (x - self.m1) @ self.A.T


def test_closed_form_ot_map_pushes_P_to_Q_and_is_symmetric_positive_definite():
    pair = GaussianPair.random(8, seed=3)
    A = pair.ot_matrix()
    assert np.allclose(A, A.T, atol=1e-10)
    assert np.linalg.eigvalsh(A).min() > 0
    assert np.allclose(A @ pair.S1 @ A, pair.S2, atol=1e-8)  # covariance of T*#P is S2
    m = evaluate_map(Linear(pair), pair, n=200_000)
    assert m["l2_uvp"] < 1e-6 and m["cos"] == pytest.approx(1.0, abs=1e-6)
    assert m["bw2_uvp"] < 0.2  # only the sampling error of the empirical covariance


def test_bures_wasserstein_basics():
    pair = GaussianPair.random(4, seed=1)
    assert bures_wasserstein2(pair.m1, pair.S1, pair.m1, pair.S1) == pytest.approx(0, abs=1e-9)
    # Same covariance: only the means count.
    assert bures_wasserstein2(pair.m1, pair.S1, pair.m2, pair.S1) == pytest.approx(np.sum((pair.m1 - pair.m2) ** 2))


def test_evaluation_samples_never_come_from_a_training_stream():
    seeds = range(50)
    train = {stream_seed(s, "train") for s in seeds}
    assert len(train) == 50 and not train & {stream_seed(s, "eval") for s in seeds}
    # Same integer seed for training and evaluation: still different samples.
    pair = GaussianPair.random(3, seed=0)
    g = torch.Generator().manual_seed(stream_seed(7, "train"))
    first_train_batch = pair.sampler("P", 64, g)()
    x_eval, _ = _eval_samples(pair, 64, seed=7)
    assert not torch.allclose(first_train_batch.double(), x_eval, atol=1e-3)


def test_plan_puts_the_equal_map_control_beside_its_equal_steps_row():
    rows = plan(lambdas=(0.0, 0.1, 1.0), equal_map_lambdas=(0.0, 0.1))
    assert [r.key for r in rows] == ["ots", "gan lam=0", "gan lam=0 equal-map", "gan lam=0.1",
                                     "gan lam=0.1 equal-map", "gan lam=1"]
    run = GaussianRun(steps=30, k=10)
    ots, gan, gan_eq = rows[0], rows[1], rows[2]
    assert ots.map_updates(run) == 300 and ots.outer_steps(run) == 30
    assert gan.map_updates(run) == 30 and gan.outer_steps(run) == 30       # equal steps: k× fewer map updates
    assert gan_eq.map_updates(run) == 300 and gan_eq.outer_steps(run) == 300  # the control: as many as OTS
    ots_long = plan(lambdas=(), equal_map_lambdas=(), ots_long=True)[1]
    assert ots_long.key == "ots long" and ots_long.outer_steps(run) == gan_eq.outer_steps(run)  # as many updates


def _fake_run(calls):
    """Stands in for training: deterministic metrics per (row, seed), so aggregation can be checked exactly."""

    def run_one(dim, pair_seed, run, row, seed, eval_seed, eval_n):
        calls.append((row.key, seed))
        base = 1.0 if row.method == "ots" else 10.0 + 100 * (row.lam or 0)
        return {"l2_uvp": base + seed, "cos": 0.99, "bw2_uvp": base / 2 + seed, "seed": seed, "seconds": 0.0}

    return run_one


def test_seeds_are_aggregated_ratios_computed_and_finished_runs_resumed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(gaussian, "_run_one", _fake_run(calls))
    out = str(tmp_path / "g.json")
    kw = dict(lambdas=(0.0, 1.0), equal_map_lambdas=(0.0,), eval_n=2000, out=out)
    benchmark(3, GaussianRun(steps=4, k=2), seeds=(0, 1), **kw)
    assert len(calls) == 8
    calls.clear()
    res = benchmark(3, GaussianRun(steps=4, k=2), seeds=(0, 1, 2), resume=True, **kw)
    assert sorted(calls) == sorted((k, 2) for k in ("ots", "gan lam=0", "gan lam=0 equal-map", "gan lam=1"))
    assert json.loads(open(out).read()) == json.loads(json.dumps(res))
    ots, gan1 = res["rows"]["ots"], res["rows"]["gan lam=1"]
    assert ots["l2_uvp"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert gan1["ratio_bw2_uvp"] == pytest.approx(56 / 1.5) and gan1["worse_by"] == pytest.approx(111 / 2)
    assert gan1["worse_by_conservative"] == pytest.approx(110 / 3)  # GAN's best seed against OTS's worst
    assert res["closest_gan_row"] in ("gan lam=0", "gan lam=0 equal-map")
    disp = ot_displacement(GaussianPair.random(3, seed=0), n=2000)
    assert gan1["beyond_cap"] == pytest.approx(np.mean(disp > 1.0)) and res["rows"]["gan lam=0"]["beyond_cap"] == 0
    # A different config starts afresh instead of mixing results.
    calls.clear()
    benchmark(3, GaussianRun(steps=5, k=2), seeds=(0,), resume=True, **kw)
    assert len(calls) == 4


def test_markdown_table_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gaussian, "_run_one", _fake_run([]))
    out = tmp_path / "g.json"
    assert main(["bench", "gaussian", "--dim", "3", "--steps", "2", "--lambdas", "0", "0.1", "--equal-map-lambdas",
                 "0", "--seeds", "0", "1", "--eval-samples", "500", "--out", str(out), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert main(["bench", "gaussian", "--table", str(out)]) == 0
    assert capsys.readouterr().out == table
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert [ln.split(" | ")[0:2] for ln in lines[1:5]] == [
        ["| **OTS**", "—"], ["| GAN λ = 0", "equal steps"], ["| GAN λ = 0", "equal map updates"],
        ["| GAN λ = 0.1", "equal steps"]]
    assert "1.50 [1.00, 2.00]" in lines[1]  # OTS L2-UVP over the two seeds


@pytest.mark.parametrize(
    "args, message",
    [
        (["--table", "/nonexistent/g.json"], "no such result file"),
        (["--lambdas", "-1"], "λ must be finite and >= 0"),
        (["--seeds", "0", "0"], "--seeds must be distinct"),
        (["--resume"], "--resume needs --out"),
        (["--jobs", "0"], "--jobs >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main(["bench", "gaussian", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ots: error:") and message in err and "\n" not in err


def test_a_non_result_json_is_refused(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert main(["bench", "gaussian", "--table", str(bad)]) == 2
    assert "not an `ots bench gaussian` result" in capsys.readouterr().err


def test_ots_recovers_the_ot_map_and_the_gan_does_not_even_with_as_many_map_updates():
    """D = 4 variant of `ots bench gaussian` (~15 s CPU): OTS finds T*; the GAN at λ = 0, whose map gets as many
    updates as OTS's, pushes P close to Q but with a map 3x+ farther from T*; at λ = 1 the 1/λ displacement cap
    keeps T#P far from Q. Margins checked on seeds 0-2 (OTS 1.7-1.9 %, GAN λ=0 18-21 %, GAN λ=1 BW² ~23 %)."""
    torch.set_num_threads(1)
    run = GaussianRun(dim=4, steps=200, batch=128, hidden=32, k=5)
    res = benchmark(4, run, lambdas=(1.0,), equal_map_lambdas=(0.0,), seeds=(0,), eval_n=20_000)
    ots, gan0, gan1 = (res["rows"][k] for k in ("ots", "gan lam=0 equal-map", "gan lam=1"))
    assert gan0["map_updates"] == ots["map_updates"] == 1000
    o = {m: ots[m]["mean"] for m in ("l2_uvp", "cos", "bw2_uvp")}
    assert o["l2_uvp"] < 4.0 and o["cos"] > 0.98 and o["bw2_uvp"] < 2.0
    assert o["l2_uvp"] < res["identity"]["l2_uvp"] / 20
    assert gan0["l2_uvp"]["mean"] > 3 * o["l2_uvp"]
    assert gan0["cos"]["mean"] < o["cos"]
    assert gan1["bw2_uvp"]["mean"] > 10 * o["bw2_uvp"]
