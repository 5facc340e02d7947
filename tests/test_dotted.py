"""Dotted keys (ots.dotted): the one setter/getter behind `--set KEY=VALUE` and the tune search's sampled keys."""

from __future__ import annotations

import pytest

from ots.dotted import apply_set_args, get_dotted, set_dotted
from ots.errors import ConfigError


def test_set_and_get_dotted():
    d = {"solver": {"cost": {"mse": 1.0}}, "seed": 3}
    set_dotted(d, "solver.cost.l1", 0.5)
    set_dotted(d, "train.batch_size", 4)      # missing parents are created
    set_dotted(d, "seed.value", 1)            # a parent that is no dict becomes one
    assert d == {"solver": {"cost": {"mse": 1.0, "l1": 0.5}}, "train": {"batch_size": 4}, "seed": {"value": 1}}
    assert get_dotted(d, "solver.cost.mse") == (True, 1.0)
    assert get_dotted(d, "solver.cost.lpips") == (False, None)
    assert get_dotted(d, "solver.cost.mse.x") == (False, None)


def test_apply_set_args_reads_yaml_values():
    params = {"solver": {"lr_map": 1.0}}
    out = apply_set_args(params, ["solver.lr_map=1e-4", "solver.k_T=3", "train.name=run a", "model.flag=true"])
    assert out is params
    assert params == {"solver": {"lr_map": 1e-4, "k_T": 3}, "train": {"name": "run a"}, "model": {"flag": True}}
    assert isinstance(params["solver"]["lr_map"], float)  # YAML 1.1 reads `1e-4` as a string
    with pytest.raises(ConfigError, match=r"--set expects KEY=VALUE, got 'nonsense'"):
        apply_set_args(params, ["nonsense"])
