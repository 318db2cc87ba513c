"""`status.live` from the live manifest on real SeaweedFS (`LiveService.read_live`): a live
manifest as live Jobs write it now (tracks with size and ETag, no sha256) and one from
before (each track's sha256) both give `durationMs`; a document that is no live manifest
is a TemporaryFailure (the next tick reads it again)."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.test_live_consent import _session
from tests.unit.test_operator_live import RecordingKube
from voicetrack.errors import TemporaryFailure
from voicetrack.layout import MIX_TRACK
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services.live import LiveJob, LiveService

pytestmark = pytest.mark.integration

DONE = LiveJob(name="standup-live-000003", chunks=3, state=TranscodeStatus.DONE,
               finished=datetime(2026, 12, 2, 21, 0, 9, tzinfo=UTC))


def _manifest(key: str, track: dict[str, Any]) -> dict[str, Any]:
    return {"toolVersion": "test", "meetingId": "LiVeCoNsEnT00001", "durationMs": 29_976,
            "recordedMs": 29_976, "pausedMs": 0, "assembly": "incremental", "gaps": [],
            "concealedFrames": {},
            "tracks": [{"track": MIX_TRACK, "kind": "mixed", "format": "mp3", "key": key,
                        "bytes": 4, "durationMs": 29_976, "channels": 2, **track}]}


async def test_status_live_from_a_live_manifest_with_or_without_sha256(
        s3_server: S3Settings) -> None:
    bucket = f"vt-live-status-{os.getpid()}"
    ObjectStore(dataclasses.replace(s3_server, bucket=bucket)).ensure_bucket()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3_server,
                                pods=PodSettings(), live_interval_s=30)
    ctx = Context(settings=settings, kube=RecordingKube(), db=None)  # type: ignore[arg-type]
    service = LiveService(ctx)
    s = _session(bucket, [], None)
    store = ctx.store(bucket)
    key = s.layout.live_key(MIX_TRACK, "mp3")
    want = {"chunks": 3, "durationMs": 29_976, "updatedAt": "2026-12-02T21:00:09Z"}
    for track in ({"etag": "0123456789abcdef0123456789abcdef-3"},  # as live Jobs write now
                  {"sha256": "ab" * 32}):  # as they wrote before
        await store.put_json(s.layout.live_manifest_key, _manifest(key, track))
        assert await service.read_live(s, DONE) == want, track
    await store.put_json(s.layout.live_manifest_key, {"tracks": "not a manifest"})
    with pytest.raises(TemporaryFailure, match="unreadable"):
        await service.read_live(s, DONE)
