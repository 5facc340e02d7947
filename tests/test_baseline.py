"""The GAN baseline stage: params.yaml's `baseline:` section merged over the OTS params, same driver."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ots.errors import ConfigError
from pipelines.params import run_config
from pipelines.train.gan import baseline_params, main

ROOT = Path(__file__).resolve().parents[1]


def test_repo_baseline_is_the_gan_on_the_same_budget():
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    ots, gan = run_config(doc).to_params(), run_config(baseline_params(doc)).to_params()
    assert ots["solver"]["kind"] == "ots" and gan["solver"]["kind"] == "gan"
    assert gan["solver"]["betas"] == [0.5, 0.9] and gan["solver"]["gp"] > 0
    for key in ("steps", "batch_size", "lr_crop", "hr_crop", "dataset"):  # same data and budget
        assert gan["train"][key] == ots["train"][key]
    assert gan["solver"]["k_T"] == ots["solver"]["k_T"] and gan["model"] == ots["model"]
    assert gan["train"]["output_dir"] != ots["train"]["output_dir"]
    assert "baseline" not in ots and "baseline" not in gan  # not logged as a param of either run


@pytest.mark.parametrize("section, message", [
    (None, "no `baseline:` section"),
    ({"solver": {"kind": "gan"}}, "must differ from train.output_dir"),
    ({"bogus": 1, "train": {"output_dir": "x"}}, "unknown key 'baseline.bogus'"),
])
def test_bad_baseline_sections(section, message, tmp_path, capsys):
    doc = {"train": {"output_dir": "outputs/train"}}
    if section is not None:
        doc["baseline"] = section
    with pytest.raises(ConfigError, match=message):
        baseline_params(doc)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    assert main(["--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_gan: error:") and message in err and len(err.splitlines()) == 1
