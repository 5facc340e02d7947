"""dvc.yaml: stage deps cover every module a stage imports; outputs, metrics and plots are declared once and
right; DVC marks `train` stale when the tuned params file changes (on a copy of the repo, without running it)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGE_MODULES = {("dvc.yaml", "prepare"): "pipelines.prepare", ("dvc.yaml", "train"): "pipelines.train",
                 ("dvc.yaml", "train_gan"): "pipelines.train.gan",
                 ("dvc.yaml", "evaluate"): "pipelines.evaluate", ("dvc.yaml", "register"): "pipelines.register",
                 ("pipelines/optional/dvc.yaml", "tune"): "pipelines.tune.__main__"}


def _module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def import_closure(module: str) -> set[str]:
    """Repo files (relative paths) a module imports, directly or not, lazy imports included (static)."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if f is None or f in seen:
            continue
        seen.add(f)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                todo += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return {str(p.relative_to(ROOT)) for p in seen}


def _stage(dvc_file: str, name: str) -> dict:
    return yaml.safe_load((ROOT / dvc_file).read_text())["stages"][name]


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


@pytest.mark.parametrize("dvc_file, stage", list(STAGE_MODULES))
def test_stage_deps_cover_the_modules_it_imports(dvc_file, stage):
    deps = _paths(_stage(dvc_file, stage)["deps"])
    missing = [f for f in sorted(import_closure(STAGE_MODULES[dvc_file, stage]))
               if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
    assert not missing, f"{dvc_file}:{stage} imports {missing} but does not depend on them"


def test_outputs_metrics_and_plots_are_declared_once():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    train, gan, ev = doc["stages"]["train"], doc["stages"]["train_gan"], doc["stages"]["evaluate"]
    assert {"outputs/train/final.pt", "outputs/train/best.pt", "outputs/train/run.json"} <= set(_paths(train["outs"]))
    assert "configs/train_overrides.yaml" in _paths(train["params"])
    assert (ROOT / "configs" / "train_overrides.yaml").is_file()
    # what `dvc metrics` / `dvc plots` read is where the stages write it, in git-tracked metrics/ (issue 20.3)
    assert _paths(ev["metrics"]) == [params["evaluate"]["metrics"]] == [params["register"]["metrics_file"]]
    assert _paths(train["metrics"]) == [params["train"]["summary"]]
    assert _paths(gan["metrics"]) == [params["baseline"]["train"]["summary"]]
    assert params["train"]["curves"] in _paths(train["outs"])
    assert params["baseline"]["train"]["curves"] in _paths(gan["outs"])
    assert params["evaluate"]["per_image"] in _paths(ev["outs"])
    declared = [p for s in doc["stages"].values() for k in ("outs", "plots", "metrics") for p in _paths(s.get(k))]
    read_by_dvc = [*_paths(ev["metrics"]), *_paths(train["metrics"]), *_paths(gan["metrics"]),
                   params["train"]["curves"], params["baseline"]["train"]["curves"], params["evaluate"]["per_image"]]
    for f in read_by_dvc:
        assert f.startswith("metrics/") and declared.count(f) == 1, f
        entry = next(e for s in doc["stages"].values() for k in ("outs", "metrics") for e in s.get(k) or []
                     if isinstance(e, dict) and f in e)
        assert entry[f]["cache"] is False, f  # committed to git, not to the DVC cache
    ignored = subprocess.run(["git", "check-ignore", *read_by_dvc], cwd=ROOT, capture_output=True, text=True).stdout
    assert not ignored, f"git ignores {ignored.split()}: `dvc metrics show -A` would show nothing for them"
    top = _paths(doc.get("plots"))
    per_image = params["evaluate"]["per_image"]
    assert top.count(per_image) + declared.count(per_image) == 2  # rendered by the top-level entry, once
    assert {"val_swd", "val_psnr"} <= set(top)  # the val curves
    assert "outputs/evaluate/grid.png" in top


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(args)}: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def test_dvc_marks_train_stale_when_the_tuned_params_change(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["overrides"] = "configs/train_overrides.yaml"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # stand-ins for the stage outputs, recorded in dvc.lock without running anything
    for f, data in {"data/manifest.json": "{}", "outputs/train/final.pt": "f", "outputs/train/best.pt": "b",
                    "outputs/train/run.json": "{}", "outputs/train_gan/final.pt": "gf",
                    "outputs/train_gan/best.pt": "gb", "outputs/train_gan/run.json": "{}",
                    "metrics/train.json": "{}", "metrics/train_val.csv": "step,val_swd\n0,1\n",
                    "metrics/train_gan.json": "{}", "metrics/train_gan_val.csv": "step,val_swd\n0,1\n",
                    "metrics/evaluate.json": '{"methods": {}}',
                    "outputs/evaluate/report.json": "{}", "outputs/evaluate/metrics.md": "",
                    "metrics/evaluate_per_image.csv": "image,bicubic_psnr,ots_psnr,gan_psnr\na,1,2,3\n",
                    "outputs/evaluate/grid.png": "png"}.items():
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text(data)
    (repo / "dvc.lock").unlink(missing_ok=True)
    _run(["dvc", "commit", "-f", "-q", "prepare", "train", "train_gan", "evaluate"], repo)
    assert json.loads(_run(["dvc", "status", "--json", "train"], repo)) == {}
    assert json.loads(_run(["dvc", "status", "--json", "prepare"], repo)) == {"prepare": ["always changed"]}

    (repo / "configs" / "train_overrides.yaml").write_text(yaml.safe_dump({"solver": {"lr_map": 3e-4}}))
    status = json.loads(_run(["dvc", "status", "--json", "prepare", "train", "train_gan"], repo))
    assert status.pop("prepare") == ["always changed"]  # it decides itself (see dvc.yaml)
    assert set(status) == {"train", "train_gan"}  # the tuned params reach the baseline too (same budget)
    assert {"configs/train_overrides.yaml": {"solver": "new"}} in [c.get("changed deps") for c in status["train"]]

    # per_image.csv is one plot (with its x/y), not two
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], repo))["data"]
    per_image = [k for k in shown if "per_image.csv" in k]
    assert per_image == ["metrics/evaluate_per_image.csv"] and len(shown[per_image[0]]) == 1
    assert shown["outputs/evaluate/grid.png"][0]["type"] == "image"


# Every stage's command replaced by this stand-in (in a copy of the repo): it writes the stage's declared outputs,
# the numbers from params, so DVC's experiment machinery runs for real in seconds.
STUB_STAGE = """
import json, sys
from pathlib import Path
import yaml
stage = yaml.safe_load(Path("dvc.yaml").read_text())["stages"][sys.argv[1]]
lr = yaml.safe_load(Path("params.yaml").read_text())["solver"]["lr_map"]
for entry in stage.get("outs", []) + stage.get("metrics", []):
    path = Path(next(iter(entry)) if isinstance(entry, dict) else entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({"steps": 2, "lr_map": lr}))
    elif path.name.endswith("_val.csv"):
        rows = ["step,val_swd,val_psnr,val_bicubic_swd,val_bicubic_psnr", "0,70,23,70,23", f"2,{70 - lr},23,70,23"]
        path.write_text("\\n".join(rows) + "\\n")
    else:
        path.write_text(sys.argv[1])
"""


def test_metrics_are_in_git_and_dvc_experiments_compare_them(tmp_path):
    """Issue 20.3: the summaries DVC reads are committed with the code (not git-ignored), so `dvc metrics diff`,
    `dvc plots` (the val curves) and `dvc exp run -S solver.lr_map=...` + `dvc exp show` see every run."""
    repo = copy_repo(tmp_path / "repo", git=False)
    (repo / "stub_stage.py").write_text(STUB_STAGE)
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())
    for name, stage in doc["stages"].items():
        stage["cmd"] = f"python stub_stage.py {name}"
    (repo / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (repo / "dvc.lock").unlink(missing_ok=True)
    git = ["git", "-c", "user.email=ci@ots", "-c", "user.name=ci"]
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "repro", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run([*git, "commit", "-qm", "baseline run"], repo)
    committed = _run(["git", "ls-files", "metrics"], repo).split()
    assert {"metrics/train.json", "metrics/train_val.csv", "metrics/evaluate.json"} <= set(committed)

    _run(["dvc", "exp", "run", "-q", "-S", "solver.lr_map=0.0003", "-n", "lr-3e-4"], repo)
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    baseline = next(r for r in shown if r["rev"] != "workspace")
    assert baseline["data"]["metrics"]["metrics/train.json"]["data"]["lr_map"] == 5e-5  # the commit's numbers
    (exp,) = [x for e in baseline["experiments"] for x in e["revs"]]
    assert exp["name"] == "lr-3e-4"
    assert exp["data"]["params"]["params.yaml"]["data"]["solver"]["lr_map"] == 3e-4
    assert exp["data"]["metrics"]["metrics/train.json"]["data"]["lr_map"] == 3e-4
    assert exp["data"]["metrics"]["metrics/evaluate.json"]["data"]["lr_map"] == 3e-4
    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD", "--json"], repo))  # the exp is in the workspace
    assert diff["metrics/train.json"]["lr_map"] == {"old": 5e-5, "new": 3e-4, "diff": 3e-4 - 5e-5}
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], repo))["data"]
    rows = plots["val_swd"][0]["content"]["data"]["values"]
    assert {r["step"] for r in rows} == {"0", "2"} and {"val_swd", "val_bicubic_swd"} <= set(rows[0])


DEFAULT_STAGES = ["prepare", "train", "train_gan", "evaluate", "register"]


def test_committed_dvc_lock_matches_the_code_and_params(tmp_path):
    """`dvc status` on a clean checkout must not report code, params or commands changed since dvc.lock was
    written: a stale lock means `dvc repro` reruns everything and the committed metrics do not belong to this code.
    Outputs are absent on a fresh clone ("deleted"); only changes count. Refresh the lock with `make demo`."""
    repo = copy_repo(tmp_path / "repo")
    status = json.loads(_run(["dvc", "status", "--json", *DEFAULT_STAGES], repo))
    stale = {}
    for stage, entries in status.items():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):  # "changed command", or "always changed" (prepare decides itself)
                if entry != "always changed":
                    stale.setdefault(stage, []).append(entry)
                continue
            for kind, changes in entry.items():
                if kind == "changed outs":
                    continue
                changed = {k: v for k, v in changes.items() if v != "deleted"} if isinstance(changes, dict) else changes
                if changed:
                    stale.setdefault(stage, []).append({kind: changed})
    assert not stale, f"dvc.lock is stale (run `make demo` and commit dvc.lock): {stale}"
