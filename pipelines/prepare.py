"""DVC stage ``prepare``: demo set or AIM19 folder -> Parquet shards + manifest at ``data.output``.

    python -m pipelines.prepare --params params.yaml

Reads the ``data:`` section of params.yaml (:class:`ots.data.config.DataConfig`). The output may be a local folder
or ``s3://bucket/prefix`` (endpoint and credentials from the environment). A local copy of the committed manifest
is written to ``data.manifest_copy`` for DVC to track.
"""

from __future__ import annotations

import json
from pathlib import Path

from ots.data.config import DataConfig


def run(data: DataConfig, progress: bool = True) -> dict:
    from ots.data.shards import ShardConfig, prepare_dataset

    cfg = ShardConfig(hr_tile=int(data.hr_tile), lr_tile=int(data.lr_tile), hr_crop=int(data.hr_crop),
                      lr_crop=int(data.lr_crop), overlap=float(data.overlap),
                      shard_bytes=int(float(data.shard_mb) * (1 << 20)))
    manifest, written = prepare_dataset(
        str(data.source), str(data.output), photos=data.photos, work_dir=data.work_dir, seed=int(data.seed),
        cfg=cfg, skip_invalid=bool(data.skip_invalid), progress=progress,
        demo_options={"max_side": int(data.max_side), "val_crop": int(data.val_crop), "split": str(data.split),
                      "cell": int(data.cell)},
    )
    copy = data.manifest_copy
    if copy:
        p = Path(copy)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"output": data.output, "written": written, "counts": manifest["counts"],
                      "shards": len(manifest["shards"])}))
    return manifest


def main(argv: list[str] | None = None) -> int:
    from pipelines.stage import stage_main

    return stage_main("prepare", __doc__, lambda doc, path: run(DataConfig.from_dict(doc.get("data"), path)), argv)


if __name__ == "__main__":
    raise SystemExit(main())
