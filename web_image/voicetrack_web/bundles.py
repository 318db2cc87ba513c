"""How many zip bundles the process holds at once, and who holds them.

A bundle takes disk (the pod's `/tmp`, a size-limited emptyDir) from the moment its
build starts until its response has been sent or abandoned, so a slot covers all of that:
`BundleSlots.take` at the request, `BundleSlot.release` once the zip is deleted. At most
`limit` slots are held, at most one per user; a request that finds none free is answered
429 with `Retry-After: RETRY_AFTER_S` (there is no queue, so nothing waits on disk or in
memory). `BundleResponse` streams the zip and deletes it (releasing the slot) when the
response ends: sent, the client gone, or `SEND_LIMIT_S` passed (a client that stops
reading cannot keep a slot forever). A build that fails or is cancelled (its client
left) keeps its slot until it has stopped (`release_when_stopped`): leaving and asking
again cannot run more builds than slots. A request that took a slot and never started its
build (its directory could not be made: `/tmp` full or gone) frees it at once: every path
after `take` ends in exactly one `release_when_stopped` or `BundleResponse`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import anyio
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

RETRY_AFTER_S = 30
"""The `Retry-After` (s) of a bundle request refused for want of a slot."""
SEND_LIMIT_S = 1800.0
"""Longest time (s) a bundle's response may take to send (a 2 GB zip at ~1.1 MB/s)."""
log = logging.getLogger("voicetrack_web")


class BundleSlot:
    """One held slot: `user_id`'s; `release()` frees it (again: no effect)."""

    def __init__(self, owner: BundleSlots, user_id: str) -> None:
        self._owner = owner
        self.user_id = user_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._holders.remove(self.user_id)


class BundleSlots:
    """At most `limit` (>= 1) bundles at once in the process, one per user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._holders: list[str] = []

    @property
    def held(self) -> int:
        """Slots held now."""
        return len(self._holders)

    def take(self, user_id: str) -> BundleSlot | None:
        """A slot for `user_id`; None when they hold one already or all `limit` are held
        (the caller answers 429)."""
        if user_id in self._holders or len(self._holders) >= self.limit:
            return None
        self._holders.append(user_id)
        return BundleSlot(self, user_id)


class BundleResponse(FileResponse):
    """The zip at `path` as an attachment; when the response ends however it ends (sent,
    client gone, SEND_LIMIT_S passed) `work` (the zip's directory) is deleted and `slot`
    released."""

    def __init__(self, path: Path, work: Path, slot: BundleSlot, filename: str) -> None:
        super().__init__(path, media_type="application/zip", filename=filename,
                         headers={"Cache-Control": "no-store"})
        self.work = work
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.fail_after(SEND_LIMIT_S):
                await super().__call__(scope, receive, send)
        except TimeoutError:
            log.warning("zip bundle %s not sent within %.0f s: dropped", self.filename,
                        SEND_LIMIT_S)
        finally:
            release_bundle(self.work, self.slot)


def release_bundle(work: Path | None, slot: BundleSlot) -> None:
    """Delete the bundle's directory `work` (None: none was made), then free its slot."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    slot.release()


def release_when_stopped(build: asyncio.Future[Any] | None, work: Path | None,
                         slot: BundleSlot) -> None:
    """`release_bundle(work, slot)` once `build` is over: now when it is (or was never
    started: None), else when it ends (however: the slot stays held while the build still
    runs, even when whoever awaited it was cancelled meanwhile). `build`'s error is taken
    as seen: the caller answered it, or nobody is left to."""

    def over(done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()
        release_bundle(work, slot)

    if build is None:
        release_bundle(work, slot)
    elif build.done():
        over(build)
    else:
        build.add_done_callback(over)
