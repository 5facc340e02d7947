"""Naming a storage location: a local path, ``file://...`` or ``s3://bucket/prefix`` (parse, join); redacting a
location's credentials for print is :mod:`ots.redaction`."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ots.errors import StorageError

__all__ = ["Location", "join_uri", "not_regular", "parse_uri"]


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    bucket: str  # "" for local
    path: str  # local: absolute path; s3: key prefix without leading/trailing slash

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}".rstrip("/")
        return self.path


def parse_uri(uri: str | os.PathLike) -> Location:
    """Parse a local path, ``file://`` URI or ``s3://bucket/prefix`` into a :class:`Location`."""
    s = os.fspath(uri)
    if not s:
        raise StorageError("empty storage location")
    if s.startswith("s3://"):
        rest = s[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if len(bucket) < 3:
            raise StorageError(f"{s}: bucket name must have at least 3 characters")
        return Location("s3", bucket, prefix.strip("/"))
    if s.startswith("file://"):
        s = s[len("file://") :]
    elif "://" in s:
        raise StorageError(f"{s}: unsupported scheme (use a local path, file://... or s3://bucket/prefix)")
    return Location("file", "", str(Path(s).expanduser().resolve()))


def join_uri(uri: str, *parts: str) -> str:
    loc = parse_uri(uri)
    if loc.scheme == "s3":
        return "/".join([loc.uri.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(loc.path, *parts))


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file (symlinks followed): "a FIFO", "a device", "a
    socket" or "a folder"; None for a regular file or nothing at all. Readers refuse these before opening them:
    opening a FIFO blocks until a writer comes, a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(mode) else "not a regular file"
