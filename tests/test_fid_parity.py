"""Issue 10 item 15: our FID Inception port equals pytorch-fid's network given the same (random) state dict.

pytorch-fid downloads its weights in ``fid_inception_v3``; the download is patched to return our random state
dict, so the comparison needs no network and no real weights -- and once the real weights are present, our
features (hence FID) equal theirs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ots.metrics.fid import InceptionPool, build_inception, frechet_distance, inception_features

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception", reason="pip install pytorch-fid (dev extra)")


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sd = InceptionPool().net.state_dict()
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith(".bn.bias"):
            out[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith(".bn.weight"):
            out[k] = 1 + torch.randn(v.shape, generator=g) * 0.1
        else:
            out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    sd = _random_state_dict()
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    ours = build_inception(weights=str(path))  # our real loading path (file -> strict load)
    mp = pytest.MonkeyPatch()
    mp.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: {k2: v.clone() for k2, v in
                                                                                    sd.items()})
    try:
        theirs = pytorch_fid_inception.InceptionV3([pytorch_fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                                   resize_input=True, normalize_input=True,
                                                   use_fid_inception=True).eval()
    finally:
        mp.undo()
    return ours, theirs


def _theirs(theirs, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return theirs(x)[0].flatten(1).double().numpy()


@pytest.mark.slow
def test_features_equal_pytorch_fid(models):
    ours, theirs = models
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    x = torch.rand(3, 3, 96, 80, generator=torch.Generator().manual_seed(1))  # resized to 299 by both
    a, b = inception_features(ours, x), _theirs(theirs, x)
    assert a.shape == b.shape == (3, 2048)
    assert np.abs(b).max() > 1e-2  # not a degenerate network
    assert np.abs(a - b).max() <= 1e-5, np.abs(a - b).max()
    # the Frechet distance both compute from such features agrees too (first 64 dims: a 2048-d sqrtm in
    # scipy takes a minute on this CPU)
    from pytorch_fid.fid_score import calculate_frechet_distance

    y = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    a2, b2 = inception_features(ours, y), _theirs(theirs, y)
    a, b, a2, b2 = a[:, :64], b[:, :64], a2[:, :64], b2[:, :64]
    d_ours = frechet_distance(a.mean(0), np.cov(a, rowvar=False), a2.mean(0), np.cov(a2, rowvar=False))
    d_theirs = calculate_frechet_distance(b.mean(0), np.cov(b, rowvar=False), b2.mean(0), np.cov(b2, rowvar=False))
    assert d_ours == pytest.approx(d_theirs, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_parity_test_sees_a_wrong_block(models):
    """The comparison is sharp: the classic port mistake (an average pool in the last block) is caught."""
    ours, theirs = models
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours.net.Mixed_7c.max_pool = False
    try:
        diff = np.abs(inception_features(ours, x) - _theirs(theirs, x)).max()
    finally:
        ours.net.Mixed_7c.max_pool = True
    assert diff > 1e-3
