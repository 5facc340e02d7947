"""Typed configs (ots/config.py): params become frozen dataclasses once, defaults live in one place, they pickle
across the Ray seam and give the params layout back unchanged."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest
import yaml

from ots.config import ModelConfig, OTSConfig, SolverConfig, TrainConfig
from ots.data.config import DataConfig
from ots.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_yaml_round_trips_and_pickles():
    cfg = OTSConfig.from_params(repo_params())
    assert OTSConfig.from_params(cfg.to_params()) == cfg  # the layout given back is the layout read
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # what the driver hands to the Ray workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.solver.lr_map = 1.0  # type: ignore[misc]
    assert cfg.train.dataset == cfg.data.output  # train.dataset: empty = data.output


def test_defaults_are_written_once():
    cfg = OTSConfig.from_params({"model": {"map": {"arch": "edsr", "n_blocks": 1, "n_features": 8},
                                           "potential": {"arch": "resnet", "crop": 64}}})
    assert cfg.model.scale == 4  # EDSR's constructor default, not a literal elsewhere
    assert cfg.train.hr_crop == cfg.train.lr_crop * cfg.model.scale  # hr_crop: null = lr_crop x scale
    assert cfg.train.dataset == DataConfig.output == "data/demo"
    assert cfg.train.guard.patience == TrainConfig().guard.patience and cfg.solver == SolverConfig(check_every=0)


@pytest.mark.parametrize("change, message", [
    ({"solver": {"lr_map": 0}}, "learning rates must be > 0"),
    ({"solver": {"lr_mapp": 1e-4}}, "unknown key 'solver.lr_mapp'"),
    ({"train": {"steps": 0}}, "train.steps must be an integer >= 1"),
    ({"train": {"lr_crop": 8}}, "scale x4 does not match the crops: LR 8 x 4 != HR 64"),
    ({"model": {"map": {"arch": "srgan"}}}, "unknown map architecture 'srgan'"),
    ({"data": {"outptu": "x"}}, "unknown key 'data.outptu' (did you mean 'output'?)"),
])
def test_bad_params_are_one_line(change, message):
    params = repo_params()
    for section, values in change.items():
        params[section] = {**(params.get(section) or {}), **values}
    with pytest.raises(ConfigError, match=re.escape(message)):
        OTSConfig.from_params(params)


def test_the_solver_and_builder_take_typed_configs_only():
    from ots.solver import build_solver

    model = ModelConfig(map={"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4},
                        potential={"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16})
    with pytest.raises(TypeError, match="SolverConfig"):
        build_solver(model, {"k_T": 1}, device="cpu")  # a dict would be validated a second time
    solver = build_solver(model, SolverConfig(k_T=1), device="cpu")
    assert solver.map_config == model.map  # checkpoints need no params layout
