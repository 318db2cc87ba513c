"""`voicetrack recordings url --live`, `download --live` and `show` for a live meeting, on
real SeaweedFS and the
database on PostgreSQL and SQLite: the audio so far is assembled by the transcoder's real
`assemble_live` from real chunk transcodes, the meeting rows written as the operator does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker, upload_chunks
from voicetrack.db.migrate import upgrade_head
from voicetrack.db.service import RecordingService
from voicetrack.errors import PreconditionFailed, TemporaryFailure
from voicetrack.lametag import LameCheck
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.recordings.live import LiveFile, download_live, fetch_live_track
from voicetrack.recordings.models import ChecksumMismatch
from voicetrack.recordings.service import RecordingsReader
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.live import assemble_live

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GUILD, CHANNEL = "520000000000000001", "520000000000000002"
A, B = "530000000000000011", "530000000000000012"
LIVE, EMPTY, NOTHING_YET, ENDED = ("L1veL1veL1veL1ve", "EmptyEmptyEmpty0", "NotYetNotYetNot0",
                                   "EndedEndedEnded0")
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def live_bucket(s3_server: S3Settings) -> tuple[ObjectStore, MeetingLayout, LiveManifest]:
    """Three chunks of two speakers transcoded with pieces; the audio so far of two."""
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-reclive-{os.getpid()}"))
    store.ensure_bucket()
    layout = MeetingLayout("recordings", GUILD, LIVE)
    speakers = [Speaker(A, 180, talks=[(200, 2500)], markers=[4000]),
                Speaker(B, 260, talks=[(2600, 5000)], markers=[1000])]
    session = upload_chunks(store, layout, speakers, [(0, 2000), (2000, 4000), (4000, 6000)],
                            6000, [])
    for chunk in session.chunks:
        store.put_json(layout.chunk_manifest_key(chunk.index), chunk.to_api())
        transcode_chunk(store, chunk, layout.prefix, ["mp3"], 128, tracks="both")
    manifest = assemble_live(store, layout, chunks=2)
    assert manifest is not None
    return store, layout, manifest


@dataclasses.dataclass
class World:
    db_url: str
    store: ObjectStore
    layout: MeetingLayout
    manifest: LiveManifest

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.store.settings.env(), "VOICETRACK_DATABASE_URL": self.db_url}
        env.pop("COLUMNS", None)
        proc = subprocess.run([str(BIN / "voicetrack"), "recordings", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc


async def _record(svc: RecordingService, layout: MeetingLayout) -> None:
    """The operator's writes: a live meeting with chunk rows (their raw keys), a live one
    without any chunk, a live one whose chunks are not assembled yet, an ended one."""
    await svc.create_meeting(LIVE, GUILD, CHANNEL, T0, "uid-live", namespace="team",
                             session_name="retro")
    for index in range(3):
        for user in (A, B):
            await svc.upsert_chunk_status("uid-live", index, user, LIVE, GUILD,
                                          layout.raw_key(index, user, "ogg-opus"),
                                          "ogg-opus", "queued")
    await svc.create_meeting(EMPTY, GUILD, CHANNEL, T0, "uid-empty")
    await svc.create_meeting(NOTHING_YET, GUILD, CHANNEL, T0, "uid-yet")
    yet = MeetingLayout("recordings", GUILD, NOTHING_YET)
    await svc.upsert_chunk_status("uid-yet", 0, A, NOTHING_YET, GUILD,
                                  yet.raw_key(0, A, "ogg-opus"), "ogg-opus", "queued")
    await svc.create_meeting(ENDED, GUILD, CHANNEL, T0, "uid-ended")
    await svc.end_meeting(ENDED, T0, "cancelled")


@pytest.fixture
def world(db_url: str, live_bucket: tuple[ObjectStore, MeetingLayout, LiveManifest]
          ) -> World:
    upgrade_head(db_url)
    store, layout, manifest = live_bucket

    async def go() -> Any:
        svc = RecordingService.from_url(db_url)
        try:
            await _record(svc, layout)
        finally:
            await svc.close()

    asyncio.run(go())
    return World(db_url, store, layout, manifest)


def test_url_live_links_download_the_live_tracks(world: World) -> None:
    links = json.loads(world.cli("url", LIVE, "--live", "--expires", "2m").stdout)
    assert set(links) == {A, B, "mix"}
    for t in world.manifest.tracks:
        link = links[t.track]
        assert (link["expires_in_seconds"], link["format"]) == (120, "mp3")
        with urllib.request.urlopen(link["url"], timeout=30) as res:
            data = res.read()
        # a live track has no sha256: its size and the ETag of the object written
        assert (len(data), world.store.stat(t.key)[1]) == (t.bytes, t.etag)
    one = json.loads(world.cli("url", "team/retro", "mix", "--live").stdout)
    assert set(one) == {"url", "expires_in_seconds", "format"}


def test_url_live_errors_name_the_reason(world: World) -> None:
    cases = {
        (ENDED,): "is not live (status cancelled)",
        (EMPTY,): "no chunk has been recorded",
        (NOTHING_YET,): "no chunk has been assembled",
        (LIVE, "999999999999999999"): "TRACK",
    }
    for args, reason in cases.items():
        res = world.cli("url", *args, "--live", ok=False)
        said = " ".join(res.stderr.split())  # the console folds long lines
        assert res.returncode == 1 and reason in said, (args, res.stderr)
        assert "Traceback" not in res.stderr
    flac = world.cli("url", LIVE, "--live", "--format", "flac", ok=False)
    assert flac.returncode == 2 and "MP3 only" in " ".join(flac.stderr.split())


def test_show_lists_the_live_tracks_with_their_duration_so_far(world: World) -> None:
    doc = json.loads(world.cli("show", LIVE, "--json").stdout)
    assert doc["live"]["duration_ms"] == world.manifest.duration_ms
    assert {t["track"]: t["duration_ms"] for t in doc["live"]["tracks"]} == {
        t.track: world.manifest.duration_ms for t in world.manifest.tracks}
    text = world.cli("show", LIVE).stdout
    assert "LIVE TRACK" in text and f"{world.manifest.duration_ms} ms" in text
    for t in world.manifest.tracks:  # each ETag (a live track has no sha256)
        assert t.etag and t.etag in text and t.sha256 is None
    assert {t["track"]: (t["etag"], t["sha256"]) for t in doc["live"]["tracks"]} == {
        t.track: (t.etag, None) for t in world.manifest.tracks}
    yet = json.loads(world.cli("show", NOTHING_YET, "--json").stdout)
    assert "no chunk has been assembled" in yet["live"]["error"]
    assert "live" not in json.loads(world.cli("show", ENDED, "--json").stdout)


def test_download_live_saves_each_track_verified_by_size_and_etag(world: World,
                                                                   tmp_path: Path) -> None:
    """`download --live`: one `<meeting>-live-<track>.mp3` per live track, each the live
    object's bytes and said verified by size and ETag (never a sha256 mismatch: a live
    track has none). A replaced track: `test_download_live_waits_for_the_manifest_…`."""
    res = world.cli("download", LIVE, str(tmp_path / "a"), "--live")
    for t in world.manifest.tracks:
        saved = tmp_path / "a" / f"{LIVE}-live-{t.track}.mp3"
        assert saved.read_bytes() == world.store.get_bytes(t.key)
        assert f"{saved}  live, verified by size and ETag {t.etag}, MD5" in res.stdout
    assert "sha256" not in res.stdout + res.stderr
    plain = world.cli("download", LIVE, str(tmp_path / "b"), ok=False)
    assert plain.returncode == 1 and "no final tracks" in " ".join(plain.stderr.split())


def test_a_real_live_track_passes_its_lame_check_and_a_flipped_bit_fails(
        world: World, tmp_path: Path) -> None:
    """The tracks the transcoder's live assembly writes carry a LAME Info tag whose CRCs
    `download --live` checks when the ETag is not the MD5 (multipart, SSE-KMS): each
    passes (here fetched with no ETag, so by the tag alone); a bit flipped in the audio or
    the Info frame fails, naming which."""
    for t in world.manifest.tracks:
        data = world.store.get_bytes(t.key)
        got = fetch_live_track(world.store, t.model_copy(update={"etag": None}),
                               tmp_path / f"{t.track}.mp3")
        assert isinstance(got, LiveFile), (t.track, got)
        assert got.check == "size, LAME music and tag CRCs"
        for at, why in ((len(data) - 1, "audio is damaged"), (len(data) // 2, "audio is damaged"),
                        (24, "Info frame is damaged"), (100, "Info frame is damaged")):
            check = LameCheck()
            check.update(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
            assert why in (check.verdict() or ""), (t.track, at, check.verdict())


async def _download(world: World, dest: Path, **kw: float) -> list[LiveFile]:
    svc = RecordingService.from_url(world.db_url)
    try:
        return (await download_live(RecordingsReader(svc, world.store), LIVE, dest,
                                    **kw))[1]
    finally:
        await svc.close()


def _replace_mix(world: World) -> tuple[LiveTrack, bytes, dict[str, Any]]:
    """Rewrite the mix object as a newer live Job does (its manifest not yet): the mix's
    old entry, its old bytes, and the manifest naming the new object."""
    mix = next(t for t in world.manifest.tracks if t.track == "mix")
    data = world.store.get_bytes(mix.key)
    world.store.put_bytes(mix.key, data + b"x", "audio/mpeg")
    newer = world.manifest.to_api()
    for t in newer["tracks"]:
        if t["track"] == "mix":
            t["bytes"], t["etag"] = len(data) + 1, world.store.stat(mix.key)[1]
    return mix, data, newer


def _restore(world: World, mix: LiveTrack, data: bytes) -> None:
    """The fixture's objects again (the same bytes: the same MD5 ETag)."""
    world.store.put_bytes(mix.key, data, "audio/mpeg")
    world.store.put_json(world.layout.live_manifest_key, world.manifest.to_api())
    assert world.store.stat(mix.key)[1] == mix.etag


def test_download_live_waits_for_the_manifest_of_a_replaced_track(world: World,
                                                                  tmp_path: Path) -> None:
    """A live Job writes its objects, then the manifest: until it lands, the manifest read
    again names the replaced object. `download_live` polls the manifest until it names
    the new one and fetches that. Before, it fetched 3 times back to back, each refused,
    and failed within milliseconds."""
    mix, data, newer = _replace_mix(world)
    timer = threading.Timer(3.0, world.store.put_json,
                            (world.layout.live_manifest_key, newer))
    started = time.monotonic()
    timer.start()
    try:
        files = asyncio.run(_download(world, tmp_path / "d", poll_s=0.5, replaced_wait_s=20))
        took = time.monotonic() - started
    finally:
        timer.join()
        _restore(world, mix, data)
    assert took >= 2.5, took
    assert {f.track.track for f in files} == {A, B, "mix"}
    assert (tmp_path / "d" / f"{LIVE}-live-mix.mp3").read_bytes() == data + b"x"


def test_download_live_reports_a_track_never_refreshed_with_the_damaged_ones(
        world: World, tmp_path: Path) -> None:
    """A replaced track whose manifest never comes (within `replaced_wait_s`) is named at
    the end with the damaged files; the other tracks are still fetched and saved. Before,
    a TemporaryFailure for it dropped the damaged ones already found."""
    mix, data, _ = _replace_mix(world)
    damaged = world.manifest.to_api()
    for t in damaged["tracks"]:
        if t["track"] == A:
            t["bytes"] += 1
    world.store.put_json(world.layout.live_manifest_key, damaged)
    try:
        with pytest.raises(ChecksumMismatch) as err:
            asyncio.run(_download(world, tmp_path / "d", poll_s=0.3, replaced_wait_s=1.0))
    finally:
        _restore(world, mix, data)
    said = str(err.value)
    assert sorted(err.value.files) == sorted([f"{LIVE}-live-{A}.mp3", f"{LIVE}-live-mix.mp3"])
    assert "bytes, the live manifest says" in said and "still names the old object" in said
    assert [p.name for p in (tmp_path / "d").iterdir()] == [f"{LIVE}-live-{B}.mp3"]


def test_a_manifest_never_refreshed_is_waited_out_once_per_download(
        world: World, tmp_path: Path) -> None:
    """A live Job that died between its objects and its manifest leaves two tracks replaced
    and the manifest naming the old objects: the download waits `replaced_wait_s` once,
    not once per track (with 7 tracks and the default 60 s that was 7 minutes)."""
    mix, data, _ = _replace_mix(world)
    a = next(t for t in world.manifest.tracks if t.track == A)
    a_data = world.store.get_bytes(a.key)
    world.store.put_bytes(a.key, a_data + b"y", "audio/mpeg")
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as err:
            asyncio.run(_download(world, tmp_path / "d", poll_s=0.2, replaced_wait_s=2.0))
        took = time.monotonic() - started
    finally:
        world.store.put_bytes(a.key, a_data, "audio/mpeg")
        _restore(world, mix, data)
    assert f"{LIVE}-live-{A}.mp3" in str(err.value) and f"{LIVE}-live-mix.mp3" in str(err.value)
    assert took < 3.5, took  # one wait of 2 s, not one per track


def test_a_live_track_gone_from_s3_is_named_and_the_others_saved(world: World,
                                                               tmp_path: Path) -> None:
    """The session ends mid-download and the operator empties `live/`: a track whose
    object is gone is named at the end (TemporaryFailure), the others already fetched
    are saved. Before, the GET's NotFoundError ended the download there."""
    a = next(t for t in world.manifest.tracks if t.track == A)
    a_data = world.store.get_bytes(a.key)
    world.store.delete_keys([a.key])
    try:
        with pytest.raises(TemporaryFailure) as err:
            asyncio.run(_download(world, tmp_path / "d", poll_s=0.2, replaced_wait_s=1.0))
    finally:
        world.store.put_bytes(a.key, a_data, "audio/mpeg")
    assert f"{LIVE}-live-{A}.mp3: gone from S3" in str(err.value), str(err.value)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        [f"{LIVE}-live-{B}.mp3", f"{LIVE}-live-mix.mp3"])


class _AlwaysReplaced(ObjectStore):
    """Every GET of the mix is refused as replaced (412), and every read of the live
    manifest names a newer mix object: counts the manifest reads after each GET."""

    reads_after_get: list[int]

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Any = None) -> Any:
        if key.endswith("/mix.mp3"):
            self.reads_after_get.append(0)
            raise PreconditionFailed(f"get {key}: PreconditionFailed")
        return super().iter_range(key, offset, etag, part, length, on_headers)

    def get_json(self, key: str) -> Any:
        doc = super().get_json(key)
        if key.endswith("live/manifest.json") and self.reads_after_get:
            self.reads_after_get[-1] += 1
            for t in doc["tracks"]:
                if t["track"] == "mix":
                    t["etag"] = f"{len(self.reads_after_get):032x}"
        return doc


def test_no_wait_after_the_last_refused_fetch(world: World, tmp_path: Path) -> None:
    """FETCH_ATTEMPTS fetches of a track replaced each time: the manifest is read again
    between them, never after the last (before, one more wait of up to `replaced_wait_s`
    led nowhere)."""
    store = _AlwaysReplaced(world.store.settings)
    store.reads_after_get = []

    async def go() -> None:
        svc = RecordingService.from_url(world.db_url)
        try:
            await download_live(RecordingsReader(svc, store), LIVE, tmp_path / "d",
                                poll_s=0.05, replaced_wait_s=5)
        finally:
            await svc.close()

    with pytest.raises(TemporaryFailure, match="replaced by a newer live Job 3 times"):
        asyncio.run(go())
    assert len(store.reads_after_get) == 3 and store.reads_after_get[-1] == 0, \
        store.reads_after_get
