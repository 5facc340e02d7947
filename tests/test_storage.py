import socket
import uuid

import pytest

from ots.errors import OTSError, StorageError
from ots.storage import join_uri, open_store, parse_uri


def test_parse_uri_forms(tmp_path):
    assert parse_uri("s3://my-bucket/a/b/").uri == "s3://my-bucket/a/b"
    loc = parse_uri("s3://my-bucket")
    assert (loc.scheme, loc.bucket, loc.path) == ("s3", "my-bucket", "")
    assert parse_uri(f"file://{tmp_path}/x").path == str(tmp_path / "x")
    assert parse_uri(tmp_path / "x").path == str(tmp_path / "x")
    assert join_uri("s3://bkt/p", "shards/a.parquet") == "s3://bkt/p/shards/a.parquet"
    with pytest.raises(StorageError, match="unsupported scheme"):
        parse_uri("gs://bucket/x")
    with pytest.raises(StorageError, match="at least 3"):
        parse_uri("s3://ab/x")
    assert issubclass(StorageError, OTSError)


def test_local_store_roundtrip(tmp_path):
    st = open_store(tmp_path / "out", create=True)
    st.write_bytes("a/b.bin", b"hello")
    st.write_bytes("c.bin", b"x")
    assert st.exists("a/b.bin") and not st.exists("nope")
    assert st.read_bytes("a/b.bin") == b"hello"
    assert st.list() == ["a/b.bin", "c.bin"]  # no temporary names left behind
    st.delete("c.bin")
    assert st.list() == ["a/b.bin"]
    with pytest.raises(StorageError, match="not found"):
        st.read_bytes("missing.bin")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        open_store(tmp_path / "file")


def test_s3_roundtrip_and_bucket_creation(s3_env):
    bucket = f"ots-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError, match=f"s3://{bucket}/pre: bucket '{bucket}' does not exist"):
        open_store(f"s3://{bucket}/pre")
    st = open_store(f"s3://{bucket}/pre", create=True)
    st.write_bytes("x/y.bin", b"data")
    assert st.read_bytes("x/y.bin") == b"data"
    assert st.list() == ["x/y.bin"]
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["pre/x/y.bin"]


def test_s3_missing_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match=r"s3://some-bucket/p: missing credentials"):
        open_store("s3://some-bucket/p")


def test_s3_unreachable_endpoint(s3_env, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError, match=r"s3://some-bucket/p: endpoint unreachable") as e:
        open_store("s3://some-bucket/p")
    assert "\n" not in str(e.value)


def test_s3_permission_denied(s3_env, monkeypatch):
    from botocore.exceptions import ClientError

    from ots.storage import Store

    class Denied:
        def head_bucket(self, **kw):
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadBucket")

        def list_objects_v2(self, **kw):  # a GET has a body that names the cause
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")

    monkeypatch.setattr(Store, "_boto_client", lambda self: Denied())
    with pytest.raises(StorageError, match=r"s3://locked-bucket/p: permission denied"):
        open_store("s3://locked-bucket/p")
