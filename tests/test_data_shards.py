import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ots.data.shard_reader import open_dataset, read_val_pairs
from ots.data.shards import build_shards
from ots.data.sources import load_rgb8, scan_aim19
from ots.errors import DataError


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_scan_aim19_layout(aim19_dir):
    src = scan_aim19(aim19_dir, hr_min=64, lr_min=16)
    assert not src.invalid and not src.fatal
    assert [s.rel for s in src.hr] == ["train_clean/0001.png", "train_clean/sub/0002.png"]
    assert [s.rel for s in src.lr] == ["train_noisy/0101.png", "train_noisy/sub/0102.png"]
    assert [n for n, _, _ in src.val] == ["0801", "0802"]
    assert len(src.fingerprint) == 64


def test_build_read_and_idempotent(aim19_dir, tiny_cfg, tmp_path):
    out = tmp_path / "ds"
    m, written = build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    assert written and len(m["shards"]) >= 3
    assert m["counts"]["val/pairs"] == 2 and m["counts"]["train/hr/images"] == 2
    ds = open_dataset(str(out))
    tiles = [t for s in ds.shards("train", "hr") for t in ds.tiles(s["name"])]
    assert len(tiles) == m["counts"]["train/hr/tiles"] and all(t.shape[0] <= 96 for t in tiles)
    # tiles are exact copies of the source pixels
    src = load_rgb8(aim19_dir / "train_clean" / "0001.png")
    t0 = ds.read_shard(ds.shards("train", "hr")[0]["name"]).to_pylist()[0]
    assert t0["source"] == "train_clean/0001.png"
    y, x = t0["tile_y"], t0["tile_x"]
    assert np.array_equal(tiles[0], src[y : y + t0["height"], x : x + t0["width"]])
    pairs = read_val_pairs(str(out))
    assert [p[0] for p in pairs] == ["0801", "0802"]
    name, lr, hr = pairs[0]
    assert lr.shape == (32, 32, 3) and hr.shape == (128, 128, 3)  # modcrop of 130x131, lossless
    assert np.array_equal(hr, load_rgb8(aim19_dir / "val_hr" / "0801.png")[:128, :128])
    before = files_of(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    m2, written2 = build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    assert not written2 and m2 == m
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    # a clean run elsewhere is byte-identical
    build_shards(aim19_dir, str(tmp_path / "ds2"), cfg=tiny_cfg, progress=False)
    assert files_of(tmp_path / "ds2") == before
    # a change of parameters rewrites and removes the old shards
    from dataclasses import replace

    m3, w3 = build_shards(aim19_dir, str(out), cfg=replace(tiny_cfg, overlap=0.5), progress=False)
    assert w3 and sorted(files_of(out)) == sorted(["manifest.json"] + [s["name"] for s in m3["shards"]])


def test_checksum_mismatch_and_missing_manifest(aim19_dir, tiny_cfg, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="not a dataset"):
        open_dataset(str(out))
    m, _ = build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    name = m["shards"][1]["name"]
    p = out / name
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(DataError, match=f"{name}: checksum mismatch"):
        open_dataset(str(out))
    ds = open_dataset(str(out), verify=False)
    ds.tiles(m["shards"][0]["name"])  # intact shards still open
    with pytest.raises(DataError, match="checksum mismatch"):
        ds.tiles(name)


def test_bad_input_lists_every_file_and_writes_nothing(aim19_dir, tiny_cfg, tmp_path):
    good = (aim19_dir / "train_clean" / "0001.png").read_bytes()
    (aim19_dir / "train_clean" / "trunc.png").write_bytes(good[: len(good) // 2])
    (aim19_dir / "train_clean" / "garbage.png").write_bytes(b"this is not a png at all")
    (aim19_dir / "train_noisy" / "notes.txt").write_text("hello")
    from conftest import write_png

    write_png(aim19_dir / "train_noisy" / "tiny.png", 8, 8)
    write_png(aim19_dir / "val_hr" / "0803.png", 128, 128)
    write_png(aim19_dir / "val_lr" / "0803.png", 30, 32)  # HR is not 4 x LR
    write_png(aim19_dir / "val_hr" / "0804.png", 128, 128)  # no partner
    out = tmp_path / "ds"
    with pytest.raises(DataError) as e:
        build_shards(aim19_dir, str(out), cfg=tiny_cfg, progress=False)
    msg = str(e.value)
    for rel, reason in [
        ("train_clean/trunc.png", "truncated"),
        ("train_clean/garbage.png", "not an image"),
        ("train_noisy/notes.txt", "not an image"),
        ("train_noisy/tiny.png", "too small"),
        ("val_hr/0803.png", "size mismatch"),
        ("val_hr/0804.png", "no val_lr image"),
    ]:
        line = next((ln for ln in msg.splitlines() if rel in ln), "")
        assert reason in line, (rel, msg)
    assert "--skip-invalid" in msg
    assert not out.exists() or not any(out.rglob("*"))
    m, written = build_shards(aim19_dir, str(out), cfg=tiny_cfg, skip_invalid=True, progress=False)
    assert written and len(m["skipped"]) == 6
    assert {s["file"] for s in m["skipped"]} >= {"train_clean/trunc.png", "train_noisy/notes.txt"}
    assert m["counts"]["train/hr/images"] == 2 and m["counts"]["val/pairs"] == 2
    open_dataset(str(out))


def test_empty_folder_is_fatal(aim19_dir, tiny_cfg, tmp_path):
    for p in (aim19_dir / "train_noisy").rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=r"train_noisy/: missing or empty folder"):
        build_shards(aim19_dir, str(tmp_path / "ds"), cfg=tiny_cfg, skip_invalid=True, progress=False)
    assert not (tmp_path / "ds").exists()


CRASH = """
import os, sys
from ots.storage import Store
from ots.data.shards import ShardConfig, build_shards
orig, n = Store.write_bytes, [0]
def write(self, rel, data):
    if rel.startswith("shards/"):
        n[0] += 1
        if n[0] == 3:  # die abruptly in the middle of the run, after two shards
            os._exit(9)
    orig(self, rel, data)
Store.write_bytes = write
build_shards(sys.argv[1], sys.argv[2], cfg=ShardConfig(**{cfg}), progress=False)
"""


def test_killed_writer_then_rerun_equals_clean_run(aim19_dir, tmp_path):
    from conftest import TINY

    out = tmp_path / "ds"
    script = textwrap.dedent(CRASH).replace("{cfg}", repr({**TINY, "shard_bytes": 40_000}))
    r = subprocess.run([sys.executable, "-c", script, str(aim19_dir), str(out)], cwd=Path(__file__).parent.parent)
    assert r.returncode == 9
    assert len(list((out / "shards").glob("*.parquet"))) == 2 and not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="not a dataset"):
        open_dataset(str(out))
    from ots.data.shards import ShardConfig

    cfg = ShardConfig(**TINY, shard_bytes=40_000)
    build_shards(aim19_dir, str(out), cfg=cfg, progress=False)
    build_shards(aim19_dir, str(tmp_path / "clean"), cfg=cfg, progress=False)
    assert files_of(out) == files_of(tmp_path / "clean")
    assert json.loads((out / "manifest.json").read_text())["shards"]
