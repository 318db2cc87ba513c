"""The object-store adapter: every S3 call Voicetrack makes goes through here (minio SDK).

Calls are synchronous (the recorder and transcoder are plain processes); the operator runs
them off the event loop with `asyncio.to_thread`. S3 and network errors become the
project's own in one place (`voicetrack.s3errors`, used by every call through `s3_call`).
The multipart operations (compose, ranged reads, aborting incomplete uploads) are in
`voicetrack.s3multipart`, which `ObjectStore` inherits.

Credentials: `voicetrack.s3credentials` (the settings' explicit keys, else the standard AWS
chain; no credentials at all → CredentialsUnavailable, a TemporaryFailure).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.s3credentials import credentials_provider
from voicetrack.s3errors import s3_call
from voicetrack.s3multipart import MultipartOps


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to sign for it. `endpoint` is a URL
    (`http://127.0.0.1:8333`). Empty `access_key` and `secret_key` mean: take credentials
    from the standard AWS chain (`credentials_provider`)."""

    endpoint: str
    access_key: str = ""
    secret_key: str = ""
    bucket: str = "voicetrack"
    region: str = "us-east-1"
    public_endpoint: str | None = None
    """The URL people outside the cluster reach S3 at (`https://s3.example.com`), used only
    to sign presigned URLs; None signs for `endpoint`. SigV4 signs the Host header, so a URL
    signed for the internal address cannot be rewritten afterwards."""

    @property
    def has_keys(self) -> bool:
        """True when explicit keys are given (they win over the AWS chain)."""
        return bool(self.access_key and self.secret_key)

    @classmethod
    def from_env(cls, bucket: str | None = None) -> S3Settings:
        """Read VOICETRACK_S3_ENDPOINT, VOICETRACK_S3_ACCESS_KEY, VOICETRACK_S3_SECRET_KEY,
        VOICETRACK_S3_BUCKET, VOICETRACK_S3_REGION (default us-east-1: SigV4 signs with
        it, so it must be the bucket's region on AWS) and VOICETRACK_S3_PUBLIC_ENDPOINT.
        The two keys are optional together: without them, credentials come from the AWS
        chain (`credentials_provider`). Raises RuntimeError naming a missing endpoint, or
        a key given without the other."""
        if not os.environ.get("VOICETRACK_S3_ENDPOINT"):
            raise RuntimeError("missing environment variable(s): VOICETRACK_S3_ENDPOINT")
        access_key = os.environ.get("VOICETRACK_S3_ACCESS_KEY", "")
        secret_key = os.environ.get("VOICETRACK_S3_SECRET_KEY", "")
        if bool(access_key) != bool(secret_key):
            given, missing = (("VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY")
                              if access_key else
                              ("VOICETRACK_S3_SECRET_KEY", "VOICETRACK_S3_ACCESS_KEY"))
            raise RuntimeError(f"{given} is set but {missing} is not: give both keys, or "
                               "neither to use the AWS credential chain")
        return cls(
            endpoint=os.environ["VOICETRACK_S3_ENDPOINT"],
            access_key=access_key,
            secret_key=secret_key,
            bucket=bucket or os.environ.get("VOICETRACK_S3_BUCKET", "voicetrack"),
            region=os.environ.get("VOICETRACK_S3_REGION") or "us-east-1",
            public_endpoint=os.environ.get("VOICETRACK_S3_PUBLIC_ENDPOINT") or None,
        )

    def env(self) -> dict[str, str]:
        """The environment variables that `from_env` reads back (no key variables when the
        settings use the AWS chain)."""
        return {
            "VOICETRACK_S3_ENDPOINT": self.endpoint,
            **({"VOICETRACK_S3_ACCESS_KEY": self.access_key,
                "VOICETRACK_S3_SECRET_KEY": self.secret_key} if self.has_keys else {}),
            "VOICETRACK_S3_BUCKET": self.bucket,
            "VOICETRACK_S3_REGION": self.region,
            **({"VOICETRACK_S3_PUBLIC_ENDPOINT": self.public_endpoint}
               if self.public_endpoint else {}),
        }


def sha256_hex(data: bytes) -> str:
    """sha256 (hex, 64 lowercase digits) of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], part: int = 1 << 20) -> str:
    """sha256 (hex) of a local file, read in `part`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(part), b""):
            digest.update(block)
    return digest.hexdigest()


MAX_PRESIGN_S = 7 * 24 * 3600
"""The longest validity (s) a SigV4 presigned URL may have (AWS S3 API reference,
"Authenticating Requests: Using Query Parameters")."""

DEFAULT_LINK_S = 15 * 60
"""Default validity (s) of a link handed to a person: 15 minutes, minted when asked."""


@dataclass(frozen=True)
class PresignedUrl:
    """A presigned GET link as handed to users: the URL, its validity in seconds from
    when it was minted, and the object's format (file extension, lowercase)."""

    url: str
    expires_in_seconds: int
    format: str

    def as_dict(self) -> dict[str, Any]:
        """`{url, expires_in_seconds, format}` for JSON answers."""
        return {"url": self.url, "expires_in_seconds": self.expires_in_seconds,
                "format": self.format}


POOL_CONNECTIONS = 32
"""Connections to S3 kept open for reuse, per host: at least the threads that call one
store at the same time (the operator's 32 blocking-call threads, promotion's 8 fetchers)."""


JSON_MAX_BYTES = 64 * 1024**2
"""The largest JSON document `get_json` reads (bytes): far above any Voicetrack writes (a
4 h session's promotion plan at 5 s chunks is a few MB); readers of documents a recorder
writes pass the smaller `voicetrack.chunkspec.SPEC_MAX_BYTES`."""


class ObjectStore(MultipartOps):
    """One bucket of an S3 server, signed for with `credentials_provider(settings)`. Every
    method raises NotFoundError, TemporaryFailure or InvalidInputError for S3 and network
    failures (`voicetrack.s3errors`), CredentialsUnavailable (a TemporaryFailure) when
    there are no credentials, and lets any other exception through unchanged."""

    def __init__(self, settings: S3Settings) -> None:
        """Raises InvalidInputError for a bucket name S3 does not accept (checked here, once,
        rather than failing every call)."""
        try:
            check_bucket_name(settings.bucket)
        except (ValueError, TypeError) as err:
            raise InvalidInputError(f"VOICETRACK_S3_BUCKET: {err}") from err
        url = urlparse(settings.endpoint)
        self.settings = settings
        self.bucket = settings.bucket
        http = urllib3.PoolManager(
            # kept connections per host: one per thread that calls at once (the operator's
            # API pool, assembly's fetchers); urllib3's default keeps one and discards the rest
            maxsize=POOL_CONNECTIONS,
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            url.netloc or url.path,
            credentials=credentials_provider(settings),
            secure=url.scheme == "https",
            region=settings.region,
            http_client=http,
        )
        self._public_client: Minio | None = None

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        with s3_call(f"bucket {self.bucket}"):
            try:
                if not self.client.bucket_exists(self.bucket):
                    self.client.make_bucket(self.bucket)
            except S3Error as err:  # a concurrent creator won: the bucket is there
                if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream"
                  ) -> str:
        """Write `data` at `key`; returns its sha256 (hex)."""
        with s3_call(f"put {key}"):
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                   content_type=content_type)
        return sha256_hex(data)

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream"
                 ) -> str:
        """Upload a local file (streamed in parts) to `key`; returns the ETag (without
        quotes) the store gave the object written: a later `compose` passing it copies this
        object, never one another writer put at `key` since. A missing or unreadable local
        file raises its OSError (FileNotFoundError, …) unchanged."""
        with s3_call(f"put {key}"):
            result = self.client.fput_object(self.bucket, key, path,
                                             content_type=content_type)
        return (result.etag or "").strip('"')

    def put_json(self, key: str, doc: Any) -> str:
        """Write `doc` as indented, key-sorted JSON at `key`; returns its sha256 (hex)."""
        return self.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode(),
                              "application/json")

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """The whole object at `key`. Raises NotFoundError when it does not exist, and
        InvalidInputError when `limit` (bytes) is given and the object is larger (at most
        `limit` + 1 bytes are read: an object someone else can write never fills memory)."""
        with s3_call(f"get {key}"):
            resp = self.client.get_object(self.bucket, key)
            try:
                data = resp.read() if limit is None else resp.read(limit + 1)
            finally:
                resp.close()
                resp.release_conn()
        if limit is not None and len(data) > limit:
            raise InvalidInputError(f"{key}: larger than {limit} bytes")
        return data

    def digest(self, key: str, part: int = 1 << 20) -> tuple[int, str]:
        """(size in bytes, sha256 hex) of the object at `key`, streamed in `part`-byte reads.
        Raises NotFoundError when it does not exist."""
        h = hashlib.sha256()
        size = 0
        with s3_call(f"get {key}"):
            resp = self.client.get_object(self.bucket, key)
            try:
                for block in resp.stream(part):
                    h.update(block)
                    size += len(block)
            finally:
                resp.close()
                resp.release_conn()
        return size, h.hexdigest()

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy of `src` to `dst` in this bucket. NotFoundError if `src` is gone."""
        with s3_call(f"copy {src}"):
            self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))

    def stat(self, key: str) -> tuple[int, str]:
        """(size in bytes, ETag without quotes) of the object at `key`, from its metadata
        (nothing is read): the ETag changes whenever the object is written again.
        Raises NotFoundError when it does not exist."""
        with s3_call(f"stat {key}"):
            meta = self.client.stat_object(self.bucket, key)
        return int(meta.size or 0), (meta.etag or "").strip('"')

    def get_file(self, key: str, path: str) -> None:
        """Download `key` to the local file `path`, streamed through `<path>.minio` that is
        renamed over `path` once whole; when the download fails (NotFoundError when `key`
        does not exist, TemporaryFailure, an OSError writing) the temp file is deleted and
        `path` left as it was (the client alone keeps its partial file for a resume)."""
        tmp = f"{path}.minio"
        try:
            with s3_call(f"get {key}"):
                self.client.fget_object(self.bucket, key, path, tmp_file_path=tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get_json(self, key: str, limit: int = JSON_MAX_BYTES) -> Any:
        """The object at `key` parsed as JSON, read only up to `limit` bytes (a document
        someone else can write, e.g. a recorder's `chunk.json`, never fills memory).
        Raises NotFoundError when it does not exist, InvalidInputError when it is larger
        than `limit` or not JSON (nested too deeply for the parser too: before, that
        RecursionError escaped every caller's error handling)."""
        data = self.get_bytes(key, limit=limit)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as err:
            raise InvalidInputError(f"{key}: not JSON: {type(err).__name__}: "
                                    f"{str(err)[:200]}") from err

    def size(self, key: str) -> int:
        """The size (bytes) of the object at `key`, from its metadata (nothing is read).
        Raises NotFoundError when it does not exist."""
        with s3_call(f"stat {key}"):
            return int(self.client.stat_object(self.bucket, key).size or 0)

    def exists(self, key: str) -> bool:
        """Whether an object is at `key` (False also when the bucket is missing)."""
        try:
            with s3_call(f"stat {key}"):
                self.client.stat_object(self.bucket, key)
        except NotFoundError:
            return False
        return True

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, recursively, sorted."""
        with s3_call(f"list {prefix}"):
            return sorted(o.object_name for o in
                          self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                          if o.object_name)

    def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified, UTC) of every object under `prefix`, recursively, all in
        one list (`iter_objects` for a prefix that may hold many)."""
        return list(self.iter_objects(prefix))

    def iter_objects(self, prefix: str) -> Generator[tuple[str, datetime], None, None]:
        """(key, last modified, UTC) of every object under `prefix`, recursively, in key
        order (S3 lists in UTF-8 binary order), fetched a page (1000 keys) at a time as the
        caller iterates: nothing is held beyond the current page. Errors come out
        translated (`s3_call`) from the `next()` that met them."""
        with s3_call(f"list {prefix}"):
            for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if o.object_name and o.last_modified:
                    yield o.object_name, o.last_modified

    def delete_keys(self, keys: list[str]) -> int:
        """Delete `keys` (missing ones count as deleted); returns how many were asked.
        TemporaryFailure when the server refuses any of them."""
        if not keys:
            return 0
        with s3_call("delete objects"):
            errors = list(self.client.remove_objects(
                self.bucket, [DeleteObject(k) for k in keys]))
        bad = [e for e in errors if e.code not in ("NoSuchKey",)]
        if bad:
            raise TemporaryFailure(f"delete failed for {len(bad)} object(s): {bad[0].message}")
        return len(keys)

    def delete_prefix(self, prefix: str, abort: bool = True) -> int:
        """Delete every object under `prefix`, then abort every incomplete multipart
        upload under it (`abort_uploads`: a writer killed mid-upload leaves its parts,
        audio, in the store) unless `abort` is False (the caller aborts them under a
        wider prefix); returns the count of objects deleted. The objects go first, so a
        store or policy that refuses the upload listing or abort never keeps them (it is
        logged). Raises TemporaryFailure when the objects cannot be listed or deleted."""
        deleted = self.delete_keys(self.list_keys(prefix))
        if abort:
            self.abort_uploads(prefix)
        return deleted

    def presigned_get(self, key: str, expires_s: int = 3600,
                      download_as: str | None = None) -> str:
        """A presigned GET URL for `key`, valid `expires_s` seconds (1 s .. 7 days, the
        SigV4 limit); never stored. Signed for `settings.public_endpoint` when set (no
        network call: the region is fixed), else for `endpoint`. `download_as` names the
        file a browser saves instead of playing it (the signed
        `response-content-disposition: attachment` override of S3 GetObject). Raises
        InvalidInputError for an expiry out of range or a name with quotes or controls."""
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise InvalidInputError(
                f"expires: {expires_s} s is outside 1..{MAX_PRESIGN_S} s (SigV4's 7 days)")
        headers: dict[str, str | list[str] | tuple[str]] | None = None
        if download_as is not None:
            if not download_as or any(c in download_as for c in '"\\/') or \
                    not download_as.isprintable():
                raise InvalidInputError(f"download_as: {download_as!r} is not a file name")
            headers = {"response-content-disposition":
                       f'attachment; filename="{download_as}"'}
        with s3_call(f"presign {key}"):
            return self._signer.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expires_s),
                response_headers=headers)

    def presigned_link(self, key: str, expires_s: int = DEFAULT_LINK_S,
                       download_as: str | None = None) -> PresignedUrl:
        """`presigned_get` as the answer every user-facing path gives (CLI, bot, web,
        webhook): `{url, expires_in_seconds, format}`, the format from the key's
        extension (`mp3`, `flac`, `opus`, `json`, `png`, `zip`)."""
        fmt = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
        return PresignedUrl(url=self.presigned_get(key, expires_s, download_as),
                            expires_in_seconds=expires_s, format=fmt)

    @property
    def _signer(self) -> Minio:
        """The client that signs presigned URLs: one for the public endpoint, else ours."""
        public = self.settings.public_endpoint
        if not public:
            return self.client
        if self._public_client is None:
            url = urlparse(public)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise InvalidInputError(
                    f"VOICETRACK_S3_PUBLIC_ENDPOINT: {public!r} is not an http(s) URL")
            self._public_client = Minio(
                url.netloc, credentials=credentials_provider(self.settings),
                secure=url.scheme == "https",
                region=self.settings.region)
        return self._public_client
