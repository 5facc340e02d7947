"""pipelines.registry: registry URIs -> local checkpoint files (the library loads files and storage URIs only)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlflow")

import mlflow  # noqa: E402

from ots.errors import CheckpointError  # noqa: E402
from pipelines import registry  # noqa: E402


@pytest.fixture()
def registered(tmp_path, monkeypatch):
    """A local sqlite tracking server holding a registered map with alias `champion`."""
    from test_serving import make_checkpoint

    from pipelines.serving.package import log_pyfunc_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("models-fetch")
    ckpt = make_checkpoint(tmp_path / "map.pt")
    try:
        with mlflow.start_run() as run:
            info = log_pyfunc_model(ckpt, include_code=False, device="cpu")
        mv = mlflow.register_model(info.model_uri, "ots-test")
        mlflow.MlflowClient().set_registered_model_alias("ots-test", "champion", mv.version)
        yield {"checkpoint": ckpt, "run_id": run.info.run_id, "version": mv.version}
    finally:
        mlflow.set_tracking_uri(None)


def _same_map(a, b) -> None:
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(a(x), b(x))


def test_fetch_alias_version_and_run_id_to_a_local_file(registered, tmp_path, capsys, monkeypatch):
    from ots.checkpoint import load_map, named_map

    ref = load_map(registered["checkpoint"])
    for i, source in enumerate(["models:/ots-test@champion", f"models:/ots-test/{registered['version']}",
                                registered["run_id"]]):
        out = tmp_path / f"fetched{i}.pt"
        assert registry.main(["fetch", source, "-o", str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out)
        _same_map(load_map(out), ref)
        _same_map(registry.load_map(source), ref)
    assert registry.is_registry_source("runs:/abc/x.pt") and not registry.is_registry_source("outputs/train/best.pt")
    # -n NAME: into $OTS_MODELS, where `ots upscale -n NAME` (ots.checkpoint.named_map) finds it
    monkeypatch.setenv("OTS_MODELS", str(tmp_path / "maps"))
    assert registry.main(["fetch", "models:/ots-test@champion", "-n", "ots-test@champion"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "maps" / "ots-test@champion.pt")
    _same_map(load_map(named_map("ots-test@champion")), ref)


def test_fetch_errors_are_one_line_and_write_nothing(registered, tmp_path, capsys):
    out = tmp_path / "never.pt"
    assert registry.main(["fetch", "models:/ots-test@nope", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("registry: error: models:/ots-test@nope: registered model 'ots-test' has no alias 'nope'; "
                          "its aliases: @champion -> v1") and err.count("\n") == 1
    assert registry.main(["fetch", "not-a-model", "-o", str(out)]) == 2
    assert "neither a checkpoint file nor" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_fetch_of_a_missing_alias_says_so_and_lists_the_aliases(registered, tmp_path, capsys):
    """Issue 20.1: after `make demo` there may be no champion; the error says which aliases exist."""
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("ots-test", "challenger", registered["version"])
    client.delete_registered_model_alias("ots-test", "champion")
    out = tmp_path / "fetched.pt"
    assert registry.main(["fetch", "models:/ots-test@champion", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert err.startswith("registry: error: models:/ots-test@champion: registered model 'ots-test' has no alias "
                          "'champion'") and "serve models:/ots-test@challenger" in err
    assert err.rstrip().endswith(f"its aliases: @challenger -> v{registered['version']}")
    assert registry.main(["fetch", "models:/ots-test@challenger", "-o", str(out)]) == 0 and out.is_file()
    assert registry.main(["fetch", "models:/no-such-model@champion", "-o", str(out)]) == 2
    assert "cannot fetch models:/no-such-model@champion" in capsys.readouterr().err


def test_the_library_refuses_registry_uris_and_names_the_command(tmp_path, capsys):
    from ots.checkpoint import load_map
    from ots.cli import main as ots_main

    for source in ("models:/ots@champion", "runs:/0123456789abcdef0123456789abcdef/model"):
        with pytest.raises(CheckpointError, match=r"python -m pipelines\.registry fetch .* -o map\.pt"):
            load_map(source)
    (tmp_path / "in.png").write_bytes(b"")
    assert ots_main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"),
                     "--model", "models:/ots@champion"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ots: error: ") and "python -m pipelines.registry fetch models:/ots@champion" in err
    assert err.count("\n") == 1
