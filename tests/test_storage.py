import socket
import uuid

import pytest

from ots.errors import OTSError, StorageError
from ots.locations import join_uri, parse_uri
from ots.storage import open_store


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


# -- credentials that rotate: an S3 server that checks keys, a container-credentials endpoint on loopback ---------
@pytest.fixture
def authed_s3(tmp_path, monkeypatch, request):
    """A moto server in its own process with IAM auth on, an IAM user allowed s3:*, and an ECS-style credential
    endpoint on 127.0.0.1 serving that user's *current* key (what an instance/pod role looks like to the SDKs)."""
    import json
    import subprocess
    import sys
    import threading
    import time
    import urllib.request
    from datetime import datetime, timezone
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    import boto3
    from conftest import free_port, stop_process_group, wait_http

    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: (stop_process_group(proc), log.close()))  # also when the setup below fails
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"3",
                                 method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).close()  # the next 3 requests unauthenticated, then IAM auth
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    iam.create_user(UserName="ots")
    iam.put_user_policy(UserName="ots", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}))
    first = iam.create_access_key(UserName="ots")["AccessKey"]
    lifetime = 6.0  # seconds a served key is valid (role credentials: 1-12 h)
    current = {"key": first, "expires": time.time() + lifetime}

    class Creds(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            k = current["key"]
            expires = datetime.fromtimestamp(current["expires"], timezone.utc)
            body = json.dumps({"AccessKeyId": k["AccessKeyId"], "SecretAccessKey": k["SecretAccessKey"], "Token": "",
                               "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    creds_server = HTTPServer(("127.0.0.1", 0), Creds)
    threading.Thread(target=creds_server.serve_forever, daemon=True).start()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{creds_server.server_port}/creds")

    def rotate():
        """As a role does: a new key is served, the old one stops working when it expires (here: it is deleted
        once its expiry time has passed, so the server refuses it from then on)."""
        old, old_expires = current["key"], current["expires"]
        admin = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id=old["AccessKeyId"], aws_secret_access_key=old["SecretAccessKey"])
        new = admin.create_access_key(UserName="ots")["AccessKey"]
        current["key"], current["expires"] = new, time.time() + 3600
        time.sleep(max(0.0, old_expires - time.time()) + 1.5)
        boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=new["AccessKeyId"],
                     aws_secret_access_key=new["SecretAccessKey"]).delete_access_key(
            UserName="ots", AccessKeyId=old["AccessKeyId"])
        return old

    try:
        yield {"endpoint": endpoint, "rotate": rotate, "current": current}
    finally:
        creds_server.shutdown()


def test_role_credentials_refresh_mid_run(authed_s3):
    """Keys from a role (not from the user) are never frozen into the store: after a rotation that deletes the
    old key, checkpoint-style writes and reads keep working; the pickled filesystem carries no key."""
    import pickle

    import boto3

    from ots.storage import LONG_RUN_ATTEMPTS

    bucket = f"ots-{uuid.uuid4().hex[:8]}"
    st = open_store(f"s3://{bucket}/ckpt", create=True, attempts=LONG_RUN_ATTEMPTS)
    st.write_bytes("checkpoint_000001/checkpoint.pt", b"one")
    first = authed_s3["current"]["key"]
    assert first["SecretAccessKey"].encode() not in pickle.dumps(st.fs)

    old = authed_s3["rotate"]()
    dead = boto3.client("s3", endpoint_url=authed_s3["endpoint"], region_name="us-east-1",
                        aws_access_key_id=old["AccessKeyId"], aws_secret_access_key=old["SecretAccessKey"])
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):  # the server really refuses the old key now
        dead.list_objects_v2(Bucket=bucket)
    st.write_bytes("checkpoint_000002/checkpoint.pt", b"two")  # same store object, new key
    assert st.read_bytes("checkpoint_000001/checkpoint.pt") == b"one"
    assert st.list() == ["checkpoint_000001/checkpoint.pt", "checkpoint_000002/checkpoint.pt"]
    reopened = open_store(f"s3://{bucket}/ckpt")  # a restart resolves the current key too
    assert reopened.read_bytes("checkpoint_000002/checkpoint.pt") == b"two"


def test_explicit_env_keys_are_used_and_fail_fast(s3_env, monkeypatch):
    """Keys the user put in the environment go to pyarrow as given; the start-up check fails fast on a dead
    endpoint (one attempt), while data I/O has the configured attempts."""
    from ots.storage import DEFAULT_ATTEMPTS, _s3_settings

    s = _s3_settings({})
    assert s["creds"] == ("testing", "testing", None)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert _s3_settings({})["creds"] is None  # nothing given: the default chain decides
    assert DEFAULT_ATTEMPTS < 10
