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
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"
# import name -> distribution, for what the code imports directly
DISTS = {"torch": "torch", "torchvision": "torchvision", "lpips": "lpips", "pyarrow": "pyarrow", "numpy": "numpy",
         "scipy": "scipy", "skimage": "scikit-image", "PIL": "pillow", "pandas": "pandas", "matplotlib": "matplotlib",
         "tqdm": "tqdm", "yaml": "pyyaml", "ray": "ray", "mlflow": "mlflow", "dvc": "dvc", "boto3": "boto3",
         "botocore": "boto3", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
         "pytest": "pytest", "moto": "moto", "psutil": "psutil", "packaging": "pytest",
         "pytorch_fid": "pytorch-fid", "uvicorn": "uvicorn", "cv2": "opencv-python-headless",
         "jsonschema": "jsonschema", "piq": "piq"}


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
                                             "test_infer", "test_dvc", "test_infra", "__future__"}
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
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
TEST_TOOLS = {"pytest", "ruff", "moto", "pytorch-fid", "piq"}
MARKER_ENV = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def _pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(m.group(1)): m.group(3) for line in path.read_text().splitlines()
            if (m := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line))}


def _closure(roots: list[Requirement]) -> set[str]:
    """Distributions that installing ``roots`` brings, from the installed metadata (markers for Linux x86_64,
    Python 3.11; extras followed)."""
    extras_of: dict[str, set[str]] = {}
    todo = [(r.name, frozenset(r.extras)) for r in roots]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in extras_of and extras <= extras_of[key]:
            continue
        extras_of[key] = extras_of.get(key, set()) | set(extras)
        for r in map(Requirement, metadata.requires(name) or []):
            if r.marker is None or any(r.marker.evaluate({**MARKER_ENV, "extra": e}) for e in ["", *extras_of[key]]):
                todo.append((r.name, frozenset(r.extras)))
    return set(extras_of)


def test_runtime_lock_is_the_locked_runtime_closure_without_test_tools():
    """Issue 20.8: the image installs requirements-runtime.lock: everything the library and the pipeline extra
    need (their whole dependency closure: it is installed with --no-deps), pinned as in requirements.lock, and
    no test or lint tool."""
    runtime, full = _pins(RUNTIME_LOCK), _pins(LOCK)
    assert {k: full.get(k) for k in runtime} == runtime  # the same versions the tests ran with
    assert set(runtime) == _closure(_requirements(("pipeline",)))
    assert not TEST_TOOLS & set(runtime) and TEST_TOOLS <= set(full)
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"--extra pipeline \$\(LOCK_FLAGS\) -c requirements\.lock -o requirements-runtime\.lock", make)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, out, cur = (ROOT / "Dockerfile").read_text().splitlines(), [], ""
    for line in lines:
        if line.lstrip().startswith("#") or not line.strip():
            continue
        cur += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    assert not cur, "a continuation line runs off the end of the Dockerfile"
    return out


def _args(instructions) -> dict[str, str]:
    return {k: v.strip('"') for op, a in instructions if op == "ARG" for k, _, v in [a.partition("=")]}


def test_dockerfile_lint_one_file_two_variants_runtime_lock_no_deps(tmp_path):
    """The Dockerfile, checked without a Docker daemon: known instructions, Ray's CPU base at the locked version
    (torch's wheels bring CUDA), every pip install --no-deps as in the Makefile, the runtime lock only, and the
    dependency step run for real (pip stubbed) for VARIANT=gpu, cpu and a typo."""
    import subprocess

    ins = _dockerfile()
    known = {"FROM", "ARG", "WORKDIR", "COPY", "RUN", "ENV", "USER", "LABEL", "EXPOSE", "ENTRYPOINT", "CMD"}
    assert {op for op, _ in ins} <= known
    assert ins[[op for op, _ in ins].index("FROM")][1] == "${RAY_IMAGE}"
    args = _args(ins)
    assert args["RAY_IMAGE"] == f"rayproject/ray:{_locked()['ray']}-py311"  # CPU base: no second CUDA runtime
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()  # the lock is resolved for that Python
    assert args["VARIANT"] == "gpu"
    runs = [a for op, a in ins if op == "RUN"]
    pip_installs = [m for r in runs for m in re.findall(r"pip install [^;&|]*", r)]
    assert pip_installs and all("--no-deps" in p for p in pip_installs), pip_installs
    copied = " ".join(a for op, a in ins if op == "COPY")
    assert "requirements-runtime.lock" in copied and not re.search(r"(?<![-\w])requirements\.lock", copied)
    assert any(re.search(r"pip install --no-cache-dir --no-deps \.(\s|$)", r) for r in runs)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", "data", "outputs", "mlruns", ".git"} <= set(ignored)
    for r in runs:
        assert subprocess.run(["bash", "-n", "-c", r]).returncode == 0, r

    (deps_step,) = [r for r in runs if "requirements-runtime.lock" in r]
    (tmp_path / "requirements-runtime.lock").write_text(RUNTIME_LOCK.read_text())
    script = 'pip() { echo "pip $*" >> calls.log; }; python() { :; }; ' + deps_step.replace("/tmp/", f"{tmp_path}/")
    installed = {}
    for variant in ("gpu", "cpu", "cpu-only"):
        (tmp_path / "calls.log").unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "VARIANT": variant, "CUDA_WHEELS": args["CUDA_WHEELS"],
               "TORCH_CPU_INDEX": args["TORCH_CPU_INDEX"]}
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
        if variant == "cpu-only":
            assert proc.returncode == 2 and "VARIANT must be gpu or cpu" in proc.stderr
            continue
        assert proc.returncode == 0, proc.stderr
        calls = (tmp_path / "calls.log").read_text().splitlines()
        assert calls[-1] == f"pip install --no-cache-dir --no-deps -r {tmp_path}/requirements.txt"
        installed[variant] = calls
    assert len(installed["gpu"]) == 1
    torch_v, tv_v = _locked()["torch"], _locked()["torchvision"]
    assert installed["cpu"][0] == (f"pip install --no-cache-dir --no-deps --index-url {args['TORCH_CPU_INDEX']} "
                                   f"torch=={torch_v}+cpu torchvision=={tv_v}+cpu")
    # the cpu variant leaves out exactly the CUDA wheels, and nothing it keeps needs one of them but torch's own
    runtime = _pins(RUNTIME_LOCK)
    dropped = {n for n in runtime if re.match(args["CUDA_WHEELS"], f"{n}==")}
    assert {"torch", "torchvision", "triton"} <= dropped and {n for n in dropped if n.startswith("nvidia-")}
    assert all(n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-")) for n in dropped)
    for name in set(runtime) - dropped:
        needs = {canonicalize_name(r.name) for r in map(Requirement, metadata.requires(name) or [])
                 if r.marker is None}
        assert needs & dropped <= {"torch", "torchvision"}, (name, needs & dropped)


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


MIN_KUBERAY = {"backoffLimit": (1, 2)}  # RayJob fields -> the first KubeRay operator release that has them


def test_kuberay_autoscaling_bounds_and_version_header():
    """Issue 20.8: min/max replicas only act with the in-tree autoscaler; the header's KubeRay version covers the
    fields used (RayJob.backoffLimit: >= 1.2)."""
    for f in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        text = (ROOT / "infra" / f).read_text()
        (doc,) = [d for d in yaml.safe_load_all(text) if d]
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        for group in spec["workerGroupSpecs"]:
            bounds = {k: group[k] for k in ("minReplicas", "maxReplicas") if k in group}
            if bounds:
                assert spec.get("enableInTreeAutoscaling") is True, f"{f}: {bounds} do nothing without autoscaling"
                assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f
        header = re.search(r"KubeRay operator >= (\d+)\.(\d+)", text.split("apiVersion")[0])
        assert header, f"{f}: the header names no KubeRay operator version"
        need = max([v for k, v in MIN_KUBERAY.items() if k in doc["spec"]] or [(1, 0)])
        assert (int(header.group(1)), int(header.group(2))) >= need, (f, need)


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


# -- the serving manifest (issue 20 item 7) -------------------------------------------------------------------
def test_serving_manifest_validates_against_the_kubernetes_schemas():
    """infra/serving.yaml against the strict Kubernetes v1.37 JSON schemas of Deployment and Service (a vendored
    subset: tests/data/k8s_v1.37_deployment_service.schema.json), and wired the way the server runs."""
    import jsonschema

    schemas = json.loads((ROOT / "tests" / "data" / "k8s_v1.37_deployment_service.schema.json").read_text())

    def errors(doc) -> list[str]:
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": schemas["$defs"],
                  "$ref": f"#/$defs/{doc['kind']}"}
        return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]

    docs = [d for d in yaml.safe_load_all((ROOT / "infra" / "serving.yaml").read_text()) if d]
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    for doc in docs:
        assert errors(doc) == [], doc["kind"]
    deploy, service = sorted(docs, key=lambda d: d["kind"])
    (pod,) = deploy["spec"]["template"]["spec"]["containers"]
    assert pod["image"] == _image() and pod["command"] == ["python", "-m", "pipelines.serving"]
    args = dict(zip(pod["args"][::2], pod["args"][1::2]))
    source = (ROOT / "pipelines" / "serving" / "server.py").read_text()
    assert all(f'"{flag}"' in source for flag in args)  # flags the server's parser has

    port = pod["ports"][0]
    assert args["--port"] == str(port["containerPort"]) and args["--host"] == "0.0.0.0"
    assert pod["readinessProbe"]["httpGet"] == {"path": "/ping", "port": port["name"]}
    assert service["spec"]["ports"][0]["targetPort"] == port["name"] and service["spec"]["type"] == "ClusterIP"
    assert deploy["spec"]["selector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    # the schemas do catch a misspelt field and a wrong type
    bad = copy.deepcopy(deploy)
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert len(errors(bad)) == 2
