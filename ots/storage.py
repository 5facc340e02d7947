"""Reading and writing objects in one storage location (local folder or S3), with one-line errors.

Locations are named as in :mod:`ots.locations`. ``open_store(uri)`` returns a
:class:`Store` rooted at that location. Data I/O goes through ``pyarrow.fs``; boto3 (imported lazily) only where
pyarrow lacks something (bucket checks and creation). S3 endpoint, region and credentials come from the
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_DEFAULT_REGION``) or from explicit options; credentials are never logged or stored.

Credentials: keys are handed to pyarrow/boto3 only when the user gave them (``AWS_ACCESS_KEY_ID`` +
``AWS_SECRET_ACCESS_KEY`` in the environment, or ``access_key``/``secret_key`` options). Otherwise both use the
AWS default chain themselves (profile, SSO, web identity/IRSA, container and instance roles), which refreshes
temporary credentials before they expire (a 100k-step run outlives any one set); pickled filesystems carry no keys.

Retries: :meth:`Store.check` fails fast (one attempt, short timeouts) so a bad location stops a run at
start; the data I/O of a store retries ``attempts`` times (default :data:`DEFAULT_ATTEMPTS`; long runs that
write checkpoints for hours use :data:`LONG_RUN_ATTEMPTS`) with the AWS SDK's standard backoff. Every failure
to use a location is a :class:`ots.errors.StorageError` whose message is one line naming the URI and the cause.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from ots.atomic import atomic_path
from ots.errors import StorageError, one_line
from ots.locations import join_uri, not_regular, parse_uri
from ots.redaction import redact_uri

__all__ = ["Store", "open_store", "DEFAULT_ATTEMPTS", "LONG_RUN_ATTEMPTS"]

DEFAULT_ATTEMPTS = 3  # data I/O of short stages
LONG_RUN_ATTEMPTS = 10  # checkpoint I/O of long runs: ride out throttling and transient endpoint errors



def _s3_settings(options: dict) -> dict:
    """Endpoint, region and the keys the user gave explicitly (options, else the environment's key pair);
    ``creds`` is None when the AWS default chain is to find (and refresh) them."""
    try:
        import boto3
    except ImportError as e:  # pragma: no cover - boto3 is a declared dependency
        raise StorageError("s3:// locations need boto3 (pip install boto3)") from e
    endpoint = (
        options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    try:
        session = boto3.Session(profile_name=options.get("profile") or None)
    except Exception as e:  # ProfileNotFound
        raise StorageError(f"AWS profile {options.get('profile')!r}: {e}") from e
    region = options.get("region") or session.region_name or "us-east-1"
    anonymous = bool(options.get("anonymous"))
    creds = None
    if options.get("access_key") and options.get("secret_key"):
        creds = (options["access_key"], options["secret_key"], options.get("session_token"))
    elif options.get("profile") and not anonymous:  # pyarrow cannot select a profile by name: resolve it here
        c = session.get_credentials()
        if c is not None:
            f = c.get_frozen_credentials()
            creds = (f.access_key, f.secret_key, f.token)
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        creds = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                 os.environ.get("AWS_SESSION_TOKEN") or None)
    return {"endpoint": endpoint, "region": region, "creds": creds, "anonymous": anonymous,
            "profile": options.get("profile") or None}


class Store:
    """A storage location. Paths given to the methods are relative to the location (``/``-separated)."""

    def __init__(self, uri: str | os.PathLike, attempts: int = DEFAULT_ATTEMPTS, **options):
        self.location = parse_uri(uri)
        self.uri = self.location.uri
        self._options = options
        if self.location.scheme == "file":
            self.fs = pafs.LocalFileSystem()
            self._root = self.location.path
            self._s3 = None
        else:
            self._s3 = _s3_settings(options)
            s = self._s3
            kw: dict = {"region": s["region"], "connect_timeout": 5, "request_timeout": 30}
            if s["endpoint"]:
                ep = s["endpoint"]
                if "://" in ep:
                    scheme, _, ep = ep.partition("://")
                    kw["scheme"] = scheme
                kw["endpoint_override"] = ep.rstrip("/")
            if s["anonymous"]:
                kw["anonymous"] = True
            elif s["creds"] is not None:  # given by the user; else pyarrow's default chain (refreshing)
                kw["access_key"], kw["secret_key"] = s["creds"][0], s["creds"][1]
                if s["creds"][2]:
                    kw["session_token"] = s["creds"][2]
            kw["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, int(attempts)))
            self.fs = pafs.S3FileSystem(**kw)
            self._root = f"{self.location.bucket}/{self.location.path}".rstrip("/")

    # -- helpers ------------------------------------------------------------------------------------
    def full(self, rel: str = "") -> str:
        rel = rel.strip("/")
        return f"{self._root}/{rel}" if rel else self._root

    def uri_of(self, rel: str) -> str:
        return join_uri(self.uri, rel) if rel else self.uri

    def _err(self, rel: str, e: BaseException, action: str) -> StorageError:
        return StorageError(f"{self.uri_of(rel)}: cannot {action}: {_cause(e)}")

    def _boto_client(self):
        import boto3
        from botocore.config import Config

        s = self._s3
        kw: dict = {
            "region_name": s["region"],
            "config": Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}),
        }
        if s["endpoint"]:
            kw["endpoint_url"] = s["endpoint"]
        if s["anonymous"]:
            from botocore import UNSIGNED

            kw["config"] = kw["config"].merge(Config(signature_version=UNSIGNED))
        elif s["creds"] is not None:
            kw["aws_access_key_id"], kw["aws_secret_access_key"] = s["creds"][0], s["creds"][1]
            kw["aws_session_token"] = s["creds"][2]
        session = boto3.Session(profile_name=s["profile"])
        return session.client("s3", **kw)  # without keys: the session's (refreshing) default chain

    # -- checks -------------------------------------------------------------------------------------
    def check(self, create: bool = False) -> Store:
        """Fail early with one clear line if the location cannot be used; optionally create it."""
        if self.location.scheme == "file":
            p = Path(self.location.path)
            if p.exists() and not p.is_dir():
                raise StorageError(f"{self.uri}: exists and is not a directory")
            if create:
                try:
                    p.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StorageError(f"{self.uri}: cannot create directory: {_cause(e)}") from e
                if not os.access(p, os.W_OK):
                    raise StorageError(f"{self.uri}: permission denied (directory is not writable)")
            return self
        if self._s3["creds"] is None and not self._s3["anonymous"]:
            try:
                import boto3

                found = boto3.Session(profile_name=self._s3["profile"]).get_credentials()  # nothing is kept
            except Exception as e:  # noqa: BLE001 - a broken profile / SSO cache / provider: one line
                raise StorageError(f"{self.uri}: cannot resolve AWS credentials: {_cause(e)}") from e
            if found is None:
                raise StorageError(f"{self.uri}: missing credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                   "AWS_PROFILE, or run with an instance/pod role)")
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        client = self._boto_client()
        bucket = self.location.bucket
        try:
            client.head_bucket(Bucket=bucket)
            return self
        except EndpointConnectionError as e:
            raise StorageError(f"{self.uri}: endpoint unreachable ({redact_uri(self._s3['endpoint'] or 'AWS')}): "
                               f"{redact_uri(str(e))}") from e
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                if not create:
                    raise StorageError(f"{self.uri}: bucket {bucket!r} does not exist") from e
            elif code in ("403", "AccessDenied", "Forbidden"):
                # HEAD answers have no body: S3 says "403" both for rejected keys and for a denied bucket.
                # Ask once more with a request whose error has a body, to name the real cause.
                code = _error_code_with_body(client, bucket) or code
                if code in _REJECTED_CREDENTIALS:
                    raise StorageError(f"{self.uri}: credentials rejected ({code}); check AWS_ACCESS_KEY_ID/"
                                       "AWS_SECRET_ACCESS_KEY (or the profile/session token)") from e
                raise StorageError(f"{self.uri}: permission denied on bucket {bucket!r}") from e
            elif code in _REJECTED_CREDENTIALS:
                raise StorageError(f"{self.uri}: credentials rejected ({code})") from e
            else:
                raise StorageError(f"{self.uri}: cannot access bucket {bucket!r}: {code or e}") from e
        except BotoCoreError as e:
            raise StorageError(f"{self.uri}: {_cause(e)}") from e
        try:
            kw = {"Bucket": bucket}
            if self._s3["region"] != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": self._s3["region"]}
            client.create_bucket(**kw)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou",):
                raise StorageError(f"{self.uri}: cannot create bucket {bucket!r}: {code or e}") from e
        return self

    # -- I/O ----------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        try:
            return self.fs.get_file_info(self.full(rel)).type == pafs.FileType.File
        except OSError as e:
            raise self._err(rel, e, "stat") from e

    def size(self, rel: str) -> int:
        try:
            return int(self.fs.get_file_info(self.full(rel)).size)
        except OSError as e:
            raise self._err(rel, e, "stat") from e

    def list(self, rel: str = "") -> list[str]:
        """Relative paths of all files under ``rel`` (recursive, sorted); empty if it does not exist."""
        base = self.full(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise self._err(rel, e, "list") from e
        n = len(self._root) + 1 if self._root else 0
        return sorted(i.path[n:] for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, rel: str) -> bytes:
        if self.location.scheme == "file":
            kind = not_regular(self.full(rel))
            if kind:  # a FIFO would block the reader for good
                raise StorageError(f"{self.uri_of(rel)}: {kind}, not a regular file")
        try:
            with self.fs.open_input_stream(self.full(rel)) as f:
                return f.read()
        except FileNotFoundError as e:
            raise StorageError(f"{self.uri_of(rel)}: not found") from e
        except OSError as e:
            raise self._err(rel, e, "read") from e

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: local files go to a temporary name and are renamed; an S3 PUT is atomic."""
        full = self.full(rel)
        try:
            if self.location.scheme == "file":
                with atomic_path(full) as tmp, open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                with self.fs.open_output_stream(full) as f:
                    f.write(data)
        except OSError as e:
            raise self._err(rel, e, "write") from e

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.full(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._err(rel, e, "delete") from e


_REJECTED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                         "InvalidClientTokenId", "TokenRefreshRequired", "401")


def _error_code_with_body(client, bucket: str) -> str:
    """The S3 error code of a cheap GET on the bucket ('' when it succeeds or says nothing)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except ClientError as e:
        return str(e.response.get("Error", {}).get("Code", ""))
    except BotoCoreError:
        return ""
    return ""


def _cause(e: BaseException) -> str:
    msg = one_line(e)
    low = msg.lower()
    if "invalidaccesskeyid" in low or "invalid_access_key_id" in low or "signaturedoesnotmatch" in low \
            or "signature_does_not_match" in low:
        return "credentials rejected (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
        return "bucket does not exist"
    if "access_denied" in low or "accessdenied" in low or "403" in low:
        return "permission denied"
    if "permission denied" in low:
        return "permission denied"
    if "curl" in low or "connect" in low or "resolve host" in low:
        return f"endpoint unreachable ({msg[:160]})"
    return msg[:240] or type(e).__name__


def open_store(uri: str | os.PathLike, create: bool = False, check: bool = True, attempts: int = DEFAULT_ATTEMPTS,
               **options) -> Store:
    """A :class:`Store` for ``uri``; with ``check`` it fails early (one line) if it cannot be used. ``attempts``:
    tries per I/O call after that (:data:`LONG_RUN_ATTEMPTS` for checkpoint storage of long runs)."""
    store = Store(uri, attempts=attempts, **options)
    if check:
        store.check(create=create)
    return store
