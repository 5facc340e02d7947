"""Tiled inference: seamless tiles (== untiled), image layouts and bit depths, files, CLI, benchmark."""

from __future__ import annotations

import argparse
import io
import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ots.commands.upscale as upscale_cmd
from ots.cli import main
from ots.errors import ConfigError, InferenceError
from ots.imageio import png_bit_depth, read_image
from ots.imagewrite import encode_png, write_image
from ots.infer import upscale_array, upscale_files
from ots.tiling import tile_starts, upscale_tensor


class TinySR(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> PixelShuffle: receptive-field radius 2 LR px."""

    def __init__(self, scale: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * scale * scale, 3,
                                                                                      padding=1))
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.body(x))


class Nearest(nn.Module):
    """Exact nearest-neighbour upscaling: outputs are known in closed form."""

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + self.dummy


def _rand_image(h, w, c, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=(h, w, c), endpoint=True).astype(dtype)


def test_tile_starts_cover_the_image_with_overlap():
    assert tile_starts(50, 64, 8) == [0]
    for size, tile, ov in [(100, 32, 8), (97, 32, 12), (65, 64, 16)]:
        starts = tile_starts(size, tile, ov)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))


def test_tiled_equals_untiled_for_bounded_receptive_field():
    model = TinySR(scale=3)
    x = torch.rand(2, 3, 45, 37, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = upscale_tensor(model, x, tile=None)
    tiled = upscale_tensor(model, x, tile=16, overlap=8, batch_tiles=3)
    assert full.shape == (2, 3, 135, 111)
    assert (tiled - full).abs().max().item() < 1e-5  # radius 2 <= overlap / 4: exact up to float round-off
    hard = upscale_tensor(model, x, tile=16, overlap=0)  # no context: the tile borders show
    assert (hard - full).abs().max().item() > 1e-3


def test_tiled_edsr_is_seamless():
    from ots.models.edsr import EDSR

    torch.manual_seed(0)
    model = EDSR(n_blocks=2, n_features=16, scale=4)
    nn.init.normal_(model.tail.weight, std=0.05)  # leave the bicubic-only init: make the residual branch count
    x = torch.rand(1, 3, 70, 53, generator=torch.Generator().manual_seed(1)) * 2 - 1
    full = upscale_tensor(model, x, tile=None)
    tiled = upscale_tensor(model, x, tile=40, overlap=24, batch_tiles=4)
    assert (tiled - full).abs().max().item() < 1e-3


def test_rgb_gray_rgba_and_16_bit_layouts():
    model = Nearest(2)
    rgb = _rand_image(9, 11, 3)
    out = upscale_array(model, rgb, tile=4, overlap=2)
    assert out.dtype == np.uint8 and out.shape == (18, 22, 3)
    assert np.array_equal(out, rgb.repeat(2, 0).repeat(2, 1))
    rgb16 = _rand_image(9, 11, 3, np.uint16, seed=1)
    assert np.array_equal(upscale_array(model, rgb16, tile=None), rgb16.repeat(2, 0).repeat(2, 1))
    gray = _rand_image(9, 11, 1)[:, :, 0]
    g = upscale_array(model, gray, tile=4, overlap=2)
    assert g.shape == (18, 22) and np.array_equal(g, gray.repeat(2, 0).repeat(2, 1))
    assert upscale_array(model, gray[:, :, None]).shape == (18, 22, 1)
    rgba = _rand_image(9, 11, 4, seed=2)
    o = upscale_array(model, rgba)
    assert o.shape == (18, 22, 4) and np.array_equal(o[..., :3], rgba[..., :3].repeat(2, 0).repeat(2, 1))
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None, None]
    ref = F.interpolate(alpha, scale_factor=2, mode="bicubic").clamp(0, 1)[0, 0].mul(255).round().numpy()
    assert np.array_equal(o[..., 3], ref.astype(np.uint8))  # alpha: bicubic, not the map
    la = upscale_array(model, _rand_image(9, 11, 2, np.uint16))
    assert la.shape == (18, 22, 2) and la.dtype == np.uint16


def test_bad_arguments_are_config_errors():
    model = TinySR()
    with pytest.raises(ConfigError):
        upscale_array(model, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ConfigError):
        upscale_array(model, np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ConfigError, match="overlap"):
        upscale_tensor(model, torch.zeros(1, 3, 8, 8), tile=8, overlap=8)
    with pytest.raises(ConfigError, match="bf16"):
        upscale_tensor(model, torch.zeros(1, 3, 8, 8), device="cpu", precision="bf16")
    no_scale = nn.Conv2d(3, 3, 1)
    with pytest.raises(ConfigError, match="scale"):
        upscale_tensor(no_scale, torch.zeros(1, 3, 8, 8))
    liar = TinySR(2)
    liar.scale = 3
    with pytest.raises(InferenceError, match="shape"):
        upscale_tensor(liar, torch.zeros(1, 3, 8, 8), tile=None)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_round_trip_keeps_depth_and_layout(tmp_path, dtype, channels):
    img = _rand_image(5, 7, channels, dtype)
    path = write_image(tmp_path / "x.png", img)
    back = read_image(path)
    assert png_bit_depth(path.read_bytes()) == 8 * img.itemsize
    if dtype == np.uint16 and channels == 2:  # no maintained encoder writes 16-bit gray+alpha: stored as RGBA
        img = np.concatenate([img[:, :, :1]] * 3 + [img[:, :, 1:]], axis=2)
    assert back.dtype == dtype and np.array_equal(back, img)
    assert encode_png(img[:, :, 0]) == encode_png(img[:, :, :1])


def _unfiltered_png_size(img: np.ndarray) -> int:
    """IDAT size of the former hand-written writer: filter type 0 on every row, zlib level 6."""
    rows = np.ascontiguousarray(img.astype(">u2" if img.dtype == np.uint16 else np.uint8))
    raw = np.concatenate([np.zeros((img.shape[0], 1), np.uint8), rows.reshape(img.shape[0], -1).view(np.uint8)], 1)
    return len(zlib.compress(raw.tobytes(), 6))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_sizes_match_pillow_and_16_bit_is_row_filtered(channels):
    """Issue 20 item 6: the hand-written writer made PNGs 1.9x Pillow's (no row filters)."""
    from PIL import Image
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[:128, :160])  # a photo: row filters matter
    gray = photo.mean(2, keepdims=True).astype(np.uint8)
    img = {1: gray, 2: np.concatenate([gray, photo[:, :, :1]], 2), 3: photo,
           4: np.concatenate([photo, gray], 2)}[channels]
    buf = io.BytesIO()
    Image.fromarray(img[:, :, 0] if channels == 1 else img).save(buf, format="PNG")
    assert len(encode_png(img)) <= 1.05 * len(buf.getvalue())
    img16 = img.astype(np.uint16) * 257 + np.arange(img.shape[1], dtype=np.uint16)[None, :, None]  # 16-bit detail
    assert len(encode_png(img16)) < 0.9 * _unfiltered_png_size(img16)


def test_upscale_files_from_a_folder(tmp_path):
    src = tmp_path / "in"
    write_image(src / "a.png", _rand_image(8, 9, 3))
    write_image(src / "b.png", _rand_image(6, 5, 4, np.uint16))
    (src / "notes.txt").write_text("not an image")
    written = upscale_files(Nearest(2), [src], tmp_path / "out", progress=True, tile=4, overlap=2)
    assert [p.name for p in written] == ["a_out.png", "b_out.png"]
    b = read_image(written[1])
    assert b.shape == (12, 10, 4) and b.dtype == np.uint16


def test_cli_upscale_and_one_line_errors(tmp_path, monkeypatch, capsys):
    model = TinySR(2)
    monkeypatch.setattr(upscale_cmd, "load_map", lambda path, device="cpu": model)
    img = tmp_path / "lr.png"
    write_image(img, _rand_image(20, 24, 3))
    out = tmp_path / "sr.png"
    rc = main(["upscale", str(img), "-o", str(out), "--checkpoint", "ckpt.pt", "--tile", "12", "--overlap",
               "8", "--no-progress"])
    assert rc == 0 and read_image(out).shape == (40, 48, 3)
    expected = upscale_array(model, read_image(img), tile=None)
    assert np.abs(read_image(out).astype(int) - expected).max() <= 1
    capsys.readouterr()

    bogus = tmp_path / "bogus.png"
    bogus.write_text("this is not a png")
    for bad in (bogus, tmp_path / "missing.png"):
        rc = main(["upscale", str(bad), "-o", str(tmp_path / "o.png"), "--checkpoint", "ckpt.pt", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("ots: error:") and "\n" not in err and bad.name in err


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    img = tmp_path / "lr.png"
    write_image(img, _rand_image(8, 8, 3))
    rc = main(["upscale", str(img), "-o", str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "none.pt" in err and "\n" not in err


def test_bench_infer_reports_tiled_and_untiled_throughput(capsys):
    from ots.bench import infer as bench_infer

    parser = argparse.ArgumentParser()
    bench_infer.add_bench_command(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["infer", "--size", "24", "--n-blocks", "1", "--n-features", "8", "--tile", "16",
                              "--overlap", "4", "--repeats", "1", "--warmup", "0"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    res = report["results"]
    assert [r["tiled"] for r in res] == [False, True] and all(r["precision"] == "fp32" for r in res)
    assert all(r["output"] == [96, 96] and r["output_mp_per_s"] > 0 for r in res)


def test_cli_upscale_from_a_real_checkpoint(tmp_path, capsys):
    pytest.importorskip("ots.solver")
    from ots.models.edsr import EDSR

    torch.manual_seed(0)
    cfg = {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 2}
    model = EDSR(**{k: v for k, v in cfg.items() if k != "arch"})
    nn.init.normal_(model.tail.weight, std=0.05)
    ckpt = tmp_path / "map.pt"
    torch.save({"map": model.state_dict(), "map_config": cfg}, ckpt)  # the checkpoint layout load_map reads
    src = tmp_path / "in"
    write_image(src / "a.png", _rand_image(12, 10, 3))
    rc = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--tile", "0",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    out = read_image(tmp_path / "out" / "a_out.png")
    assert np.array_equal(out, upscale_array(model, read_image(src / "a.png"), tile=None))


def test_cli_upscale_from_an_s3_checkpoint(tmp_path, s3_env, capsys):
    """`--model` takes storage URIs (s3:// on a loopback moto server); a missing object is one line."""
    import uuid

    from ots.models.edsr import EDSR

    torch.manual_seed(0)
    cfg = {"arch": "edsr", "n_blocks": 1, "n_features": 8, "scale": 2}
    model = EDSR(**{k: v for k, v in cfg.items() if k != "arch"})
    buf = io.BytesIO()
    torch.save({"map": model.state_dict(), "map_config": cfg}, buf)
    bucket = f"ots-{uuid.uuid4().hex[:8]}"
    s3_env.create_bucket(Bucket=bucket)
    s3_env.put_object(Bucket=bucket, Key="maps/map.pt", Body=buf.getvalue())
    write_image(tmp_path / "a.png", _rand_image(12, 10, 3))
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model",
                 f"s3://{bucket}/maps/map.pt", "--tile", "0", "--no-progress"]) == 0
    assert np.array_equal(read_image(tmp_path / "o.png"), upscale_array(model, _rand_image(12, 10, 3), tile=None))
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "p.png"), "--model",
                 f"s3://{bucket}/maps/none.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ots: error: checkpoint not readable: ") and "none.pt" in err and err.count("\n") == 1
