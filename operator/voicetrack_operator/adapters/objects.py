"""The operator's S3 adapter: `voicetrack.objectstore.ObjectStore` with every call off the
event loop, so services `await` it and never hop threads themselves.

Errors are the object store's own (already the project's family): NotFoundError for a
missing key, InvalidInputError for a body that is not JSON, TemporaryFailure for an S3
outage. Keys are full object keys within the bucket (see `voicetrack.layout`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from voicetrack.objectstore import JSON_MAX_BYTES, ObjectStore

LIST_PAGE = 1000
"""Keys per page of `AsyncObjectStore.object_pages` (S3's own page size)."""


class AsyncObjectStore:
    """One bucket, asynchronously. Each method runs the matching `ObjectStore` method in a
    worker thread and returns its result unchanged."""

    def __init__(self, store: ObjectStore) -> None:
        self.sync = store
        self.bucket = store.bucket

    async def ensure_bucket(self) -> None:
        """Create the bucket when missing (idempotent)."""
        await asyncio.to_thread(self.sync.ensure_bucket)

    async def put_json(self, key: str, doc: Any) -> str:
        """Write `doc` as JSON at `key`; returns its sha256 (hex)."""
        return await asyncio.to_thread(self.sync.put_json, key, doc)

    async def get_json(self, key: str, limit: int = JSON_MAX_BYTES) -> Any:
        """The JSON document at `key`, at most `limit` bytes (`ObjectStore.get_json`).
        Raises NotFoundError, InvalidInputError (larger, or not JSON)."""
        return await asyncio.to_thread(self.sync.get_json, key, limit)

    async def digest(self, key: str) -> tuple[int, str]:
        """(size in bytes, sha256 hex) of the object at `key`, streamed."""
        return await asyncio.to_thread(self.sync.digest, key)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.sync.exists, key)

    async def size(self, key: str) -> int:
        """The object's size in bytes (`ObjectStore.size`). Raises NotFoundError."""
        return await asyncio.to_thread(self.sync.size, key)

    async def copy(self, src: str, dst: str) -> None:
        """Server-side copy within the bucket. Raises NotFoundError when `src` is missing."""
        await asyncio.to_thread(self.sync.copy, src, dst)

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self.sync.list_keys, prefix)

    async def list_objects(self, prefix: str) -> list[tuple[str, datetime]]:
        """(key, last modified, UTC) of every object under `prefix`."""
        return await asyncio.to_thread(self.sync.list_objects, prefix)

    async def object_pages(self, prefix: str, size: int = LIST_PAGE
                           ) -> AsyncGenerator[list[tuple[str, datetime]], None]:
        """(key, last modified, UTC) of every object under `prefix` in key order, `size` at a
        time (`ObjectStore.iter_objects`): each page is fetched in a worker thread when the
        caller asks for it, so a bucket of millions of keys is never held in memory."""
        listing = self.sync.iter_objects(prefix)
        # one thread for this listing: its close is queued behind a fetch still running
        # when the caller is cancelled (closing a generator another thread is iterating
        # raises ValueError, which replaced the cancellation: the sweep loop then slept on)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-list")
        loop = asyncio.get_running_loop()
        try:
            while page := await loop.run_in_executor(
                    thread, lambda: list(itertools.islice(listing, size))):
                yield page
        finally:
            closing = loop.run_in_executor(thread, listing.close)
            thread.shutdown(wait=False)
            await asyncio.shield(closing)

    async def delete_keys(self, keys: list[str]) -> int:
        """Delete `keys` (missing ones count as deleted); returns how many were asked."""
        return await asyncio.to_thread(self.sync.delete_keys, keys)

    async def delete_prefix(self, prefix: str, abort: bool = True) -> int:
        """Delete every object under `prefix`, and first abort the incomplete multipart
        uploads under it unless `abort` is False (`ObjectStore.delete_prefix`); returns
        the count of objects deleted."""
        return await asyncio.to_thread(self.sync.delete_prefix, prefix, abort)

    async def abort_uploads(self, prefix: str) -> int:
        """Abort every incomplete multipart upload under `prefix`
        (`ObjectStore.abort_uploads`); returns how many."""
        return await asyncio.to_thread(self.sync.abort_uploads, prefix)
