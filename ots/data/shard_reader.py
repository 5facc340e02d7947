"""Reading a committed shard dataset: the manifest, checksummed shards, decoded tiles and validation pairs.

The format (layout, schema, commit protocol) is described in :mod:`ots.data.shards`, which writes it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ots.errors import DataError, StorageError
from ots.storage import Store, open_store

__all__ = ["FORMAT", "MANIFEST", "SCHEMA", "SHARD_DIR", "Dataset", "open_dataset", "read_manifest",
           "read_val_pairs", "sha256", "table_images"]

FORMAT = "ots-shards/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("domain", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int8()),
        ("tile_y", pa.int32()),
        ("tile_x", pa.int32()),
        ("source", pa.string()),
        ("pixels", pa.binary()),
    ]
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(store: Store) -> dict:
    if not store.exists(MANIFEST):
        raise DataError(f"{store.uri}: not a dataset (no {MANIFEST}; an unfinished write leaves none)")
    try:
        m = json.loads(store.read_bytes(MANIFEST))
    except ValueError as e:
        raise DataError(f"{store.uri_of(MANIFEST)}: corrupt manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list):
        raise DataError(f"{store.uri_of(MANIFEST)}: not an {FORMAT} manifest")
    return m


class Dataset:
    """A committed shard dataset. Every shard read is checked against its sha256 from the manifest."""

    def __init__(self, store: Store, manifest: dict):
        self.store = store
        self.uri = store.uri
        self.manifest = manifest

    def shards(self, split: str | None = None, domain: str | None = None) -> list[dict]:
        return [
            s
            for s in self.manifest["shards"]
            if (split is None or s["split"] == split) and (domain is None or s["domain"] == domain)
        ]

    def read_shard_bytes(self, name: str) -> bytes:
        entry = next((s for s in self.manifest["shards"] if s["name"] == name), None)
        if entry is None:
            raise DataError(f"{self.store.uri_of(name)}: shard is not listed in the manifest")
        try:
            data = self.store.read_bytes(name)
        except StorageError as e:
            raise DataError(f"{self.store.uri_of(name)}: shard listed in the manifest is unreadable ({e})") from e
        if sha256(data) != entry["sha256"]:
            raise DataError(f"{self.store.uri_of(name)}: checksum mismatch (shard is corrupt or was modified)")
        return data

    def read_shard(self, name: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.read_shard_bytes(name)))

    def verify(self) -> None:
        for s in self.manifest["shards"]:
            self.read_shard_bytes(s["name"])

    def tiles(self, name: str) -> list[np.ndarray]:
        """Decoded HWC uint8 tiles of one shard (zero-copy views of the shard's buffer)."""
        return table_images(self.read_shard(name))

    def val_pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        lr: dict[str, np.ndarray] = {}
        hr: dict[str, np.ndarray] = {}
        for s in self.shards("val"):
            t = self.read_shard(s["name"])
            for i, d, img in zip(t.column("id").to_pylist(), t.column("domain").to_pylist(), table_images(t)):
                (lr if d == "lr" else hr)[i] = img
        return [(n, lr[n], hr[n]) for n in sorted(lr) if n in hr]


def table_images(t: pa.Table) -> list[np.ndarray]:
    hs = t.column("height").to_numpy()
    ws = t.column("width").to_numpy()
    cs = t.column("channels").to_numpy()
    px = t.column("pixels").combine_chunks()
    offsets = np.frombuffer(px.buffers()[1], dtype=np.int32)[px.offset : px.offset + len(px) + 1]
    buf = np.frombuffer(px.buffers()[2], dtype=np.uint8)
    out = []
    for i in range(t.num_rows):
        a = buf[offsets[i] : offsets[i + 1]]
        if a.size != hs[i] * ws[i] * cs[i]:
            raise DataError(f"row {i}: pixel buffer has {a.size} bytes, expected {hs[i]}x{ws[i]}x{cs[i]}")
        out.append(a.reshape(int(hs[i]), int(ws[i]), int(cs[i])))
    return out


def open_dataset(uri: str, verify: bool = True, storage_options: dict | None = None) -> Dataset:
    """Open a committed dataset: validates the manifest and (with ``verify``) every shard's checksum."""
    store = open_store(uri, **(storage_options or {}))
    ds = Dataset(store, read_manifest(store))
    if verify:
        ds.verify()
    return ds


def read_val_pairs(uri: str, storage_options: dict | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Validation pairs ``[(name, lr_uint8_HWC, hr_uint8_HWC)]``, sorted by name."""
    return open_dataset(uri, verify=False, storage_options=storage_options).val_pairs()
