import pytest
import torch

from ots.checkpoint import load_map, resume, save_checkpoint
from ots.config import SolverConfig
from ots.costs import ReferenceMap, WeightedCost
from ots.errors import CheckpointError, ConfigError, NonFiniteLossError
from ots.models import build_map, build_potential
from ots.solver import OTSSolver, RegularizedGAN, frozen, gradient_penalty

MAP = {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 4}
POT = {"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 16}


class Stream:
    """Counts the batches drawn; each call is a fresh batch."""

    def __init__(self, size, seed, batch=2):
        self.g = torch.Generator().manual_seed(seed)
        self.size, self.batch, self.calls = size, batch, 0

    def __call__(self):
        self.calls += 1
        return torch.rand(self.batch, 3, self.size, self.size, generator=self.g) * 2 - 1


def make_solver(kind=OTSSolver, seed=0, map_cfg=MAP, **cfg):
    torch.manual_seed(seed)
    return kind(build_map(map_cfg), build_potential(POT), WeightedCost("mse"), ReferenceMap(4),
                SolverConfig.from_dict({"k_T": 3, "lr_map": 1e-3, "lr_potential": 1e-3, **cfg}), device="cpu",
                map_config=map_cfg)


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_ots_step_does_k_T_map_updates_then_one_potential_update():
    s = make_solver()
    lr, hr = Stream(8, 1), Stream(32, 2)
    T0, f0 = params(s.T), params(s.f)
    out = s.step(lr, hr)
    assert lr.calls == 3 + 1 and hr.calls == 1  # fresh LR batch for each map update, then one for f
    assert s.step_count == 1
    assert set(out) == {"loss_map", "loss_potential", "cost"}
    assert all(torch.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(T0, params(s.T)))
    assert any(not torch.equal(a, b) for a, b in zip(f0, params(s.f)))


def test_map_updates_do_not_touch_the_potential():
    # With lr_potential ~ 0 nothing but the potential's own update could move f; k_T map steps must not.
    s = make_solver(lr_potential=1e-30)
    f0 = params(s.f)
    s.step(Stream(8, 1), Stream(32, 2))
    assert all(torch.allclose(a, b, atol=0, rtol=1e-6) for a, b in zip(f0, params(s.f)))


def test_frozen_blocks_parameter_gradients_but_not_input_gradients():
    f = build_potential(POT)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with frozen(f):
        f(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in f.parameters())
    assert all(p.requires_grad for p in f.parameters())


def test_gan_step_does_k_critic_updates_per_map_update():
    s = make_solver(RegularizedGAN, lam=10.0)
    lr, hr = Stream(8, 1), Stream(32, 2)
    out = s.step(lr, hr)
    assert lr.calls == 3 + 1 and hr.calls == 3
    assert set(out) == {"loss_map", "loss_critic", "cost"}


def test_gradient_penalty_of_a_linear_critic():
    w = torch.tensor([3.0, 4.0])
    f = torch.nn.Linear(2, 1, bias=False)
    f.weight.data = w[None]
    gp = gradient_penalty(lambda z: f(z).squeeze(-1), torch.randn(5, 2), torch.randn(5, 2))
    assert gp.item() == pytest.approx((5.0 - 1) ** 2)


def test_non_finite_loss_names_the_step_and_term():
    s = make_solver()
    s.step(Stream(8, 1), Stream(32, 2))
    with torch.no_grad():
        s.f.fc.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss_map at step 2"):
        s.step(Stream(8, 1), Stream(32, 2))


def test_deferred_finiteness_check_still_names_the_first_bad_step():
    s = make_solver(check_every=0)  # no host sync inside the step
    s.step(Stream(8, 1), Stream(32, 2))
    with torch.no_grad():
        s.f.fc.bias.fill_(float("inf"))
    s.step(Stream(8, 1), Stream(32, 2))
    s.step(Stream(8, 1), Stream(32, 2))
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        s.check_finite()


@pytest.mark.parametrize(
    "batch, message",
    [
        (torch.zeros(0, 3, 8, 8), "LR batch is empty"),
        (torch.full((2, 3, 8, 8), float("nan")), "NaN or inf"),
        ([1, 2, 3], "must be a tensor"),
    ],
)
def test_bad_batches_are_clear_errors(batch, message):
    s = make_solver()
    with pytest.raises(ConfigError, match=message):
        s.step(lambda: batch, Stream(32, 2))


def test_solver_config_validation():
    with pytest.raises(ConfigError, match="unknown solver option"):
        SolverConfig.from_dict({"kT": 3})
    with pytest.raises(ConfigError, match="k_T must be >= 1"):
        SolverConfig.from_dict({"k_T": 0})


def test_fast_options_run_on_cpu():
    s = make_solver(channels_last=True, bf16=True)
    out = s.step(Stream(8, 1), Stream(32, 2))
    assert torch.isfinite(out["loss_map"]).item()


def test_checkpoint_resume_continues_exactly(tmp_path):
    config = {"model": {"map": MAP, "potential": POT}}
    # Uninterrupted run: 3 steps, re-anchoring R every 2 steps.
    a = make_solver()
    a.reference.anchor_every = 2
    lr, hr = Stream(8, 1), Stream(32, 2)
    for _ in range(2):
        a.step(lr, hr)
    save_checkpoint(tmp_path / "ck.pt", a, config)
    a.step(lr, hr)
    # Resumed at step 2 into networks with another init; the data streams replayed to the same position.
    b = make_solver(seed=123)
    b.reference.anchor_every = 2
    state = resume(b, tmp_path / "ck.pt")
    assert state["config"] == config and b.step_count == 2 and b.reference.anchored_at == 2
    lr_b, hr_b = Stream(8, 1), Stream(32, 2)
    for _ in range(2 * 4):
        lr_b()
    for _ in range(2):
        hr_b()
    b.step(lr_b, hr_b)
    for pa, pb in zip(list(a.T.parameters()) + list(a.f.parameters()), list(b.T.parameters()) + list(b.f.parameters())):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_checkpoint_into_another_architecture_is_a_clear_error(tmp_path):
    a = make_solver()
    save_checkpoint(tmp_path / "ck.pt", a, {"model": {"map": MAP}})
    b = make_solver(map_cfg={**MAP, "n_features": 12})
    with pytest.raises(CheckpointError, match="does not fit"):
        resume(b, tmp_path / "ck.pt")
    m = load_map(tmp_path / "ck.pt")
    assert not m.training and m(torch.zeros(1, 3, 4, 4)).shape == (1, 3, 16, 16)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_map(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_map(junk)
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an OTS checkpoint"):
        load_map(tmp_path / "other.pt")


def test_checkpoint_stores_the_map_config_and_needs_no_params_layout(tmp_path):
    from ots.checkpoint import load_checkpoint

    s = make_solver()
    save_checkpoint(tmp_path / "new.pt", s, {"seed": 3})  # the map config travels with the solver
    state = load_checkpoint(tmp_path / "new.pt")
    assert state["map_config"] == MAP and state["config"]["seed"] == 3
    other = make_solver(map_cfg={**MAP, "n_features": 12})
    save_checkpoint(tmp_path / "explicit.pt", s, {}, map_config=MAP)  # an explicit one wins
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    ref = load_map(tmp_path / "new.pt")(x)
    torch.testing.assert_close(load_map(tmp_path / "explicit.pt")(x), ref)
    assert other.map_config["n_features"] == 12
    torch.save({k: v for k, v in state.items() if k != "map_config"}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="holds no map config"):
        load_map(tmp_path / "bare.pt")
    torch.testing.assert_close(load_map(f"file://{tmp_path / 'new.pt'}")(x), ref)  # a storage URI
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file
