"""The layers stay visible: ots/ (the library) never reaches up into the pipeline stack, imports form no cycle,
and a module over 300 lines says why in its docstring.

Static (AST) checks of every module under ots/ and pipelines/: top-level and lazy (in-function) imports,
``importlib.import_module("...")`` and ``__import__("...")`` with a literal name -- all of them, in the layer and
in the cycle checks alike.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ots", "pipelines")
FORBIDDEN_IN_OTS = ("ray", "mlflow", "dvc", "dvc_s3", "pipelines")
MAX_LINES = 300
REASON = "Over 300 lines because"


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = {**_modules("ots"), **_modules("pipelines")}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES.get(module, Path()).name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``module``; ``from a import b`` yields ``a.b`` when that is a
    module of ours, else ``a``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
        elif not top_level_only and isinstance(node, ast.Call) and node.args:
            f, arg = node.func, node.args[0]
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
    return found


def _is(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


@pytest.mark.parametrize("module", [m for m in MODULES if _is(m, "ots")])
def test_the_library_never_imports_the_pipeline_stack(module):
    bad = [(name, line) for name, line in imports(module) if any(_is(name, r) for r in FORBIDDEN_IN_OTS)]
    assert not bad, f"{MODULES[module].relative_to(REPO)} imports {bad} (ots/ must not know ray/mlflow/dvc/pipelines)"


def test_the_scan_sees_lazy_and_importlib_imports(tmp_path, monkeypatch):
    src = ("import os\n\ndef f():\n    import mlflow.pyfunc\n    from ray import tune\n"
           "    importlib.import_module('pipelines.registry')\n    __import__('dvc')\n")
    path = tmp_path / "probe.py"
    path.write_text(src)
    monkeypatch.setitem(MODULES, "ots.probe", path)
    assert [n for n, _ in imports("ots.probe")] == ["os", "mlflow.pyfunc", "ray", "pipelines.registry", "dvc"]
    assert [n for n, _ in imports("ots.probe", top_level_only=True)] == ["os"]


def _graph() -> dict[str, set[str]]:
    """Import edges between our modules, lazy (in-function) and importlib imports included: a cycle hidden behind
    a function-level import still ties the two modules together (a package import also runs its __init__)."""
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for name, _ in imports(m):
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != m:
                graph[m].add(name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state, stack, cycles = {}, [], []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]  # it can fail
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_lazy_imports(tmp_path, monkeypatch):
    """A cycle closed only by function-level imports (``from``, plain and importlib) is still a cycle."""
    (tmp_path / "a.py").write_text("def f():\n    from ots.probe_b import g\n")
    (tmp_path / "b.py").write_text("import os\n\ndef g():\n    importlib.import_module('ots.probe_a')\n")
    (tmp_path / "c.py").write_text("def h():\n    import ots.probe_a\n")
    for name in ("a", "b", "c"):
        monkeypatch.setitem(MODULES, f"ots.probe_{name}", tmp_path / f"{name}.py")
    graph = _graph()
    assert graph["ots.probe_a"] == {"ots.probe_b"} and graph["ots.probe_c"] == {"ots.probe_a"}
    assert ["ots.probe_a", "ots.probe_b", "ots.probe_a"] in find_cycles(graph)


def test_arrows_point_down_only():
    up = [(m, n) for m, ns in _graph().items() for n in ns if _is(m, "ots") and _is(n, "pipelines")]
    assert not up, f"ots -> pipelines imports: {up}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_say_why(module):
    path = MODULES[module]
    n = len(path.read_text().splitlines())
    if n > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert REASON in doc, (f"{path.relative_to(REPO)} has {n} lines (> {MAX_LINES}): split it by job, or "
                               f"state '{REASON} ...' in its docstring")


# -- dependencies follow the layers ---------------------------------------------------------------------------
DISTS = {"PIL": "pillow", "skimage": "scikit-image", "yaml": "pyyaml", "botocore": "boto3", "dvc_s3": "dvc-s3",
         "cv2": "opencv-python-headless"}


def _declared(*extras: str) -> set[str]:
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"]) + [r for e in extras for r in proj["optional-dependencies"][e]]
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in reqs}


def _third_party(package: str) -> set[str]:
    names = {n.split(".")[0] for m in MODULES if _is(m, package) for n, _ in imports(m)}
    return {DISTS.get(n, n).lower() for n in names} - set(sys.stdlib_module_names) - {"ots", "pipelines", "__future__"}


def test_the_library_needs_only_its_dependencies_and_the_pipelines_their_extra():
    lib = _declared("s3", "perceptual", "export", "dev")  # dev: pytorch-fid, the FID parity reference
    assert _third_party("ots") <= lib, f"ots/ imports undeclared {_third_party('ots') - lib}"
    core = _declared()
    assert not core & {"ray", "mlflow", "dvc", "dvc-s3", "pandas", "uvicorn"}, "pipeline packages in the core deps"
    pipe = _declared("s3", "perceptual", "pipeline")
    assert _third_party("pipelines") <= pipe, f"pipelines/ imports undeclared {_third_party('pipelines') - pipe}"
