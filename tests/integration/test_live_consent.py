"""Consent and the audio so far on real SeaweedFS (docs/consent.md, "Promotion"): while a
member opted out now has audio in a chunk, the operator empties `live/` on every tick and
removes `status.live`; once they opt back in, live assembly starts again from chunk 0."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from tests.unit.test_live_consent import ANN, BOB, chunk_obj
from tests.unit.test_operator_live import RecordingKube
from voicetrack.layout import MIX_TRACK
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services.live import LiveService
from voicetrack_operator.services.sessionview import SessionView

pytestmark = pytest.mark.integration


def _session(bucket: str, opt_out_users: list[str], live: dict[str, Any] | None
             ) -> SessionView:
    status: dict[str, Any] = {"state": "Recording"}
    if live is not None:
        status["live"] = live
    return SessionView.parse({
        "metadata": {"name": "standup", "namespace": "team", "uid": "0b6c-uid",
                     "creationTimestamp": "2026-12-02T20:00:00Z"},
        "spec": {"guildId": "123456789012345678", "channelId": "223456789012345678",
                 "meetingId": "LiVeCoNsEnT00001", "storage": {"bucket": bucket},
                 "optOutUserIds": opt_out_users},
        "status": status})


async def test_live_files_are_removed_while_withheld(s3_server: S3Settings) -> None:
    bucket = f"vt-live-consent-{os.getpid()}"
    ObjectStore(dataclasses.replace(s3_server, bucket=bucket)).ensure_bucket()
    kube = RecordingKube()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3_server,
                                pods=PodSettings(), live_interval_s=30)
    ctx = Context(settings=settings, kube=kube, db=None)  # type: ignore[arg-type]
    service = LiveService(ctx)
    s = _session(bucket, [BOB], {"chunks": 2, "durationMs": 3976,
                                 "updatedAt": "2026-12-02T20:58:00Z"})
    store = ctx.store(bucket)
    for track in (ANN, BOB, MIX_TRACK):
        await store.put_json(s.layout.live_key(track, "mp3"), {"audio": track})
    await store.put_json(s.layout.live_manifest_key, {})
    chunks = [chunk_obj(0, (ANN, BOB)), chunk_obj(1, (ANN,))]

    assert await service.observe(s, chunks, []) == {"live": None}
    assert await store.list_keys(s.layout.live_root) == []
    assert kube.calls == []  # no Job launched
    # a Job deleted meanwhile uploads late: the next tick empties live/ again
    await store.put_json(s.layout.live_key(BOB, "mp3"), {"audio": BOB})
    assert await service.observe(_session(bucket, [BOB], None), chunks, []) == {}
    assert await store.list_keys(s.layout.live_root) == []
    assert kube.calls == []
    # back in: the audio so far is assembled again from chunk 0
    await service.observe(_session(bucket, [], None), chunks, [])
    assert kube.calls == [("ensure", "standup-live-000002")]


async def test_a_killed_jobs_incomplete_upload_is_aborted_while_withheld(
        s3_server: S3Settings) -> None:
    """A live Job killed mid-compose (SIGKILL after the grace: no code runs) leaves an
    incomplete multipart upload of `live/<track>.mp3` whose part holds audio and that no
    object listing shows: withholding aborts it with `live/` (before, it stayed)."""
    bucket = f"vt-live-upload-{os.getpid()}"
    sync = ObjectStore(dataclasses.replace(s3_server, bucket=bucket))
    sync.ensure_bucket()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3_server,
                                pods=PodSettings(), live_interval_s=30)
    ctx = Context(settings=settings, kube=RecordingKube(), db=None)  # type: ignore[arg-type]
    s = _session(bucket, [BOB], None)
    key = s.layout.live_key(BOB, "mp3")
    upload = sync.client._create_multipart_upload(bucket, key, {})
    sync.client._upload_part(bucket, key, os.urandom(64 * 1024), None, upload, 1)
    other = sync.client._create_multipart_upload(bucket, "elsewhere/kept.mp3", {})

    def uploads() -> list[str]:
        return sorted(u.object_name or "" for u in
                      sync.client._list_multipart_uploads(bucket).uploads)

    assert uploads() == ["elsewhere/kept.mp3", key]
    await LiveService(ctx).observe(s, [chunk_obj(0, (ANN, BOB))], [])
    assert uploads() == ["elsewhere/kept.mp3"]
    sync.client._abort_multipart_upload(bucket, "elsewhere/kept.mp3", other)
