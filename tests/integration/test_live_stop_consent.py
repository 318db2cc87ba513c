"""At stop, `live/` goes at once when a member opted out at stop has audio in it (review
finding): it used to stay until the collection, after promotion (minutes for a long
meeting), still serving their voice. Otherwise it stays until then, as before."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from tests.integration.test_live_consent import _session
from tests.unit.test_live_consent import ANN, BOB, chunk_obj
from voicetrack.layout import MIX_TRACK
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services.live import LiveService

pytestmark = pytest.mark.integration


class ChunksKube:
    """The adapter calls `LiveService.stop` makes: no live Job, these chunks."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks

    async def list_jobs(self, ns: str, session: str, uid: str | None = None
                        ) -> list[dict[str, Any]]:
        return []

    async def list_chunks(self, ns: str, session: str, uid: str | None = None
                          ) -> list[dict[str, Any]]:
        return self.chunks


@pytest.mark.parametrize(("opted_out", "kept"), [([BOB], False), ([], True)])
async def test_stop_removes_live_files_holding_a_member_opted_out_at_stop(
        s3_server: S3Settings, opted_out: list[str], kept: bool) -> None:
    bucket = f"vt-live-stop-{os.getpid()}-{len(opted_out)}"
    ObjectStore(dataclasses.replace(s3_server, bucket=bucket)).ensure_bucket()
    kube = ChunksKube([chunk_obj(0, (ANN, BOB)), chunk_obj(1, (ANN,))])
    settings = OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3_server,
                                pods=PodSettings(), live_interval_s=30)
    ctx = Context(settings=settings, kube=kube, db=None)  # type: ignore[arg-type]
    s = _session(bucket, opted_out, {"chunks": 2, "durationMs": 3976,
                                     "updatedAt": "2026-12-02T20:58:00Z"})
    store = ctx.store(bucket)
    for track in (ANN, BOB, MIX_TRACK):
        await store.put_json(s.layout.live_key(track, "mp3"), {"audio": track})
    assert await LiveService(ctx).stop(s) == 0
    assert bool(await store.list_keys(s.layout.live_root)) is kept
