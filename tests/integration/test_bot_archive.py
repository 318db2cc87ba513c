"""The bot's saved-meeting adapter (`MeetingArchive`) on a real SeaweedFS: manifests found
under the guild's prefix only, newest first, a bad manifest skipped, another guild's
meeting "not found" exactly like a missing one, and links that download the bytes the
manifest's sha256 names."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from voicetrack.errors import NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.resources import StorageSpec
from voicetrack_recorder.bot.archive import MeetingArchive

pytestmark = pytest.mark.integration

GUILD, OTHER = "300000000000000001", "300000000000000002"
ALICE = "400000000000000001"


def save(store: ObjectStore, guild: str, meeting: str, audio: bytes,
         formats: tuple[str, ...] = ("mp3",)) -> FinalManifest:
    """Write a promoted meeting as promotion does: a speaker track and the mix in each of
    `formats` (the bytes `audio` + the format's name), then the manifest."""
    layout = MeetingLayout("recordings", guild, meeting)
    tracks = []
    for track, user in ((ALICE, ALICE), ("mix", None)):
        for fmt in formats:
            key = layout.final_key(track, fmt)
            data = audio + fmt.encode()
            store.put_bytes(key, data, "application/octet-stream")
            tracks.append(FinalTrack(track=track, kind="mixed" if user is None else "speaker",
                                     user_id=user, format=fmt, key=key, bytes=len(data),
                                     sha256=sha256_hex(data), duration_ms=6000))
    manifest = FinalManifest(tool_version="test", meeting_id=meeting, duration_ms=6000,
                             recorded_ms=6000, paused_ms=0, tracks=tracks)
    store.put_json(layout.final_manifest_key, manifest.to_api())
    return manifest


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return bytes(resp.read())


async def test_recent_get_and_links(object_store: ObjectStore) -> None:
    archive = MeetingArchive(object_store.settings,
                             StorageSpec(bucket=object_store.bucket))
    save(object_store, GUILD, "aaaaaaaaaaaaaaa1", b"first")
    await asyncio.sleep(1.1)  # S3 last-modified has 1 s resolution
    save(object_store, GUILD, "aaaaaaaaaaaaaaa2", b"second")
    save(object_store, OTHER, "bbbbbbbbbbbbbbb1", b"other guild")
    object_store.put_json(MeetingLayout("recordings", GUILD, "ccccccccccccccc1"
                                        ).final_manifest_key, {"not": "a manifest"})

    recent = await archive.recent(GUILD)
    assert [m.meeting_id for m in recent] == ["aaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaa1"]
    assert recent[0].speakers == [ALICE] and recent[0].saved_at >= recent[1].saved_at
    assert [m.meeting_id for m in await archive.recent(GUILD, limit=1)] == [
        "aaaaaaaaaaaaaaa2"]

    saved = await archive.get(GUILD, "aaaaaaaaaaaaaaa1")
    links = await archive.links(saved, expires_s=60)
    assert [(t.kind, t.user_id) for t in links] == [("speaker", ALICE), ("mixed", None)]
    for t in links:
        assert t.link.expires_in_seconds == 60 and t.link.format == "mp3"
        assert sha256_hex(await asyncio.to_thread(download, t.link.url)) == t.sha256

    messages = []
    for meeting in ("bbbbbbbbbbbbbbb1", "ddddddddddddddd1", "ccccccccccccccc1"):
        with pytest.raises(NotFoundError) as err:
            await archive.get(GUILD, meeting)
        messages.append(str(err.value).replace(meeting, "<id>"))
    with pytest.raises(NotFoundError):
        await archive.get(GUILD, "../../etc/passwd")
    assert len(set(messages)) == 1 and OTHER not in messages[0]


async def test_links_in_the_format_asked(object_store: ObjectStore) -> None:
    """`/record get format:flac` links the flac files; a format the meeting was not saved
    in is "not found" naming the option and the formats it has; no format, mp3."""
    archive = MeetingArchive(object_store.settings,
                             StorageSpec(bucket=object_store.bucket))
    save(object_store, GUILD, "fffffffffffffff1", b"audio.", formats=("flac", "mp3"))
    saved = await archive.get(GUILD, "fffffffffffffff1")

    flac = await archive.links(saved, expires_s=60, fmt="flac")
    assert [(t.kind, t.link.format) for t in flac] == [("speaker", "flac"), ("mixed", "flac")]
    for t in flac:
        assert await asyncio.to_thread(download, t.link.url) == b"audio.flac"
    assert {t.link.format for t in await archive.links(saved)} == {"mp3"}
    with pytest.raises(NotFoundError, match=r"^format: track \d+ has no 'opus'; it has "
                                            r"flac, mp3$"):
        await archive.links(saved, fmt="opus")
