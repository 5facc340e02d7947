"""Issue 10, items 9-10: .env never packaged; credentials in URIs redacted; rejected S3 keys named as such."""

import shutil
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ots.errors import StorageError
from ots.redaction import redact_uri
from ots.storage import open_store

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-s3cr3t"


# ------------------------------------------------------------------------------------------------ item 9


def _tree_with_env(tmp_path: Path) -> Path:
    """A copy of the repo's ignore files and a few sources, plus a .env holding a secret."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in (".gitignore", ".rayignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "ots").mkdir()
    (root / "ots" / "__init__.py").write_text("")
    (root / "ots" / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\n")
    (root / ".env").write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\n")
    (root / ".env.prod").write_text(f"AWS_SECRET_ACCESS_KEY={SECRET}\n")
    for name in (".envrc", "prod.env", ".aws/credentials", "infra/.envrc", "notes/keys.txt"):  # #19.7: any name
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"export AWS_SECRET_ACCESS_KEY={SECRET}\n")
    for name in ("pipelines/train/driver.py", "infra/params.cluster.yaml", "configs/cpu-small.yaml", "params.yaml"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("# what a job needs\n")
    return root


def test_env_is_git_ignored():
    for name in (".env", ".env.local", "sub/.env"):
        r = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO)
        assert r.returncode == 0, f"{name} is not git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "infra/env.example"], cwd=REPO).returncode == 1


def _documented_excludes() -> list[list[str]]:
    import json
    import re

    found = []
    for doc in (REPO / "infra" / "SUBMIT.md", REPO / "README.md"):
        for block in re.findall(r"--runtime-env-json '(\{.*?\})'", doc.read_text(), re.S):
            found.append(json.loads(block).get("excludes", []))
    return found


@pytest.mark.parametrize("honour_gitignore", [True, False])
def test_ray_working_dir_package_has_no_env(tmp_path, honour_gitignore):
    from ray._private.runtime_env.packaging import _zip_files

    root = _tree_with_env(tmp_path)
    documented = _documented_excludes()
    assert documented, "no `ray job submit --runtime-env-json` block found in the docs"
    for excludes in documented + [[]]:  # the documented excludes, and none at all (.rayignore alone)
        out = tmp_path / "pkg.zip"
        _zip_files(str(root), excludes, str(out), include_gitignore=honour_gitignore)
        names = zipfile.ZipFile(out).namelist()
        assert {"ots/__init__.py", "pipelines/train/driver.py", "infra/params.cluster.yaml", "configs/cpu-small.yaml",
                "params.yaml"} <= set(names), names
        assert not [n for n in names if Path(n).name.startswith(".env")], names
        assert SECRET.encode() not in out.read_bytes(), names  # .envrc, prod.env, .aws/credentials, notes/


def test_dvcignore_lists_env(tmp_path):
    from dvc.ignore import DvcIgnoreFilter
    from dvc.repo import Repo

    root = _tree_with_env(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    Repo.init(str(root))
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    repo = Repo(str(root))
    ign = DvcIgnoreFilter(repo.fs, str(root))
    for name in (".env", ".env.prod", "ots/.env"):
        assert ign.is_ignored_file(str(root / name)), name
    assert not ign.is_ignored_file(str(root / "ots" / "__init__.py"))


def test_mlflow_model_code_copy_skips_env():
    src = (REPO / "pipelines" / "serving" / "package.py").read_text()
    assert '".env", ".env.*"' in src  # the copytree ignore list of log_pyfunc_model


# ----------------------------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("uri,expect", [
    ("https://alice:hunter2@mlflow.example.com:5000/", "https://alice:***@mlflow.example.com:5000/"),
    ("http://hunter2@host/x", "http://***@host/x"),
    ("postgresql://u:hunter2@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
    ("http://h/p?password=hunter2&x=1", "http://h/p?password=***&x=1"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=a&X-Amz-Signature=hunter2",
     "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("/tmp/a@b/c", "/tmp/a@b/c"),
    ("error at http://u:hunter2@h:5000 and https://v:hunter2@g", "error at http://u:***@h:5000 and https://v:***@g"),
])
def test_redact_uri(uri, expect):
    assert redact_uri(uri) == expect


def test_flatten_redacts_uri_values():
    from pipelines.mlflow_access import flatten

    flat = flatten({"train": {"mlflow": {"tracking_uri": "https://u:hunter2@h/"}, "aws_secret": "x"}})
    assert flat == {"train.mlflow.tracking_uri": "https://u:***@h/"}


def test_stage_error_line_is_redacted(tmp_path, capsys):
    from ots.errors import ConfigError
    from pipelines.stage import stage_main

    def run(doc, path):
        raise ConfigError("cannot reach https://alice:hunter2@mlflow.example.com")

    (tmp_path / "p.yaml").write_text("{}\n")
    assert stage_main("train", None, run, ["--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "alice:***@mlflow.example.com" in err


def test_serving_errors_do_not_leak_tracking_password(tmp_path, monkeypatch):
    import mlflow

    from ots.errors import CheckpointError
    from pipelines.registry import resolve_checkpoint

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    try:
        monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://bob:hunter2@127.0.0.1:9/")
        with pytest.raises(CheckpointError) as e:
            resolve_checkpoint("0123456789abcdef0123456789abcdef", tmp_path)
        assert "hunter2" not in str(e.value) and "bob:***@" in str(e.value)
    finally:
        mlflow.set_tracking_uri(None)


class _FakeS3(BaseHTTPRequestHandler):
    """HEAD bucket -> 403 without a body (as S3 answers); GET -> 403 with the real error code."""

    code = "InvalidAccessKeyId"

    def do_HEAD(self):
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.code}</Code>"
                "<Message>nope</Message></Error>").encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("code,expect", [("InvalidAccessKeyId", "credentials rejected"),
                                         ("SignatureDoesNotMatch", "credentials rejected"),
                                         ("AccessDenied", "permission denied on bucket")])
def test_wrong_s3_keys_are_credentials_rejected(monkeypatch, tmp_path, code, expect):
    handler = type("H", (_FakeS3,), {"code": code})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        with pytest.raises(StorageError) as e:
            open_store("s3://ots-bucket/data")
        assert expect in str(e.value) and SECRET not in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
