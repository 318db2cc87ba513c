"""The object-store adapter: every S3 call Voicetrack makes goes through here (minio SDK).

Calls are synchronous (the recorder and transcoder are plain processes); the operator runs
them off the event loop with `asyncio.to_thread`. Client errors become the project's own:
a missing object is NotFoundError, anything else from the server or the network is a
TemporaryFailure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is. `endpoint` is a URL (`http://127.0.0.1:8333`)."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = "voicetrack"
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, bucket: str | None = None) -> S3Settings:
        """Read VOICETRACK_S3_ENDPOINT, VOICETRACK_S3_ACCESS_KEY, VOICETRACK_S3_SECRET_KEY,
        VOICETRACK_S3_BUCKET. Raises RuntimeError naming any missing variable."""
        missing = [
            n for n in ("VOICETRACK_S3_ENDPOINT", "VOICETRACK_S3_ACCESS_KEY",
                        "VOICETRACK_S3_SECRET_KEY") if not os.environ.get(n)
        ]
        if missing:
            raise RuntimeError(f"missing environment variable(s): {', '.join(missing)}")
        return cls(
            endpoint=os.environ["VOICETRACK_S3_ENDPOINT"],
            access_key=os.environ["VOICETRACK_S3_ACCESS_KEY"],
            secret_key=os.environ["VOICETRACK_S3_SECRET_KEY"],
            bucket=bucket or os.environ.get("VOICETRACK_S3_BUCKET", "voicetrack"),
        )

    def env(self) -> dict[str, str]:
        """The environment variables that `from_env` reads back."""
        return {
            "VOICETRACK_S3_ENDPOINT": self.endpoint,
            "VOICETRACK_S3_ACCESS_KEY": self.access_key,
            "VOICETRACK_S3_SECRET_KEY": self.secret_key,
            "VOICETRACK_S3_BUCKET": self.bucket,
        }


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], part: int = 1 << 20) -> str:
    """sha256 (hex) of a local file, read in `part`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(part), b""):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore:
    """One bucket of an S3 server."""

    def __init__(self, settings: S3Settings) -> None:
        url = urlparse(settings.endpoint)
        self.settings = settings
        self.bucket = settings.bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            url.netloc or url.path,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=url.scheme == "https",
            region=settings.region,
            http_client=http,
        )

    def _wrap(self, err: Exception, what: str) -> Exception:
        if isinstance(err, S3Error) and err.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            return NotFoundError(f"{what}: {err.code}")
        return TemporaryFailure(f"{what}: {err}")

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as err:
            if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._wrap(err, f"bucket {self.bucket}") from err
        except Exception as err:  # network errors from urllib3
            raise self._wrap(err, f"bucket {self.bucket}") from err

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream"
                  ) -> str:
        """Write `data` at `key`; returns its sha256 (hex)."""
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                   content_type=content_type)
        except Exception as err:
            raise self._wrap(err, f"put {key}") from err
        return sha256_hex(data)

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream"
                 ) -> None:
        """Upload a local file (streamed in parts) to `key`."""
        try:
            self.client.fput_object(self.bucket, key, path, content_type=content_type)
        except Exception as err:
            raise self._wrap(err, f"put {key}") from err

    def put_json(self, key: str, doc: Any) -> str:
        return self.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode(),
                              "application/json")

    def get_bytes(self, key: str) -> bytes:
        """The whole object at `key`. Raises NotFoundError when it does not exist."""
        try:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()
        except Exception as err:
            raise self._wrap(err, f"get {key}") from err

    def digest(self, key: str, part: int = 1 << 20) -> tuple[int, str]:
        """(size in bytes, sha256 hex) of the object at `key`, streamed in `part`-byte reads.
        Raises NotFoundError when it does not exist."""
        h = hashlib.sha256()
        size = 0
        try:
            resp = self.client.get_object(self.bucket, key)
            try:
                for block in resp.stream(part):
                    h.update(block)
                    size += len(block)
            finally:
                resp.close()
                resp.release_conn()
        except Exception as err:
            raise self._wrap(err, f"get {key}") from err
        return size, h.hexdigest()

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy of `src` to `dst` in this bucket. NotFoundError if `src` is gone."""
        try:
            self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))
        except Exception as err:
            raise self._wrap(err, f"copy {src}") from err

    def get_file(self, key: str, path: str) -> None:
        """Download `key` to a local file, streamed."""
        try:
            self.client.fget_object(self.bucket, key, path)
        except Exception as err:
            raise self._wrap(err, f"get {key}") from err

    def get_json(self, key: str) -> Any:
        """The object at `key` parsed as JSON. Raises NotFoundError when it does not exist,
        InvalidInputError when it is not JSON."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as err:
            raise InvalidInputError(f"{key}: not JSON: {err}") from err

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                return False
            raise self._wrap(err, f"stat {key}") from err
        except Exception as err:
            raise self._wrap(err, f"stat {key}") from err

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, recursively, sorted."""
        try:
            return sorted(o.object_name for o in
                          self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                          if o.object_name)
        except Exception as err:
            raise self._wrap(err, f"list {prefix}") from err

    def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified, UTC) of every object under `prefix`, recursively."""
        try:
            return [(o.object_name, o.last_modified) for o in
                    self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                    if o.object_name and o.last_modified]
        except Exception as err:
            raise self._wrap(err, f"list {prefix}") from err

    def delete_keys(self, keys: list[str]) -> int:
        """Delete `keys` (missing ones count as deleted); returns how many were asked."""
        if not keys:
            return 0
        try:
            errors = list(self.client.remove_objects(
                self.bucket, [DeleteObject(k) for k in keys]))
        except Exception as err:
            raise self._wrap(err, "delete objects") from err
        bad = [e for e in errors if e.code not in ("NoSuchKey",)]
        if bad:
            raise TemporaryFailure(f"delete failed for {len(bad)} object(s): {bad[0].message}")
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns the count."""
        return self.delete_keys(self.list_keys(prefix))

    def presigned_get(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL for `key`, valid `expires_s` seconds; never stored."""
        try:
            return self.client.presigned_get_object(self.bucket, key,
                                                    expires=timedelta(seconds=expires_s))
        except Exception as err:
            raise self._wrap(err, f"presign {key}") from err
