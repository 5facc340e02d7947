"""Issue 10, items 1-3: prepare repairs bit-rot, 16-bit PNGs convert correctly, bombs and huge images are bounded."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ots.data.shard_reader import open_dataset
from ots.data.shards import ShardConfig, build_shards
from ots.data.sources import decode_rgb8, scan_aim19
from ots.errors import DataError
from ots.imageio import decode_image as decode_any
from ots.imageio import read_image, to_rgb8
from ots.imagewrite import encode_png


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01  # same size, one bit: the size check alone cannot see it
    p.write_bytes(bytes(b))


def test_rerun_repairs_same_size_bit_rot(aim19_dir, tiny_cfg, tmp_path):
    out = tmp_path / "ds"
    m, _ = build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    good = {s["name"]: (out / s["name"]).read_bytes() for s in m["shards"]}
    victim = m["shards"][1]["name"]
    _flip(out / victim)
    with pytest.raises(DataError, match="checksum mismatch"):
        open_dataset(str(out))
    m2, written = build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    assert written, "a corrupt shard must not count as up to date"
    assert m2 == m and (out / victim).read_bytes() == good[victim]
    open_dataset(str(out))  # verifies every checksum
    assert build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)[1] is False  # now up to date


def test_prepare_stage_rerun_repairs(aim19_dir, tmp_path, monkeypatch, capsys):
    from ots.data.config import DataConfig
    from pipelines.prepare import run

    params = DataConfig(source=str(aim19_dir), output=str(tmp_path / "ds"), manifest_copy=None, hr_tile=96, lr_tile=24,
                        hr_crop=64, lr_crop=16, shard_mb=0.04)
    m = run(params, progress=False)
    _flip(tmp_path / "ds" / m["shards"][0]["name"])
    capsys.readouterr()
    run(params, progress=False)
    assert json.loads(capsys.readouterr().out)["written"] is True
    open_dataset(str(tmp_path / "ds"))


# ------------------------------------------------------------------------------------------------ 16 bit


def _ramp16(h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65536, size=(h, w, c), dtype=np.uint16)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_16bit_png_every_kind_is_rescaled_not_clipped(c):
    a = _ramp16(20, 30, c)
    png = png_any(a)
    raw = decode_any(png, "x.png")
    assert raw.dtype == np.uint16 and np.array_equal(raw, a)  # one decoder, lossless
    rgb = decode_rgb8(png, "x.png")  # the data layer's uint8 RGB
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    expect = np.round(a[:, :, : 3 if c >= 3 else 1].astype(np.float64) * 255 / 65535)
    expect = np.repeat(expect, 3, axis=2) if c < 3 else expect
    assert np.abs(rgb.astype(np.float64) - expect).max() <= 0.5
    assert rgb.mean() < 200  # the old convert("RGB") made 16-bit gray all white (255)


def test_16bit_gray_source_trains_on_real_pixels(tmp_path, tiny_cfg, aim19_dir):
    dark = (np.linspace(0, 20000, 200 * 170).reshape(200, 170)).astype(np.uint16)
    (aim19_dir / "train_clean" / "0001.png").write_bytes(encode_png(dark))
    m, _ = build_shards(aim19_dir, str(tmp_path / "ds"), cfg=tiny_cfg, progress=False)
    ds = open_dataset(str(tmp_path / "ds"))
    tiles = [t for s in ds.shards("train", "hr") for t in ds.tiles(s["name"])
             if t is not None]
    src = [r for s in ds.shards("train", "hr") for r in ds.read_shard(s["name"]).column("source").to_pylist()]
    mine = [t for t, s in zip(tiles, src) if s == "train_clean/0001.png"]
    assert mine and max(int(t.max()) for t in mine) <= 78 and min(int(t.min()) for t in mine) == 0


def test_upscale_and_data_layer_share_the_decoder(tmp_path):
    a = _ramp16(9, 11, 3)
    p = tmp_path / "a.png"
    p.write_bytes(encode_png(a))
    assert np.array_equal(read_image(p), a)
    assert np.array_equal(to_rgb8(read_image(p)), decode_rgb8(p.read_bytes()))


# --------------------------------------------------------------------------------------------- bombs


def _png(w: int, h: int, depth: int, color_type: int, raw: bytes) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bomb_png(w: int, h: int) -> bytes:
    """A tiny file whose header claims w x h RGB pixels (the data is a short zero stream)."""
    return _png(w, h, 8, 2, b"\0" * 4096)


def png_any(a: np.ndarray) -> bytes:
    """``encode_png``, except for 16-bit gray+alpha, which no maintained encoder writes (ots writes it as RGBA):
    those are built here, as other software writes them, for the decoder to read."""
    if a.dtype != np.uint16 or a.shape[2] != 2:
        return encode_png(a)
    rows = np.ascontiguousarray(a.astype(">u2")).reshape(a.shape[0], -1).view(np.uint8)
    raw = np.concatenate([np.zeros((a.shape[0], 1), np.uint8), rows], axis=1).tobytes()
    return _png(a.shape[1], a.shape[0], 16, 4, raw)


def test_bomb_is_one_line_and_skippable(aim19_dir, tiny_cfg, tmp_path):
    (aim19_dir / "train_clean" / "bomb.png").write_bytes(bomb_png(20000, 20000))
    with pytest.raises(DataError) as e:
        decode_rgb8(bomb_png(20000, 20000), "bomb.png")
    assert "too large" in str(e.value) and "\n" not in str(e.value)
    src = scan_aim19(aim19_dir, hr_min=64, lr_min=16)
    assert [r for r, _ in src.invalid] == ["train_clean/bomb.png"]
    with pytest.raises(DataError, match="bomb.png: image too large"):
        build_shards(aim19_dir, str(tmp_path / "ds"), cfg=tiny_cfg, progress=False)
    m, _ = build_shards(aim19_dir, str(tmp_path / "ds"), cfg=tiny_cfg, skip_invalid=True, progress=False)
    assert [s["file"] for s in m["skipped"]] == ["train_clean/bomb.png"]
    assert "too large" in m["skipped"][0]["reason"]


def test_cli_bomb_with_skip_invalid_no_traceback(aim19_dir, tmp_path, capsys):
    from ots.cli import main

    (aim19_dir / "train_noisy" / "bomb.png").write_bytes(bomb_png(30000, 30000))
    args = ["data", "prepare", "--source", str(aim19_dir), "--out", str(tmp_path / "ds"), "--hr-tile", "96",
            "--lr-tile", "24", "--hr-crop", "64", "--lr-crop", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bomb.png: image too large" in err and "Traceback" not in err
    assert main(args + ["--skip-invalid"]) == 0


def test_shard_limit_holds_within_one_huge_image(aim19_dir, tmp_path):
    from conftest import TINY, write_png

    write_png(aim19_dir / "train_clean" / "0001.png", 600, 500, 9)  # 36 tiles of 96x96 = ~1 MB raw
    cfg = ShardConfig(**TINY, shard_bytes=100_000)
    m, _ = build_shards(aim19_dir, str(tmp_path / "ds"), cfg=cfg, progress=False)
    ds = open_dataset(str(tmp_path / "ds"))
    hr = ds.shards("train", "hr")
    assert len(hr) >= 10
    for s in m["shards"]:
        t = ds.read_shard(s["name"])
        raw = sum(len(b) for b in t.column("pixels").to_pylist())
        assert raw <= cfg.shard_bytes or t.num_rows == 1, (s["name"], raw)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_image_info_matches_the_decoder(c, dtype):
    from ots.imageio import image_info

    a = (np.random.default_rng(c).integers(0, 255, (7, 9, c)) * (257 if dtype == np.uint16 else 1)).astype(dtype)
    png = png_any(a)
    assert image_info(png) == (7, 9, c, a.itemsize) and decode_any(png).shape == (7, 9, c)
