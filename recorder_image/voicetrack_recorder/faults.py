"""How the recorder meets failure: retry what may pass, stop with a reason on what cannot.

* `retry_async` retries TemporaryFailure with capped exponential backoff and no count
  limit, until it succeeds or `stop` is set (start-up: the API server or S3 is away).
* `permanent_cause` tells a storage failure that retrying cannot fix (a bad bucket name,
  refused credentials, AccessDenied, NoSuchBucket) from an outage, whatever the object
  store's own mapping made of it.
* `index_ranges` writes acknowledged chunk indices compactly (`0-11,13`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from minio.error import S3Error

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.termination import EXIT_BAD_INPUT, EXIT_FAILURE

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
"""Backoff of every recorder retry: 0.5 s doubling to at most 10 s."""

PERMANENT_S3_CODES = frozenset({
    "AccessDenied", "NoSuchBucket", "InvalidBucketName", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem"})
"""S3 error codes no retry can fix: the bucket or the credentials are wrong."""

EXIT_OK = 0
EXIT_FAILED = EXIT_FAILURE
EXIT_INVALID_INPUT = EXIT_BAD_INPUT
"""Exit codes (`voicetrack.termination`): 0 clean stop, 1 anything else (the pod
restarts), 2 bad input (a bad token, bucket, credentials or channel permission: the
operator sets the session Failed)."""


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
