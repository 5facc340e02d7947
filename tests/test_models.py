import pytest
import torch
import torch.nn.functional as F

from ots.errors import ConfigError
from ots.models import (
    REFERENCE_MAP,
    REFERENCE_POTENTIAL,
    build_map,
    build_potential,
    check_sizes,
    count_params,
)
from ots.models.edsr import EDSR
from ots.models.mlp import MLPMap, MLPPotential


def small_map(**kw):
    return build_map({"arch": "edsr", "n_blocks": 2, "n_features": 16, **kw})


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_scales_output_size(scale):
    x = torch.rand(2, 3, 12, 10) * 2 - 1
    assert small_map(scale=scale)(x).shape == (2, 3, 12 * scale, 10 * scale)


def test_edsr_with_bicubic_skip_starts_at_bicubic_and_without_does_not():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    bic = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(small_map(bicubic_skip=True)(x), bic)
    assert not torch.allclose(small_map(bicubic_skip=False)(x), bic, atol=1e-2)


def test_reference_sizes_match_the_paper():
    assert abs(count_params(build_map(REFERENCE_MAP)) / 1e6 - 20.2) < 0.1
    assert abs(count_params(build_potential(REFERENCE_POTENTIAL)) / 1e6 - 32.4) < 0.1


@pytest.mark.parametrize("size", [32, 48, 64])
def test_potential_any_crop_and_channels_last_agree(size):
    torch.manual_seed(0)
    f = build_potential({"arch": "resnet", "crop": 32, "n_filters": 8, "max_filters": 32})
    x = torch.randn(3, 3, size, size)
    plain = f(x)
    f_cl = f.to(memory_format=torch.channels_last)
    cl = f_cl(x.contiguous(memory_format=torch.channels_last))
    assert plain.shape == (3,)
    assert torch.allclose(plain, cl, atol=1e-5)
    cl.sum().backward()  # the channels_last backward also works (no .view on a non-contiguous tensor)
    assert f.conv_img.weight.grad is not None


def test_mlp_map_starts_at_identity_and_potential_is_scalar():
    x = torch.randn(5, 7)
    assert torch.equal(MLPMap(7)(x), x)
    assert MLPPotential(7)(x).shape == (5,)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"arch": "unet"}, "unknown map architecture"),
        ({"arch": "edsr", "scale": 5}, "scale must be 2, 3 or 4"),
        ({"arch": "edsr", "n_blok": 3}, "bad map config"),
        ("edsr", "mapping with an 'arch'"),
    ],
)
def test_bad_map_config_is_a_clear_error(config, message):
    with pytest.raises(ConfigError, match=message):
        build_map(config)


def test_bad_potential_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown potential architecture"):
        build_potential({"arch": "vit"})
    with pytest.raises(ConfigError, match="crop must be"):
        build_potential({"arch": "resnet", "crop": 4})


@pytest.mark.parametrize(
    "lr, hr, message",
    [
        (32, 130, "not divisible by the scale"),
        (30, 128, "does not match the crops"),
        (0, 128, "must be positive"),
        (16, 64, "potential built for 128-px"),
    ],
)
def test_crop_and_scale_mismatch(lr, hr, message):
    with pytest.raises(ConfigError, match=message):
        check_sizes(4, {"crop": 128 if hr == 64 else hr}, lr, hr)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(0, 3, 8, 8), "empty batch"),
        (torch.zeros(2, 1, 8, 8), "expected 3 channels"),
        (torch.zeros(3, 8, 8), r"\(B, C, H, W\)"),
    ],
)
def test_bad_input_tensors(x, message):
    with pytest.raises(ConfigError, match=message):
        EDSR(n_blocks=1, n_features=4)(x)
