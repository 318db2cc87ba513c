"""`voicetrack recordings url --live` and `show` for a live meeting, on real SeaweedFS and the
database on PostgreSQL and SQLite: the audio so far is assembled by the transcoder's real
`assemble_live` from real chunk transcodes, the meeting rows written as the operator does."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker, upload_chunks
from voicetrack.db.migrate import upgrade_head
from voicetrack.db.service import RecordingService
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.objectstore import ObjectStore, S3Settings
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
def live_bucket(s3_server: S3Settings) -> tuple[ObjectStore, MeetingLayout, FinalManifest]:
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
    manifest: FinalManifest

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
def world(db_url: str, live_bucket: tuple[ObjectStore, MeetingLayout, FinalManifest]
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
        assert hashlib.sha256(data).hexdigest() == t.sha256 and len(data) == t.bytes
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
    for t in world.manifest.tracks:
        assert t.sha256 in text
    yet = json.loads(world.cli("show", NOTHING_YET, "--json").stdout)
    assert "no chunk has been assembled" in yet["live"]["error"]
    assert "live" not in json.loads(world.cli("show", ENDED, "--json").stdout)
