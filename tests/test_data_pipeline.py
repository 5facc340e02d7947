import argparse
import hashlib
import json
import uuid

import pytest
import yaml

from ots.data.demo import build_demo
from ots.data.shard_reader import open_dataset
from ots.data.sources import load_rgb8, scan_aim19
from ots.errors import DataError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo") / "src"


def test_demo_set_is_aim19_like_disjoint_and_deterministic(demo_dir, tmp_path):
    meta = build_demo(demo_dir, seed=0, progress=False)
    hr, lr, val = set(meta["hr"]), set(meta["lr"]), set(meta["val"])
    # content-matched: both domains come from the same photos, validation photos are held out
    assert hr and hr == {k.split("/")[0] for k in lr} and val and not (hr & val)
    src = scan_aim19(demo_dir)
    assert not src.invalid and not src.fatal
    for name, lr_img, hr_img in src.val:
        assert (hr_img.height, hr_img.width) == (lr_img.height * 4, lr_img.width * 4)
        assert meta["val"][name]["scale"] == 4
    for p in meta["lr"].values():
        assert p["kernel"] in ("isotropic", "anisotropic") and p["noise"] in ("gaussian", "poisson")
        assert 40 <= p["jpeg_quality"] <= 90
    again = build_demo(tmp_path / "again", seed=0, progress=False)
    files = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert all((demo_dir / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    assert again == meta
    other = build_demo(tmp_path / "seed1", seed=1, progress=False)
    assert other["lr"] != meta["lr"]


def test_demo_domains_share_photos_but_no_pixels(demo_dir):
    """Each training photo gives HR cells and degraded LR cells (a checkerboard): unpaired, content-matched,
    disjoint."""
    import numpy as np
    from PIL import Image

    from ots.data.demo import demo_photos

    meta = build_demo(demo_dir, seed=0, progress=False)  # cached from the test above
    photos = {p.stem: p for p in demo_photos()}
    assert set(meta["regions"]) == set(meta["hr"])
    for name, r in meta["regions"].items():
        h, w = r["size"]
        owner = np.zeros((h, w), np.int8)  # 1 = HR, 2 = LR: every pixel in exactly one cell
        for k, (y0, y1, x0, x1) in enumerate(r["hr"]):
            assert not owner[y0:y1, x0:x1].any(), f"{name}: cells overlap"
            owner[y0:y1, x0:x1] = 1
            assert load_rgb8(demo_dir / "train_clean" / name / f"{k:03d}.png").shape[:2] == (y1 - y0, x1 - x0)
        for k, (y0, y1, x0, x1) in enumerate(r["lr"]):
            assert not owner[y0:y1, x0:x1].any(), f"{name}: cells overlap"
            owner[y0:y1, x0:x1] = 2
            lr_img = load_rgb8(demo_dir / "train_noisy" / name / f"{k:03d}.png")
            assert lr_img.shape[:2] == ((y1 - y0) // 4, (x1 - x0) // 4)
        assert (owner > 0).all() and (owner == 1).any() and (owner == 2).any()
        photo = load_rgb8(photos[name])
        if max(photo.shape[:2]) > 1024:
            continue  # resized before the split: compare content only for photos kept at full size
        y0, y1, x0, x1 = r["hr"][0]
        assert np.array_equal(load_rgb8(demo_dir / "train_clean" / name / "000.png"), photo[y0:y1, x0:x1])
        y0, y1, x0, x1 = r["lr"][0]  # the LR cell is a degraded copy of its own region
        lr_img = load_rgb8(demo_dir / "train_noisy" / name / "000.png")
        own = np.asarray(Image.fromarray(photo[y0:y1, x0:x1]).resize(lr_img.shape[1::-1], Image.BICUBIC))
        assert np.corrcoef(own.ravel().astype(float), lr_img.ravel().astype(float))[0, 1] > 0.5


def test_demo_whole_photo_split_is_still_available(tmp_path):
    meta = build_demo(tmp_path / "photos-split", seed=0, progress=False, split="photos")
    hr, lr, val = set(meta["hr"]), set(meta["lr"]), set(meta["val"])
    assert hr and lr and val and not (hr & lr) and not (hr & val) and not (lr & val)
    with pytest.raises(DataError, match="demo split must be one of"):
        build_demo(tmp_path / "bad", seed=0, progress=False, split="halves")


def test_demo_from_user_photos(tmp_path):
    from conftest import write_png

    for i in range(4):
        write_png(tmp_path / "photos" / f"p{i}.png", 160, 200, i)
    meta = build_demo(tmp_path / "out", photos=tmp_path / "photos", seed=0, progress=False)
    assert len(meta["hr"]) + len(meta["val"]) == 4 and {k.split("/")[0] for k in meta["lr"]} == set(meta["hr"])
    lr_name = next(iter(meta["lr"]))  # 160x200 in 128-px cells: 1 x 2 cells of 160 x 100 -> LR 40 x 25
    assert load_rgb8(tmp_path / "out" / "train_noisy" / f"{lr_name}.png").shape == (40, 25, 3)
    with pytest.raises(DataError, match="at least 3 photos"):
        build_demo(tmp_path / "none", photos=tmp_path / "empty", progress=False)


def write_params(path, **data):
    path.write_text(yaml.safe_dump({"seed": 0, "data": data}))
    return path


def test_prepare_stage_local(aim19_dir, tmp_path, monkeypatch):
    from conftest import TINY

    from pipelines import prepare

    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", source=str(aim19_dir), output="data/ds",
                          manifest_copy="data/manifest.json", shard_mb=0.05, **TINY)
    assert prepare.main(["--params", str(params)]) == 0
    committed = (tmp_path / "data/ds/manifest.json").read_bytes()
    assert (tmp_path / "data/manifest.json").read_bytes() == committed
    ds = open_dataset("data/ds")
    assert ds.manifest["counts"]["val/pairs"] == 2 and len(ds.manifest["shards"]) >= 3
    write_params(params, bogus=1)
    assert prepare.main(["--params", str(params)]) == 2


def test_prepare_stage_s3(aim19_dir, tmp_path, s3_env, capsys):
    from conftest import TINY

    from pipelines import prepare

    bucket = f"ots-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{bucket}/datasets/aim19"
    params = write_params(tmp_path / "params.yaml", source=str(aim19_dir), output=uri,
                          manifest_copy=str(tmp_path / "manifest.json"), shard_mb=0.05, **TINY)
    assert prepare.main(["--params", str(params)]) == 0
    keys = sorted(o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket)["Contents"])
    manifest = json.loads(s3_env.get_object(Bucket=bucket, Key="datasets/aim19/manifest.json")["Body"].read())
    expected = ["datasets/aim19/manifest.json"] + [f"datasets/aim19/{s['name']}" for s in manifest["shards"]]
    assert keys == sorted(expected)
    for s in manifest["shards"]:
        body = s3_env.get_object(Bucket=bucket, Key=f"datasets/aim19/{s['name']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == s["sha256"]
    assert "testing" not in json.dumps(manifest)  # no credentials in the manifest
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    pairs = open_dataset(uri).val_pairs()
    assert [n for n, _, _ in pairs] == ["0801", "0802"] and pairs[0][2].shape == (128, 128, 3)
    capsys.readouterr()
    assert prepare.main(["--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] is False
    from ots.data.loader import CropStream

    x = next(iter(CropStream(uri, "hr", crop=64, batch_size=2)))
    assert x.shape == (2, 3, 64, 64)


def test_cli_verbs(aim19_dir, tmp_path, capsys):
    from ots.commands import data

    parser = argparse.ArgumentParser()
    data.add_commands(parser.add_subparsers(dest="command"))
    out = str(tmp_path / "ds")
    args = parser.parse_args(["data", "prepare", "--source", str(aim19_dir), "--out", out, "--hr-tile", "96",
                              "--lr-tile", "24", "--hr-crop", "64", "--lr-crop", "16"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["written"] is True
    args = parser.parse_args(["data", "info", out])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["val/pairs"] == 2
    args = parser.parse_args(["data", "info", str(tmp_path / "nothing")])
    with pytest.raises(DataError, match="not a dataset"):
        args.func(args)
