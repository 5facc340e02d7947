import pytest
import torch
from torchvision.models import alexnet
from torchvision.models.vgg import cfgs, make_layers

from ots.costs import LPIPSCost, ReferenceMap, VGGCost, WeightedCost, parse_cost_spec
from ots.errors import ConfigError, WeightsNotFoundError
from ots.models.edsr import EDSR, bicubic


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("VGG16", "ALEXNET"):
        monkeypatch.delenv(f"OTS_{name}_WEIGHTS", raising=False)
    return tmp_path


def imgs(seed, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_pixel_costs_are_per_sample_means():
    a, b = imgs(0), imgs(1)
    assert torch.allclose(WeightedCost("mse")(a, b), ((a - b) ** 2).mean((1, 2, 3)))
    assert torch.allclose(WeightedCost("l1")(a, b), (a - b).abs().mean((1, 2, 3)))
    mixed = WeightedCost({"mse": 1.0, "l1": 0.33})(a, b)
    assert torch.allclose(mixed, ((a - b) ** 2).mean((1, 2, 3)) + 0.33 * (a - b).abs().mean((1, 2, 3)))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"mse": 1, "ssim": 1}, "unknown cost 'ssim'"),
        ("MSE_", "unknown cost"),
        ({"mse": -1}, "must be finite and >= 0"),
        ({}, "non-empty mapping"),
        ({"mse": 0, "l1": 0}, "all zero"),
        ({"mse": "lots"}, "must be a number"),
    ],
)
def test_bad_cost_specs_fail_at_config_time(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_cost_spec(spec)


def test_cost_names_are_case_insensitive():
    assert parse_cost_spec({"MSE": 1, "L1": 0.5}) == {"mse": 1.0, "l1": 0.5}


def test_perceptual_costs_with_explicit_random_backbones():
    cost = WeightedCost({"mse": 1, "l1": 0.33, "vgg": 0.02, "lpips": 0.2},
                        weights={"vgg16": "random", "alexnet": "random"})
    a, b = imgs(0), imgs(1).requires_grad_(True)
    assert torch.allclose(cost(a, a), torch.zeros(2), atol=1e-6)
    out = cost(a, b)
    assert out.shape == (2,) and (out > 0).all()
    out.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in cost.parameters())  # backbones stay frozen


def test_missing_weights_name_the_file_and_where_to_put_it(no_weights):
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth.*hub/checkpoints"):
        VGGCost()
    with pytest.raises(WeightsNotFoundError, match=r"alexnet-owt-7be5be79\.pth"):
        LPIPSCost()
    with pytest.raises(WeightsNotFoundError, match="not found at"):
        VGGCost(weights=str(no_weights / "nope.pth"))


def test_weights_are_loaded_from_the_hub_cache_and_a_path(no_weights, monkeypatch):
    torch.manual_seed(0)
    hub = no_weights / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    vgg_state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(vgg_state, hub / "vgg16-397923af.pth")
    assert torch.equal(VGGCost().features[0].weight, vgg_state["features.0.weight"])

    alex_state = alexnet().state_dict()
    path = no_weights / "alex.pth"
    torch.save(alex_state, path)
    monkeypatch.setenv("OTS_ALEXNET_WEIGHTS", str(path))
    lp = LPIPSCost()
    assert torch.equal(lp.model.net.slice1[0].weight, alex_state["features.0.weight"])
    assert torch.equal(getattr(lp.model.net.slice5, "10").weight, alex_state["features.10.weight"])


def test_reference_map_reanchors_to_a_frozen_copy():
    x = imgs(2, size=8)
    T = EDSR(n_blocks=1, n_features=8, bicubic_skip=False)
    R = ReferenceMap(scale=4, anchor_every=2)
    assert torch.equal(R(x), bicubic(x, 4))
    assert not R.maybe_anchor(T, 1) and R.anchor is None
    assert R.maybe_anchor(T, 2)
    anchored = T(x).detach()
    assert torch.equal(R(x), anchored)
    with torch.no_grad():
        for p in T.parameters():
            p.add_(1.0)
    assert torch.equal(R(x), anchored)  # the anchor is a copy: training T does not move it
    R2 = ReferenceMap(scale=4, anchor_every=2)
    R2.load_state(R.state(), T)
    assert R2.anchored_at == 2 and torch.equal(R2(x), anchored)
    with pytest.raises(ConfigError, match="anchor_every"):
        ReferenceMap(4, anchor_every=-1)


def test_weights_from_object_storage_are_cached_once(no_weights, s3_env, monkeypatch):
    import io

    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    s3_env.create_bucket(Bucket="ots-weights")
    s3_env.put_object(Bucket="ots-weights", Key="backbones/vgg16.pth", Body=buf.getvalue())
    monkeypatch.setenv("OTS_VGG16_WEIGHTS", "s3://ots-weights/backbones/vgg16.pth")
    assert torch.equal(VGGCost().features[0].weight, state["features.0.weight"])
    assert (no_weights / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").is_file()
    monkeypatch.setenv("OTS_ALEXNET_WEIGHTS", "s3://ots-weights/backbones/missing.pth")
    with pytest.raises(WeightsNotFoundError, match="cannot read weights: s3://ots-weights/backbones"):
        LPIPSCost()
