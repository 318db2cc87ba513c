"""How the recorder meets failure: retry what may pass, stop with a reason on what cannot.

* `retry_async` retries TemporaryFailure with capped exponential backoff and no count
  limit, until it succeeds or `stop` is set (start-up: the API server or S3 is away).
* `permanent_cause` tells a storage failure that retrying cannot fix (a bad bucket name,
  refused credentials, AccessDenied, NoSuchBucket) from an outage, whatever the object
  store's own mapping made of it.
* `write_termination_message` writes the one line the kubelet shows as the container's
  `terminated.message` (the operator reads it to set the session Failed with a reason).
* `index_ranges` writes acknowledged chunk indices compactly (`0-11,13`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from minio.error import S3Error

from voicetrack.errors import InvalidInputError, TemporaryFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
"""Backoff of every recorder retry: 0.5 s doubling to at most 10 s."""

PERMANENT_S3_CODES = frozenset({
    "AccessDenied", "NoSuchBucket", "InvalidBucketName", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem"})
"""S3 error codes no retry can fix: the bucket or the credentials are wrong."""

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "VOICETRACK_TERMINATION_LOG"
MESSAGE_MAX_BYTES = 4096
"""The kubelet keeps at most 4096 bytes of a termination message."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
"""Exit codes: 0 clean stop, 1 anything else (the pod restarts), 2 bad input (a bad token,
bucket, credentials or channel permission: the operator sets the session Failed)."""


def next_delay(delay: float) -> float:
    """The backoff delay (s) after `delay`: doubled, capped at MAX_DELAY_S."""
    return min(delay * 2, MAX_DELAY_S)


def permanent_cause(err: BaseException) -> InvalidInputError | None:
    """An InvalidInputError when `err` (or an error in its `__cause__` chain) is a failure
    retrying cannot fix: an S3Error with a code of PERMANENT_S3_CODES, or minio's own
    ValueError for a bad bucket name. None for an outage (network, 5xx, timeouts)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, InvalidInputError):
            return seen
        if isinstance(seen, S3Error) and seen.code in PERMANENT_S3_CODES:
            return InvalidInputError(f"storage: {seen.code}: {seen.message}")
        if isinstance(seen, ValueError) and "bucket name" in str(seen).lower():
            return InvalidInputError(f"storage.bucket: {seen}")
        seen = seen.__cause__
    return None


def raise_if_permanent(err: TemporaryFailure) -> None:
    """Raise the InvalidInputError `permanent_cause` finds in `err`, from `err`."""
    permanent = permanent_cause(err)
    if permanent is not None:
        raise permanent from err


async def retry_async(call: Callable[[], Awaitable[T]], what: str,
                      stop: asyncio.Event | None = None) -> T:
    """`await call()` until it returns, retrying TemporaryFailure (and nothing else) after
    0.5, 1, 2 … 10 s, without a count limit. Raises the last TemporaryFailure when `stop`
    is set before a retry, InvalidInputError when the failure is permanent
    (`permanent_cause`), and whatever else `call` raises."""
    delay = FIRST_DELAY_S
    while True:
        try:
            return await call()
        except TemporaryFailure as err:
            raise_if_permanent(err)
            log.warning("%s: %s; retrying in %.1fs", what, err, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    raise
                except TimeoutError:
                    pass
            delay = next_delay(delay)


def index_ranges(indices: Iterable[int]) -> str:
    """Sorted chunk indices as ranges: [0, 1, 2, 5, 7, 8] → `0-2,5,7-8`; `-` when empty."""
    ordered = sorted(set(indices))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def termination_log_path() -> str:
    """Where the termination message goes: $VOICETRACK_TERMINATION_LOG when set, else the
    kubelet's default `/dev/termination-log`."""
    return os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG


def write_termination_message(message: str) -> str | None:
    """Write `message` (one line, cut to 4096 bytes) to `termination_log_path()`; when that
    path cannot be written (not in a container, read-only), to
    `$TMPDIR/termination-log` instead. Returns the path written, None if neither could be
    (logged, never raised: the exit code still tells)."""
    line = " ".join(message.split()).encode()[:MESSAGE_MAX_BYTES]
    fallback = os.path.join(tempfile.gettempdir(), "termination-log")
    for path in (termination_log_path(), fallback):
        try:
            with open(path, "wb") as f:
                f.write(line)
            return path
        except OSError as err:
            log.warning("termination message: cannot write %s: %s", path, err)
    return None
