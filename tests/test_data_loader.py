import numpy as np
import pytest
import torch

from ots.data.loader import CropStream
from ots.data.shard_reader import open_dataset
from ots.data.shards import ShardConfig, build_shards
from ots.errors import DataError


@pytest.fixture
def ds_uri(aim19_dir, tmp_path):
    from conftest import TINY, write_png

    for i in range(4):  # enough HR images for several shards
        write_png(aim19_dir / "train_clean" / f"extra{i}.png", 120, 110, 10 + i)
    cfg = ShardConfig(**TINY, shard_bytes=30_000)
    build_shards(aim19_dir, str(tmp_path / "ds"), cfg=cfg, progress=False)
    return str(tmp_path / "ds")


def test_batches_shape_range_and_determinism(ds_uri):
    s = CropStream(ds_uri, domain="hr", crop=64, batch_size=5, seed=3)
    batches = [b for _, b in zip(range(3), s)]
    x = batches[0]
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    again = [b for _, b in zip(range(3), CropStream(ds_uri, domain="hr", crop=64, batch_size=5, seed=3))]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not torch.equal(batches[0], batches[1])
    other_seed = next(iter(CropStream(ds_uri, domain="hr", crop=64, batch_size=5, seed=4)))
    assert not torch.equal(other_seed, batches[0])
    lr = next(iter(CropStream(ds_uri, domain="lr", crop=16, batch_size=4, seed=3)))
    assert lr.shape == (4, 3, 16, 16)


def test_crops_are_tile_windows_with_flips_and_rotations(ds_uri):
    from ots.data.loader import crops_to_tensor, random_crops

    yy, xx = np.mgrid[0:100, 0:90]
    tile = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)  # pixel encodes its position
    crops = random_crops([tile], 16, 64, np.random.default_rng(0))
    seen = set()
    for c in crops:
        y0, x0 = int(c[..., 0].min()), int(c[..., 1].min())
        window = tile[y0 : y0 + 16, x0 : x0 + 16]
        variants = {(k, f): np.rot90(window[:, ::-1] if f else window, k) for k in range(4) for f in (0, 1)}
        ops = [op for op, v in variants.items() if np.array_equal(v, c)]
        assert ops, "crop is not a flipped/rotated window of the tile"
        seen.add(ops[0])
    assert len(seen) == 8  # all flips and 90-degree rotations occur
    t = crops_to_tensor(crops[:2])
    assert t.shape == (2, 3, 16, 16)
    assert torch.allclose(t[0, 0], torch.from_numpy(crops[0, ..., 0]).float() / 127.5 - 1)


def test_resume_at_batch_index(ds_uri):
    full = [b for _, b in zip(range(6), CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=1))]
    resumed = [b for _, b in zip(range(3), CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=1, start_batch=3))]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed))
    s = CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=1)
    it = iter(s)
    next(it), next(it)
    state = s.state_dict()
    assert state["next_batch"] == 2
    s2 = CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=1)
    s2.load_state_dict(state)
    assert torch.equal(next(iter(s2)), full[2])
    with pytest.raises(DataError, match="seed"):
        CropStream(ds_uri, "lr", seed=2).load_state_dict(state)


def test_ranks_and_workers_partition_without_duplication(ds_uri):
    ds = open_dataset(ds_uri)
    n_shards = len(ds.shards("train", "hr"))
    assert n_shards >= 4

    def ids(s, part, n):
        return {id(t) for t in s._pool(part, n)[0]}

    all_ids = ids(CropStream(ds_uri, "hr", crop=64), 0, 1)
    for world, workers in [(2, 1), (2, 2), (3, 2)]:
        pools = [ids(CropStream(ds_uri, "hr", crop=64, rank=r, world_size=world), p, workers)
                 for r in range(world) for p in range(workers)]
        assert sum(len(p) for p in pools) == len(set().union(*pools)) == len(all_ids), (world, workers)
    r0 = next(iter(CropStream(ds_uri, "hr", crop=64, batch_size=4, rank=0, world_size=2)))
    r1 = next(iter(CropStream(ds_uri, "hr", crop=64, batch_size=4, rank=1, world_size=2)))
    assert not torch.equal(r0, r1)


def test_dataloader_workers_keep_batch_order(ds_uri):
    s = CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=5, start_batch=7, num_batches=4)
    dl = torch.utils.data.DataLoader(s, batch_size=None, num_workers=2)
    got = list(dl)
    ref = CropStream(ds_uri, "lr", crop=16, batch_size=4, seed=5)
    assert len(got) == 4
    assert all(torch.equal(g, ref.batch(b, 2)) for g, b in zip(got, range(7, 11)))


def test_bench_function_reports_both_paths(aim19_dir, tiny_cfg, tmp_path):
    from ots.bench.data import run_data_bench

    build_shards(aim19_dir, str(tmp_path / "ds"), cfg=tiny_cfg, progress=False)
    r = run_data_bench(str(tmp_path / "ds"), str(aim19_dir), crop=64, batch=16, shard_crops=320, png_crops=32)
    assert r["shards_crops_per_s_per_core"] > 0 and r["png_crops_per_s_per_core"] > 0
    assert r["ratio"] == pytest.approx(r["shards_crops_per_s_per_core"] / r["png_crops_per_s_per_core"], rel=0.01)
    assert r["n_png"] == 2 and set(r["targets"]) == {"shards_crops_per_s_per_core", "ratio"}
