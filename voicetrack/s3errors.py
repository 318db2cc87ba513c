"""S3 and network errors become the project's own, in one place, for every call the
object-store adapter (`voicetrack.objectstore`) makes:

- S3Error NoSuchKey / NoSuchObject / NoSuchBucket → NotFoundError;
- S3Error AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch (and other credential
  codes) → ServiceUnavailable (a TemporaryFailure) whose message names the credential
  settings (an admin fixes them; the caller retries meanwhile);
- S3Error with a 5xx status, SlowDown, InternalError, ServiceUnavailable, RequestTimeout,
  RequestTimeTooSkewed → ServiceUnavailable;
- S3Error PreconditionFailed (HTTP 412: an If-Match or copy-source ETag refused) →
  PreconditionFailed (an InvalidInputError: the object changed, retrying the same
  request cannot help);
- any other S3Error (InvalidBucketName, EntityTooLarge, …) → InvalidInputError;
- minio ServerError / InvalidResponseError, urllib3 HTTPError (connection refused, timeouts,
  retries exhausted), ConnectionError, TimeoutError and DNS failures → ServiceUnavailable.

Anything else (a TypeError from a wrong argument, a missing local file in `put_file`)
propagates unchanged: it is a bug or bad local input, and retrying it would loop forever.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from voicetrack.errors import (
    InvalidInputError,
    NotFoundError,
    PreconditionFailed,
    ServiceUnavailable,
)

S3_RETRY_DELAY_S = 10.0
"""Suggested wait (s) before retrying after an S3 outage (`TemporaryFailure.delay`)."""

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})
_CREDENTIAL_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "InvalidSecurity",
})
_TEMPORARY_CODES = frozenset({
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeTooSkewed", "OperationAborted",
})
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.gaierror,
    ServerError, InvalidResponseError,
)
_S3_ERRORS: tuple[type[BaseException], ...] = (S3Error, *_NETWORK_ERRORS)


def translate_s3_error(err: BaseException, what: str) -> Exception | None:
    """The Voicetrack error for an S3 or network error met while doing `what` (e.g.
    `get <key>`), or None when `err` is neither (a bug: the caller re-raises it as is)."""
    if isinstance(err, S3Error):
        code = err.code or ""
        status = err.response.status if err.response is not None else 0
        if code in _NOT_FOUND_CODES:
            return NotFoundError(f"{what}: {code}")
        if code in _CREDENTIAL_CODES:
            return ServiceUnavailable(
                f"{what}: {code}: the S3 server refused our credentials or their rights; "
                "check VOICETRACK_S3_ACCESS_KEY / VOICETRACK_S3_SECRET_KEY (or the AWS "
                f"credentials they leave to the chain) and the bucket policy ({err.message})",
                delay=S3_RETRY_DELAY_S)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(f"{what}: PreconditionFailed: {err.message}")
        if code in _TEMPORARY_CODES or status >= 500:
            return ServiceUnavailable(f"{what}: {code or status}: {err.message}",
                                    delay=S3_RETRY_DELAY_S)
        return InvalidInputError(f"{what}: {code or status}: {err.message}")
    if isinstance(err, ServerError | InvalidResponseError):
        return ServiceUnavailable(f"{what}: S3 server error: {err}", delay=S3_RETRY_DELAY_S)
    if isinstance(err, _NETWORK_ERRORS):
        return ServiceUnavailable(f"{what}: S3 endpoint unreachable: {err}",
                                delay=S3_RETRY_DELAY_S)
    return None


@contextmanager
def s3_call(what: str) -> Iterator[None]:
    """Run one S3 call; S3 and network errors come out translated (`translate_s3_error`), chained
    to the original; every other exception passes through unchanged."""
    try:
        yield
    except _S3_ERRORS as err:
        translated = translate_s3_error(err, what)
        if translated is None:  # pragma: no cover - _S3_ERRORS are all translated
            raise
        raise translated from err
