"""`AsyncObjectStore.object_pages` cancelled while a page is being fetched in a worker
thread (the orphan sweep stopped by the operator's cleanup): the cancellation must come out
of it as CancelledError. Before, its `finally` closed the listing generator while the
thread was still iterating it (`ValueError: generator already executing`), the ValueError
replaced the cancellation, and the housekeeping loop (which logs exceptions and sleeps an
hour) went on sleeping: the operator's cleanup waited for it for an hour (found by
`test_operator_services.py::test_startup_builds_the_context_and_cleanup_closes_it` hanging
after a sweep with objects to page through)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from voicetrack_operator.adapters.objects import AsyncObjectStore

pytestmark = pytest.mark.unit


class SlowListing:
    """Stands in for `ObjectStore.iter_objects`: each key takes `delay_s` to list (S3's
    page fetch); records whether the generator was closed and whether it ran alone."""

    bucket = "b"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.closed = threading.Event()
        self.started = threading.Event()

    def iter_objects(self, prefix: str) -> Generator[tuple[str, datetime], None, None]:
        try:
            for i in range(10_000):
                self.started.set()
                time.sleep(self.delay_s)
                yield f"{prefix}{i:06d}", datetime.now(UTC)
        finally:
            self.closed.set()


async def test_a_sweep_cancelled_mid_page_is_cancelled_and_its_listing_closed() -> None:
    sync = SlowListing(0.001)
    store = AsyncObjectStore(cast(Any, sync))

    async def sweep() -> int:
        seen = 0
        async with contextlib.aclosing(store.object_pages("k/", size=500)) as pages:
            async for page in pages:
                seen += len(page)
        return seen

    task = asyncio.create_task(sweep())
    await asyncio.to_thread(sync.started.wait, 5)
    await asyncio.sleep(0.05)  # inside the first page's fetch (500 keys: ~0.5 s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert await asyncio.to_thread(sync.closed.wait, 5)


async def test_pages_come_in_order_and_all_of_them() -> None:
    store = AsyncObjectStore(cast(Any, SlowListing(0.0)))
    keys = [k async for page in store.object_pages("k/", size=3000) for k, _ in page]
    assert len(keys) == 10_000 and keys == sorted(keys)
