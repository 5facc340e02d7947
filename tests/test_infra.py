"""Deployment files that cannot run here (no Docker daemon, no AWS, no Kubernetes), checked as far as possible:
pyproject bounds vs the code, the lock vs pyproject and the tested versions, the Dockerfile vs the lock, the
Ray launcher config through Ray's own validator, KubeRay manifests against the CRD fields of KubeRay v1.7.0."""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"
# import name -> distribution, for what the code imports directly
DISTS = {"torch": "torch", "torchvision": "torchvision", "lpips": "lpips", "pyarrow": "pyarrow", "numpy": "numpy",
         "scipy": "scipy", "skimage": "scikit-image", "PIL": "pillow", "pandas": "pandas", "matplotlib": "matplotlib",
         "tqdm": "tqdm", "yaml": "pyyaml", "ray": "ray", "mlflow": "mlflow", "dvc": "dvc", "boto3": "boto3",
         "botocore": "boto3", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
         "pytest": "pytest", "moto": "moto", "psutil": "psutil", "packaging": "pytest",
         "pytorch_fid": "pytorch-fid", "uvicorn": "uvicorn", "piq": "piq"}


def _requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for e in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][e]]
    return reqs


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def _top_level_imports(paths) -> set[str]:
    names = set()
    for f in paths:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


# -- pyproject ------------------------------------------------------------------------------------------------
def test_pyproject_metadata_and_bounds():
    proj = PYPROJECT["project"]
    assert proj["license"] == "MIT"  # SPDX expression (PEP 639)
    floor = re.match(r"setuptools>=(\d+)", PYPROJECT["build-system"]["requires"][0])
    assert floor and int(floor.group(1)) >= 77  # the first setuptools that reads license expressions
    reqs = {r.name: r for r in _requirements(("pipeline",))}
    assert not any(s.operator == "<=" for r in reqs.values() for s in r.specifier)  # no cap on a patch release
    assert {"train", "tune", "default"} <= reqs["ray"].extras  # default: the job server of `ray job submit`
    major, minor = (int(x) for x in metadata.version("ray").split(".")[:2])
    assert reqs["ray"].specifier.contains(metadata.version("ray"))  # the tested minor, and only that one
    assert not reqs["ray"].specifier.contains(f"{major}.{minor + 1}.0")
    assert not reqs["ray"].specifier.contains(f"{major}.{minor - 1}.0")
    assert not reqs["mlflow"].specifier.contains("2.22.0")  # log_model(name=), search_logged_models: MLflow 3
    for r in reqs.values():  # what is installed here satisfies the bounds
        assert r.specifier.contains(metadata.version(r.name), prereleases=True), (r, metadata.version(r.name))


def test_direct_imports_are_declared():
    declared = {r.name.lower() for r in _requirements(("dev", "export", "s3", "perceptual", "pipeline"))}
    code = _top_level_imports([*ROOT.glob("ots/**/*.py"), *ROOT.glob("pipelines/**/*.py")])
    tests = _top_level_imports(ROOT.glob("tests/*.py"))
    stdlib = set(sys.stdlib_module_names) | {"ots", "pipelines", "conftest", "test_serving", "test_data_hardening",
                                             "test_infer", "__future__"}
    for name in sorted((code | tests) - stdlib):
        assert name in DISTS, f"{name} is imported but not mapped to a distribution in this test"
        assert DISTS[name] in declared, f"{name} ({DISTS[name]}) is imported but not declared in pyproject.toml"


# -- the lock -------------------------------------------------------------------------------------------------
def test_lock_pins_every_requirement_within_its_bounds_and_the_tested_versions():
    pins = _locked()
    for r in _requirements(("dev", "export", "s3", "perceptual", "pipeline")):
        name = r.name.lower()
        assert name in pins, f"{name} is not in requirements.lock (run `make lock`)"
        assert r.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {r}"
    for dist in ("ray", "torch", "torchvision", "mlflow", "pyarrow", "dvc"):  # the versions the tests ran with
        assert pins[dist] == metadata.version(dist).split("+")[0], dist
    make = (ROOT / "Makefile").read_text()
    # `make demo` / `make test` install the lock
    assert re.search(r"\$\(STAMP\): pyproject.toml requirements.lock\n(\t.*\n)*\t.*pip install .*--no-deps -r "
                     r"requirements\.lock", make)
    assert re.search(r"\$\(UV\) pip compile pyproject.toml", make)


# -- the image ------------------------------------------------------------------------------------------------
def test_dockerfile_builds_on_the_locked_ray_and_installs_the_lock():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", text, re.M)
    assert base, "the image must start from rayproject/ray:<version>-py<XY>-gpu"
    assert base.group(1) == _locked()["ray"]
    py = f"{base.group(2)}.{base.group(3)}"
    assert f"--python-version {py}" in (ROOT / "Makefile").read_text()  # the lock is resolved for that Python
    assert re.search(r"pip install --no-cache-dir -r requirements\.lock", text)
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", "data", "outputs", "mlruns", ".git"} <= set(ignored)


def _image() -> str:
    return re.search(r"^IMAGE\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def _images(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += [v] if k == "image" and isinstance(v, str) else _images(v)
    elif isinstance(node, list):
        for v in node:
            out += _images(v)
    return out


def test_every_cluster_config_runs_the_project_image():
    image = _image()
    seen = 0
    for f in ("ray-cluster.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        for doc in yaml.safe_load_all((ROOT / "infra" / f).read_text()):
            imgs = _images(doc)
            assert imgs and set(imgs) == {image}, (f, imgs)
            seen += len(imgs)
    assert seen == 6


# -- Ray cluster launcher -------------------------------------------------------------------------------------
def test_ray_cluster_launcher_config_passes_rays_validator():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"].get("ImageId", "").startswith("ami-"), f"{name}: no ImageId (old AMI fallback)"
    assert not cfg.get("setup_commands")  # dependencies come with the image
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["head"]["node_confg"] = broken["available_node_types"]["head"].pop("node_config")
    with pytest.raises(Exception):  # noqa: B017 - the validator raises jsonschema's error
        validate_config(prepare_config(broken))


# -- KubeRay --------------------------------------------------------------------------------------------------
FIELDS = json.loads((ROOT / "tests" / "data" / "kuberay_v1.7.0_fields.json").read_text())
TYPES = {"string": str, "integer": int, "boolean": bool, "number": (int, float), "int-or-string": (int, str)}


def check_fields(obj, schema, path: str) -> list[str]:
    """Unknown keys and wrong scalar types against the pruned CRD tree (pod templates are opaque)."""
    if schema in ("<opaque>", "any"):
        return []
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return [f"{path}: expected a mapping"]
        if set(schema) == {"*"}:
            return [e for k, v in obj.items() for e in check_fields(v, schema["*"], f"{path}.{k}")]
        errs = [f"{path}.{k}: not a field of the CRD" for k in obj if k not in schema]
        return errs + [e for k, v in obj.items() if k in schema for e in check_fields(v, schema[k], f"{path}.{k}")]
    if isinstance(schema, list):
        if not isinstance(obj, list):
            return [f"{path}: expected a list"]
        return [e for i, v in enumerate(obj) for e in check_fields(v, schema[0], f"{path}[{i}]")]
    want = TYPES.get(schema)
    return [f"{path}: {obj!r} is not {schema}"] if want and not isinstance(obj, want) else []


def test_kuberay_manifests_use_crd_fields():
    for f, kind in (("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")):
        (doc,) = [d for d in yaml.safe_load_all((ROOT / "infra" / f).read_text()) if d]
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
        assert check_fields(doc["spec"], FIELDS[kind], kind) == []
        spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == _locked()["ray"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # map[string]string
    job = yaml.safe_load((ROOT / "infra" / "kuberay-rayjob.yaml").read_text())["spec"]
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert "pip" not in runtime_env and "conda" not in runtime_env  # the image has the dependencies
    # the check does catch a misspelt field and a wrong type
    bad = yaml.safe_load((ROOT / "infra" / "kuberay-raycluster.yaml").read_text())["spec"]
    bad["workerGroupSpecs"][0]["minReplica"] = bad["workerGroupSpecs"][0].pop("minReplicas")
    bad["workerGroupSpecs"][0]["replicas"] = "2"
    assert len(check_fields(bad, FIELDS["RayCluster"], "RayCluster")) == 2


def test_every_infra_yaml_parses():
    for f in sorted((ROOT / "infra").glob("*.yaml")):
        assert list(yaml.safe_load_all(f.read_text())), f
