"""``ots data ...``: build the demo set, prepare shards, inspect a dataset."""

from __future__ import annotations

import json

from ots.data.config import DataConfig


def _config(args):
    from ots.data.shards import ShardConfig

    return ShardConfig(hr_tile=args.hr_tile, lr_tile=args.lr_tile, hr_crop=args.hr_crop, lr_crop=args.lr_crop,
                       overlap=args.overlap, shard_bytes=int(args.shard_mb * (1 << 20)))


def _demo_options(args) -> dict:
    return {"max_side": args.max_side, "val_crop": args.val_crop, "split": args.split, "cell": args.cell}


def _demo(args) -> int:
    from ots.data.demo import build_demo

    meta = build_demo(args.out, photos=args.photos, seed=args.seed, **_demo_options(args))
    print(json.dumps({"out": args.out, "hr": meta["hr"], "lr": sorted(meta["lr"]), "val": sorted(meta["val"])}))
    return 0


def _photos(args) -> int:
    from ots.data.photos import gather_photos

    names = gather_photos(args.out, debian=not args.no_debian)
    print(json.dumps({"out": args.out, "photos": {k: len(v) for k, v in names.items()}}))
    return 0


def _prepare(args) -> int:
    from ots.data.shards import prepare_dataset

    m, written = prepare_dataset(args.source, args.out, photos=args.photos, work_dir=args.work, seed=args.seed,
                                 cfg=_config(args), skip_invalid=args.skip_invalid,
                                 demo_options=_demo_options(args))
    print(json.dumps({"out": args.out, "written": written, "counts": m["counts"], "shards": len(m["shards"]),
                      "skipped": m["skipped"]}))
    return 0


def _info(args) -> int:
    from ots.data.shard_reader import open_dataset

    ds = open_dataset(args.uri, verify=not args.no_verify)
    m = ds.manifest
    print(json.dumps({"uri": ds.uri, "verified": not args.no_verify, "counts": m["counts"],
                      "shards": [{k: s[k] for k in ("name", "rows", "bytes")} for s in m["shards"]],
                      "source": m["source"], "params": m["params"], "skipped": m["skipped"]}, indent=2))
    return 0


def add_demo_args(p) -> None:
    p.add_argument("--max-side", type=int, default=DataConfig.max_side,
                   help="photos are downscaled to at most this many px")
    p.add_argument("--val-crop", type=int, default=DataConfig.val_crop,
                   help="side of the centre crop of each validation photo")
    p.add_argument("--split", choices=("regions", "photos"), default=DataConfig.split,
                   help="regions: HR and LR domains from disjoint checkerboard cells of the same photos "
                        "(default); photos: whole photos split between the domains")
    p.add_argument("--cell", type=int, default=DataConfig.cell, help="with --split regions: cell size in HR px")


def add_shard_args(p) -> None:
    p.add_argument("--hr-tile", type=int, default=DataConfig.hr_tile)
    p.add_argument("--lr-tile", type=int, default=DataConfig.lr_tile)
    p.add_argument("--hr-crop", type=int, default=DataConfig.hr_crop)
    p.add_argument("--lr-crop", type=int, default=DataConfig.lr_crop)
    p.add_argument("--overlap", type=float, default=DataConfig.overlap)
    p.add_argument("--shard-mb", type=float, default=DataConfig.shard_mb)


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="datasets: demo set, Parquet shards, inspection")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("demo", help="build the offline AIM19-like demo folder (PNG, AIM19 layout)")
    p.add_argument("--out", default=DataConfig.work_dir)
    p.add_argument("--photos", help="folder of your own colour photos (default: scikit-image's)")
    p.add_argument("--seed", type=int, default=0)
    add_demo_args(p)
    p.set_defaults(func=_demo)

    p = dsub.add_parser("photos", help="gather real photos shipped in packages (Debian wallpapers, scikit-image, "
                                       "scikit-learn) into a folder for `ots data demo --photos`")
    p.add_argument("--out", default="data/photos")
    p.add_argument("--no-debian", action="store_true", help="skip apt-get download of the wallpaper packages")
    p.set_defaults(func=_photos)

    p = dsub.add_parser("prepare", help="write Parquet shards + manifest from 'demo' or an AIM19 folder")
    p.add_argument("--source", default=DataConfig.source, help="'demo' or the path of an AIM19-layout folder")
    p.add_argument("--out", default=DataConfig.output, help="local path, file://... or s3://bucket/prefix")
    p.add_argument("--photos", help="with --source demo: folder of your own photos")
    p.add_argument("--work", default=DataConfig.work_dir, help="with --source demo: where the demo PNGs go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-invalid", action="store_true", help="skip bad files and record them in the manifest")
    add_demo_args(p)
    add_shard_args(p)
    p.set_defaults(func=_prepare)

    p = dsub.add_parser("info", help="validate a dataset (manifest + shard checksums) and summarise it")
    p.add_argument("uri")
    p.add_argument("--no-verify", action="store_true", help="skip reading every shard for its checksum")
    p.set_defaults(func=_info)
