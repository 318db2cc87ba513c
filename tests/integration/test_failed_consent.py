"""Consent and failed chunks on real SeaweedFS (docs/consent.md, "Promotion"): the raw
track of a member opted out at stop is neither kept under `final/failed/` nor listed in
`final/failed-chunks.json`; the others' are, and the folder is collected as before."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from voicetrack.chunkspec import ChunkSpec, ChunkStatus
from voicetrack.manifests import PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services.inventory import ChunkInventory, InventoryChunk, keep_failed
from voicetrack_operator.services.sessionview import SessionView

pytestmark = pytest.mark.integration

ANN, CAT = "111111111111111111", "333333333333333333"
GUILD, MEETING = "123456789012345678", "FaIlEdCoNsEnT001"


def _chunk(store: ObjectStore, s: SessionView, index: int, users: list[str],
           opted: list[dict[str, Any]]) -> ChunkSpec:
    tracks = []
    for user in users:
        key = s.layout.raw_key(index, user, "ogg-opus")
        data = f"raw audio of {user} in chunk {index}".encode()
        store.put_bytes(key, data)
        tracks.append({"userId": user, "key": key, "frames": 5,
                       "firstMs": index * 2000, "lastMs": index * 2000 + 100,
                       "bytes": len(data), "sha256": sha256_hex(data)})
    return ChunkSpec.model_validate({
        "sessionName": "standup", "meetingId": MEETING, "guildId": GUILD, "index": index,
        "startMs": index * 2000, "endMs": index * 2000 + 2000, "tracks": tracks,
        "optedOut": opted})


def _world(s3_server: S3Settings, name: str) -> tuple[ObjectStore, Context, SessionView]:
    """A fresh bucket `vt-<name>-<pid>`, an operator context on it (S3 only) and a
    stopped session whose bucket it is."""
    bucket = f"vt-{name}-{os.getpid()}"
    store = ObjectStore(dataclasses.replace(s3_server, bucket=bucket))
    store.ensure_bucket()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://", s3=s3_server,
                                pods=PodSettings())
    ctx = Context(settings=settings, kube=None, db=None)  # type: ignore[arg-type]
    s = SessionView.parse({
        "metadata": {"name": "standup", "namespace": "team", "uid": f"{name}-uid",
                     "creationTimestamp": "2026-12-02T20:00:00Z"},
        "spec": {"guildId": GUILD, "channelId": "223456789012345678", "meetingId": MEETING,
                 "storage": {"bucket": bucket}},
        "status": {"state": "Stopped"}})
    return store, ctx, s


async def test_failed_raw_of_an_excluded_member_is_not_kept(s3_server: S3Settings) -> None:
    store, ctx, s = _world(s3_server, "failed-consent")
    # CAT spoke in chunk 0 (failed), opted out at 2200 and is still out at the last chunk
    failed = _chunk(store, s, 0, [ANN, CAT], [])
    last = _chunk(store, s, 1, [ANN], [{"userId": CAT, "sinceMs": 2200, "via": "role"}])
    inv = ChunkInventory(chunks={
        0: InventoryChunk(failed, ChunkStatus(transcode_status=TranscodeStatus.FAILED,
                                              error="corrupt")),
        1: InventoryChunk(last, ChunkStatus(transcode_status=TranscodeStatus.DONE))})
    # a run before CAT opted out kept their track: it goes too
    store.put_bytes(s.layout.failed_raw_key(0, CAT, "ogg-opus"), b"kept before")

    assert await keep_failed(ctx, s, inv) == {0}
    kept = store.list_keys(s.layout.final_root)
    assert sorted(kept) == sorted([s.layout.failed_raw_key(0, ANN, "ogg-opus"),
                                   s.layout.failed_manifest_key])
    doc = store.get_json(s.layout.failed_manifest_key)
    assert [e["userId"] for e in doc["failed"]] == [ANN]
    assert all(CAT.encode() not in store.get_bytes(k) for k in kept)
    assert await keep_failed(ctx, s, inv) == {0}  # again: the same
    assert sorted(store.list_keys(s.layout.final_root)) == sorted(kept)


async def test_failed_raw_of_a_member_excluded_by_the_plan_is_not_kept(
        s3_server: S3Settings) -> None:
    """The final tracks were made by the stored plan, which excluded CAT (then in
    `spec.optOutUserIds`); the spec lost CAT before the collection (an edit during
    deletion): CAT's failed raw track is still not kept. Failed before keep_failed
    read the plan."""
    store, ctx, s = _world(s3_server, "failed-plan")
    failed = _chunk(store, s, 0, [ANN, CAT], [])
    last = _chunk(store, s, 1, [ANN, CAT], [])
    inv = ChunkInventory(chunks={
        0: InventoryChunk(failed, ChunkStatus(transcode_status=TranscodeStatus.FAILED,
                                              error="corrupt")),
        1: InventoryChunk(last, ChunkStatus(transcode_status=TranscodeStatus.DONE))})
    plan = PromotionPlan(guild_id=GUILD, meeting_id=MEETING, prefix="", session_end_ms=4000,
                         speakers=[ANN], chunks=[], excluded=[CAT])

    assert await keep_failed(ctx, s, inv) == {0}  # without the plan CAT would be kept
    assert store.exists(s.layout.failed_raw_key(0, CAT, "ogg-opus"))
    assert await keep_failed(ctx, s, inv, plan) == {0}
    assert sorted(store.list_keys(s.layout.final_root)) == sorted(
        [s.layout.failed_raw_key(0, ANN, "ogg-opus"), s.layout.failed_manifest_key])
    doc = store.get_json(s.layout.failed_manifest_key)
    assert [e["userId"] for e in doc["failed"]] == [ANN]


async def test_a_forged_chunk_past_a_hole_does_not_drop_failed_raw_tracks(
        s3_server: S3Settings) -> None:
    """Review note: a trackless `chunk.json` stored by the recorder at index 999999 (rebuilt
    from S3), listing every member in `optedOut`, was the last chunk: ANN's and CAT's
    failed raw tracks were neither kept nor listed, and collection deleted them. It lies
    past a hole in the indexes: it decides nothing, both are kept. Failed before."""
    store, ctx, s = _world(s3_server, "failed-forged")
    failed = _chunk(store, s, 0, [ANN, CAT], [])
    last = _chunk(store, s, 1, [ANN], [])
    everyone = [{"userId": u, "sinceMs": 0, "via": "user"} for u in (ANN, CAT)]
    forged = _chunk(store, s, 2, [], everyone).model_copy(update={"index": 999_999})
    inv = ChunkInventory(chunks={
        0: InventoryChunk(failed, ChunkStatus(transcode_status=TranscodeStatus.FAILED,
                                              error="corrupt")),
        1: InventoryChunk(last, ChunkStatus(transcode_status=TranscodeStatus.DONE)),
        999_999: InventoryChunk(forged, ChunkStatus(transcode_status=TranscodeStatus.DONE),
                                rebuilt=True)})

    assert await keep_failed(ctx, s, inv) == {0}
    assert sorted(store.list_keys(s.layout.final_root)) == sorted(
        [s.layout.failed_raw_key(0, ANN, "ogg-opus"),
         s.layout.failed_raw_key(0, CAT, "ogg-opus"), s.layout.failed_manifest_key])
    doc = store.get_json(s.layout.failed_manifest_key)
    assert [e["userId"] for e in doc["failed"]] == [ANN, CAT]
