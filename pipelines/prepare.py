"""DVC stage ``prepare``: demo set or AIM19 folder -> Parquet shards + manifest at ``data.output``.

    python -m pipelines.prepare --params params.yaml

Reads the ``data:`` section of params.yaml. The output may be a local folder or ``s3://bucket/prefix``
(endpoint and credentials from the environment). A local copy of the committed manifest is written to
``data.manifest_copy`` for DVC to track.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULTS = {
    "source": "demo",
    "photos": None,
    "work_dir": "data/demo_src",
    "output": "data/demo",
    "manifest_copy": "data/manifest.json",
    "seed": 0,
    "max_side": 1024,        # with source=demo: photos downscaled to at most this many px
    "val_crop": 256,         # with source=demo: centre crop of each validation photo
    "split": "regions",      # with source=demo: HR/LR domains from disjoint checkerboard cells of the same photos
    "cell": 160,             # with source=demo and split=regions: cell size (HR px)
    "hr_tile": 480,
    "lr_tile": 120,
    "hr_crop": 128,
    "lr_crop": 32,
    "overlap": 0.25,
    "shard_mb": 64,
    "skip_invalid": False,
}


def run(params: dict, progress: bool = True) -> dict:
    from ots.data.shards import ShardConfig, prepare_dataset

    cfg = ShardConfig(hr_tile=int(params["hr_tile"]), lr_tile=int(params["lr_tile"]),
                      hr_crop=int(params["hr_crop"]), lr_crop=int(params["lr_crop"]),
                      overlap=float(params["overlap"]), shard_bytes=int(float(params["shard_mb"]) * (1 << 20)))
    manifest, written = prepare_dataset(
        str(params["source"]), str(params["output"]), photos=params["photos"], work_dir=params["work_dir"],
        seed=int(params["seed"]), cfg=cfg, skip_invalid=bool(params["skip_invalid"]), progress=progress,
        demo_options={"max_side": int(params["max_side"]), "val_crop": int(params["val_crop"]),
                      "split": str(params["split"]), "cell": int(params["cell"])},
    )
    copy = params.get("manifest_copy")
    if copy:
        p = Path(copy)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"output": params["output"], "written": written, "counts": manifest["counts"],
                      "shards": len(manifest["shards"])}))
    return manifest


def main(argv: list[str] | None = None) -> int:
    from pipelines.params import section
    from pipelines.stage import stage_main

    return stage_main("prepare", __doc__, lambda doc, path: run(section(doc, "data", DEFAULTS, path)), argv)

if __name__ == "__main__":
    raise SystemExit(main())
