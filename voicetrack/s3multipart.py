"""The object-store adapter's multipart operations (`ObjectStore` inherits them): a
server-side compose of byte ranges (S3 UploadPartCopy), a ranged read guarded by ETag,
and the abort of incomplete multipart uploads. Same rules as `objectstore.py`: every call
goes through `s3_call`, so S3 and network errors come out as the project's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping

from minio import Minio
from minio.commonconfig import ComposeSource
from minio.error import S3Error

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.s3errors import s3_call

log = logging.getLogger(__name__)


class MultipartOps:
    """The multipart operations of one bucket (`client`, `bucket`: set by
    `ObjectStore.__init__`)."""

    client: Minio
    bucket: str

    def compose(self, key: str, parts: list[tuple[str, int, int, str | None]],
                content_type: str = "application/octet-stream") -> str:
        """Write `key` server-side from byte ranges of objects in this bucket, in order:
        `parts` are (source key, offset, length, ETag the source must still have or None),
        each at least 5 MiB but the last (S3's
        multipart minimum; one UploadPartCopy with `x-amz-copy-source-range` each, so the
        bytes never pass through this process). `key` may be one of the sources: the new
        object replaces it only once every part is copied. On failure the upload is
        aborted and `key` left as it was. NotFoundError when a source is gone,
        InvalidInputError for a range outside a source (one rewritten shorter since it
        was planned too), a part too small or a source whose ETag is not the one given
        (PreconditionFailed). Returns the new object's ETag."""
        try:
            with s3_call(f"compose {key}"):
                return (self.client.compose_object(
                    self.bucket, key,
                    [ComposeSource(self.bucket, src, offset=offset, length=length,
                                   match_etag=etag)
                     for src, offset, length, etag in parts],
                    metadata={"Content-Type": content_type}).etag or "").strip('"')
        except ValueError as err:  # minio checks sizes against its stat before any copy
            raise InvalidInputError(f"compose {key}: {err}") from err

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Callable[[Mapping[str, str]], None] | None = None
                   ) -> Generator[bytes, None, None]:
        """The object at `key` from byte `offset` to its end (or `length` bytes of it, fewer
        when it ends first), in blocks of up to `part` bytes as the caller iterates (one
        ranged GET; nothing held beyond a block); with
        `etag`, only while the object still has that ETag (If-Match). `on_headers`, when
        given, is called once with the GET response's headers (case-insensitive keys)
        before the first block. Errors come out translated (`s3_call`; NotFoundError when
        it does not exist, PreconditionFailed when its ETag differs) from the `next()`
        that met them."""
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"If-Match": f'"{etag}"'} if etag else None)
        with s3_call(f"get {key}"):
            resp = self.client.get_object(self.bucket, key, offset=offset,
                                          length=length or 0, request_headers=headers)
            try:
                if on_headers is not None:
                    on_headers(resp.headers)
                yield from resp.stream(part)
            finally:
                resp.close()
                resp.release_conn()

    def abort_uploads(self, prefix: str, rounds: int = 100) -> int:
        """Abort every incomplete multipart upload of a key under `prefix` (a compose or
        `put_file` whose process was killed: its parts hold data no object lists); returns
        how many were aborted. Listed a page (1000) at a time, `rounds` pages at most (an
        aborted upload leaves the listing, so no marker is needed). minio exposes
        ListMultipartUploads and AbortMultipartUpload only as private methods
        (`_list_multipart_uploads`, `_abort_multipart_upload`, minio 7.2): this adapter is
        their one caller. Best effort: any S3 failure (a store answering NotImplemented,
        a policy without s3:ListBucketMultipartUploads or s3:AbortMultipartUpload, S3
        away) is logged as a warning and 0 returned, so deletion goes on; a later call
        (the next withholding tick) tries again."""
        try:
            return self._abort_uploads(prefix, rounds)
        except (InvalidInputError, TemporaryFailure) as err:
            log.warning("incomplete uploads under %s not aborted: %s", prefix, err)
            return 0

    def _abort_uploads(self, prefix: str, rounds: int) -> int:
        aborted = 0
        with s3_call(f"abort uploads {prefix}"):
            for _ in range(rounds):
                page = self.client._list_multipart_uploads(self.bucket, prefix=prefix)
                for upload in page.uploads:
                    if not upload.upload_id:
                        continue
                    try:
                        self.client._abort_multipart_upload(
                            self.bucket, upload.object_name, upload.upload_id)
                    except S3Error as err:  # completed or aborted since it was listed
                        if err.code != "NoSuchUpload":
                            raise
                    aborted += 1
                if not page.uploads or not page.is_truncated:
                    break
        return aborted
