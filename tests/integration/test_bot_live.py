"""The bot's audio-so-far links (`MeetingArchive.live`, `live_links`, `add_live_links`) on a
real SeaweedFS: the live manifest of the guild's meeting only, links that download the
bytes whose size and ETag it names (a live track has no sha256; an older manifest's
sha256 is still read), and an embed that stays within Discord's 25 fields."""

from __future__ import annotations

import hashlib
import urllib.request

import discord
import pytest

from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.resources import StorageSpec
from voicetrack_recorder.bot.archive import LIVE_LINK_S, MeetingArchive
from voicetrack_recorder.bot.embeds import EMBED_FIELDS, EMBED_TOTAL
from voicetrack_recorder.bot.linkembeds import add_live_links

pytestmark = pytest.mark.integration

GUILD, OTHER = "300000000000000011", "300000000000000012"
MEETING = "LiveLiveLiveLiv1"


def save_live(store: ObjectStore, guild: str, speakers: list[str], old: bool = False
              ) -> LiveManifest:
    """Write the audio so far as the live Job does: tracks, then the manifest (each track
    with its size and ETag; `old`: with its sha256 and no ETag, as live Jobs wrote
    before)."""
    layout = MeetingLayout("recordings", guild, MEETING)
    tracks = []
    for user in [*speakers, None]:
        name = user or "mix"
        audio = f"so far {name}".encode()
        key = layout.live_key(name, "mp3")
        store.put_bytes(key, audio, "audio/mpeg")
        etag = store.stat(key)[1]
        tracks.append(LiveTrack(track=name, kind="mixed" if user is None else "speaker",
                                user_id=user, format="mp3", key=key, bytes=len(audio),
                                etag=None if old else etag,
                                sha256=sha256_hex(audio) if old else None,
                                duration_ms=12_000))
    manifest = LiveManifest(tool_version="test", meeting_id=MEETING, duration_ms=12_000,
                             recorded_ms=12_000, paused_ms=0, tracks=tracks,
                             assembly="incremental")
    store.put_json(layout.live_manifest_key, manifest.to_api())
    return manifest


async def test_live_links_download_the_audio_so_far(object_store: ObjectStore) -> None:
    archive = MeetingArchive(object_store.settings, StorageSpec(bucket=object_store.bucket))
    assert await archive.live(GUILD, MEETING) is None  # nothing assembled yet
    saved = save_live(object_store, GUILD, ["400000000000000001", "400000000000000002"])
    assert await archive.live(OTHER, MEETING) is None  # another guild's: absent
    assert await archive.live(GUILD, "../../etc") is None
    live = await archive.live(GUILD, MEETING)
    assert live == saved
    links = await archive.live_links(live)
    assert [t.user_id for t in links] == ["400000000000000001", "400000000000000002", None]
    for link, track in zip(links, sorted(saved.tracks, key=lambda t: t.kind == "mixed"),
                           strict=True):
        assert link.link.expires_in_seconds == LIVE_LINK_S
        assert (link.bytes, link.sha256) == (track.bytes, None)
        with urllib.request.urlopen(link.link.url, timeout=30) as resp:
            data = resp.read()  # a single-part upload's ETag is its MD5
            assert (len(data), hashlib.md5(data).hexdigest()) == (track.bytes, track.etag)

    [embed] = add_live_links(discord.Embed(title="Recording"), live, links,
                             {"400000000000000001": "alice"})
    fields = {f.name: f.value for f in embed.fields}
    assert fields["So far"] is not None and fields["So far"].startswith("12s up to")
    assert "5 min" in fields["So far"]
    assert str(fields["So far: alice"]).startswith("[Listen mp3](http")
    assert "So far: user 400000000000000002" in fields and "So far: Mix" in fields


async def test_a_live_manifest_from_before_etags_is_read(object_store: ObjectStore
                                                         ) -> None:
    """A live manifest as live Jobs wrote it before (each track's sha256, no ETag): read as
    it is, and its links carry the sha256 of the bytes they download."""
    archive = MeetingArchive(object_store.settings, StorageSpec(bucket=object_store.bucket))
    saved = save_live(object_store, GUILD, ["400000000000000003"], old=True)
    live = await archive.live(GUILD, MEETING)
    assert live == saved and all(t.sha256 and t.etag is None for t in live.tracks)
    for link in await archive.live_links(live):
        with urllib.request.urlopen(link.link.url, timeout=30) as resp:
            assert sha256_hex(resp.read()) == link.sha256


async def test_many_speakers_stay_within_discords_fields(object_store: ObjectStore) -> None:
    archive = MeetingArchive(object_store.settings, StorageSpec(bucket=object_store.bucket))
    speakers = [f"4000000000000001{i:02d}" for i in range(30)]
    live = save_live(object_store, GUILD, speakers)
    links = await archive.live_links(live)
    embed = discord.Embed(title="Recording")
    for i in range(10):
        embed.add_field(name=f"f{i}", value="x")
    embeds = add_live_links(embed, live, links, {})
    assert embeds[0] is embed and len(embeds) > 1 and embeds[1].title == "So far (2)"
    assert all(len(e.fields) <= EMBED_FIELDS and len(e) <= EMBED_TOTAL for e in embeds)
    shown = [f.value for e in embeds for f in e.fields if (f.name or "").startswith("So far:")]
    assert len(shown) == 31  # every track: 30 speakers and the mix
