"""`voicetrack recordings` and its read layer on real SeaweedFS, real ffmpeg, and the
database on PostgreSQL and SQLite (`db_url`).

A meeting is promoted for real (`voicetrack-transcoder promote`: two speakers, three
chunks, MP3 and FLAC) and recorded in SQL the way the operator does it; a second meeting
is live (temp rows only) and a third failed. The CLI runs as the installed `voicetrack`
command, with its settings from the environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker, promote_plan, upload_chunks
from voicetrack.db.migrate import upgrade_head
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import (
    ConsentEntry,
    ConsentRecord,
    DegradedConsent,
    FinalManifest,
    PromotionPlan,
    RecordedMember,
)
from voicetrack.objectstore import ObjectStore, S3Settings

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GUILD, CHANNEL = "500000000000000001", "500000000000000002"
A, B = "510000000000000011", "510000000000000012"
C = "510000000000000013"  # opted out at stop: no track, named in consent.json
DONE = "d0d0d0d0d0d0d0d0"
LIVE = "11e11e11e11e11e1"
FAILED = "fa11edfa11edfa11"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SESSION_MS = 6000
_buckets = itertools.count(1)


@dataclasses.dataclass
class World:
    """A database with three meetings and a bucket with one promoted meeting."""

    db_url: str
    store: ObjectStore
    manifest: FinalManifest
    layout: MeetingLayout

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.store.settings.env(), "VOICETRACK_DATABASE_URL": self.db_url}
        env.pop("COLUMNS", None)  # piped: the table is wide, ids and reasons on one line
        return env

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / "voicetrack"), "recordings", *args], env=self.env(),
                              capture_output=True, text=True, timeout=300, check=False)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    def db(self, fn: Any) -> Any:
        async def go() -> Any:
            svc = RecordingService.from_url(self.db_url)
            try:
                return await fn(svc)
            finally:
                await svc.close()
        return asyncio.run(go())


def _promote(store: ObjectStore, layout: MeetingLayout) -> FinalManifest:
    speakers = [Speaker(A, 180, talks=[(200, 2500)], markers=[4000]),
                Speaker(B, 260, talks=[(2600, 5000)], markers=[1000])]
    session = upload_chunks(store, layout, speakers, [(0, 2000), (2000, 4000), (4000, 6000)],
                            SESSION_MS, [])
    plan = PromotionPlan(guild_id=GUILD, meeting_id=DONE, prefix=layout.prefix,
                         session_end_ms=SESSION_MS, speakers=[A, B], chunks=session.chunks,
                         formats=["mp3", "flac"], excluded=[C], consent=ConsentRecord(
                             meeting_id=DONE,
                             recorded=[RecordedMember(user_id=A, first_ms=200),
                                       RecordedMember(user_id=B, first_ms=1000)],
                             opted_out=[ConsentEntry(user_id=C, since_ms=3000, via="role",
                                                     excluded=True)],
                             consent_degraded=DegradedConsent(
                                 reason="MembersIntentRefused", message="4014 refused",
                                 since_ms=2000, until_ms=6000)))
    return promote_plan(store, layout, plan, 300)


async def _record(svc: RecordingService, manifest: FinalManifest) -> None:
    """The operator's writes: meetings with their session, chunk rows, promotion, end."""
    await svc.create_meeting(DONE, GUILD, CHANNEL, T0, "uid-done", namespace="team",
                             session_name="standup")
    for index in range(3):
        for user in (A, B):
            await svc.upsert_chunk_status(
                "uid-done", index, user, DONE, GUILD, f"raw/{index}/{user}.opus", "ogg-opus",
                "done", mp3_path=f"raw/{index}/{user}.mp3", sha256="a" * 64, duration_ms=2000)
    await svc.promote_temp_recordings_to_persistent(DONE, "both", manifest.tracks)
    await svc.end_meeting(DONE, T0 + timedelta(minutes=1), "completed")

    await svc.create_meeting(LIVE, GUILD, CHANNEL, T0 + timedelta(hours=1), "uid-live",
                             namespace="team", session_name="retro")
    rows = [(0, A, "done"), (0, B, "done"), (1, A, "done"), (1, B, "queued"), (2, A, "failed")]
    for index, user, status in rows:
        extra: dict[str, Any] = {"done": {"mp3_path": "x.mp3", "sha256": "b" * 64,
                                          "duration_ms": 2000},
                                 "failed": {"error": "bad input"}}.get(status, {})
        await svc.upsert_chunk_status("uid-live", index, user, LIVE, GUILD,
                                      f"raw/{index}/{user}.opus", "ogg-opus", status, **extra)

    await svc.create_meeting(FAILED, "500000000000000009", CHANNEL, T0 - timedelta(hours=1),
                             "uid-failed", namespace="team", session_name="broken")
    await svc.end_meeting(FAILED, T0 - timedelta(minutes=50), "failed",
                          "RecorderFailed: storage: AccessDenied")


@pytest.fixture(scope="module")
def promoted(s3_server: S3Settings) -> tuple[ObjectStore, MeetingLayout, FinalManifest]:
    """One real promotion for the module (tests that damage an object put it back)."""
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-rec-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    layout = MeetingLayout("recordings", GUILD, DONE)
    return store, layout, _promote(store, layout)


@pytest.fixture
def world(db_url: str, promoted: tuple[ObjectStore, MeetingLayout, FinalManifest]
          ) -> Iterator[World]:
    upgrade_head(db_url)
    store, layout, manifest = promoted
    w = World(db_url, store, manifest, layout)
    w.db(lambda svc: _record(svc, manifest))
    yield w


def test_list_shows_history_live_progress_and_failure_reasons(world: World) -> None:
    rows = json.loads(world.cli("list", "--json").stdout)
    assert [r["meeting_id"] for r in rows] == [LIVE, DONE, FAILED]  # newest first
    live, done, failed = rows
    assert live["status"] == "recording" and live["chunks"] == {
        "total": 3, "done": 1, "failed": 1, "pending": 1}
    assert live["speakers"] == [A, B] and live["duration_ms"] is None
    assert (done["status"], done["namespace"], done["session_name"]) == (
        "completed", "team", "standup")
    assert done["speakers"] == [A, B] and done["tracks"] == 6  # 2 speakers + mix, 2 formats
    assert done["duration_ms"] == world.manifest.duration_ms and done["chunks"] is None
    assert done["elapsed_ms"] == 60_000
    assert (failed["status"], failed["failure_reason"]) == (
        "failed", "RecorderFailed: storage: AccessDenied")

    only = json.loads(world.cli("list", "--guild", GUILD, "--limit", "1", "--json").stdout)
    assert [r["meeting_id"] for r in only] == [LIVE]
    table = world.cli("list").stdout
    assert "team/standup" in table and "2/3" not in table and "1/3 (1 failed)" in table
    assert "RecorderFailed: storage: AccessDenied" in table

    bad = world.cli("list", "--guild", "nope", ok=False)
    assert bad.returncode == 1 and "guild_id" in bad.stderr and "Traceback" not in bad.stderr


def test_show_lists_tracks_with_manifest_facts(world: World) -> None:
    for ref in (DONE, "team/standup"):
        doc = json.loads(world.cli("show", ref, "--json").stdout)
        assert doc["meeting_id"] == DONE
    tracks = {(t["track"], t["format"]): t for t in doc["tracks"]}
    assert set(tracks) == {(u, f) for u in (A, B, "mix") for f in ("mp3", "flac")}
    for m in world.manifest.tracks:
        t = tracks[(m.user_id or "mix", m.format)]
        assert (t["bytes"], t["sha256"], t["duration_ms"], t["channels"], t["key"]) == (
            m.bytes, m.sha256, m.duration_ms, m.channels, m.key)
    assert doc["output_ms"] == world.manifest.duration_ms and doc["gaps"] == []
    assert doc["timeline_key"] == world.layout.timeline_key  # promotion writes it
    # who was recorded and who opted out (final/consent.json, issue 12)
    assert doc["consent_key"] == world.layout.consent_key
    assert doc["consent"] == {
        "recorded": [{"user_id": A, "first_ms": 200}, {"user_id": B, "first_ms": 1000}],
        "opted_out": [{"user_id": C, "since_ms": 3000, "via": "role", "excluded": True}],
        "degraded": {"reason": "MembersIntentRefused", "message": "4014 refused",
                     "since_ms": 2000, "until_ms": 6000}}
    assert doc["consent_degraded"] is None  # the row was not marked (meetings, 0008)
    text = world.cli("show", DONE).stdout
    assert "degraded from 0:02 to 0:06 (MembersIntentRefused)" in text
    assert world.manifest.tracks[0].sha256 in text and "team/standup" in text
    assert "2 recorded, 1 opted out" in text and C in text and "none kept" in text

    live = json.loads(world.cli("show", "team/retro", "--json").stdout)
    assert live["meeting_id"] == LIVE and live["tracks"] == [] and live["output_ms"] is None
    assert live["chunks"]["total"] == 3 and "1/3" in world.cli("show", LIVE).stdout
    for command in ("url", "download", "zip"):
        res = world.cli(command, LIVE, *(["."] if command == "download" else []), ok=False)
        assert res.returncode == 1 and "no final tracks" in res.stderr, (command, res.stderr)

    missing = world.cli("show", "0000000000000000", ok=False)
    assert missing.returncode == 1 and "no meeting" in missing.stderr
    bad = world.cli("show", "not a meeting", ok=False)
    assert bad.returncode == 1 and "MEETING" in bad.stderr


def test_url_links_work_and_expire(world: World) -> None:
    doc = json.loads(world.cli("url", DONE).stdout)
    assert set(doc) == {A, B, "mix"}
    for track, link in doc.items():
        assert link["format"] == "mp3" and link["expires_in_seconds"] == 900
        data = urllib.request.urlopen(link["url"], timeout=30).read()
        want = next(t for t in world.manifest.tracks
                    if (t.user_id or "mix") == track and t.format == "mp3")
        assert hashlib.sha256(data).hexdigest() == want.sha256
    one = json.loads(world.cli("url", DONE, "mix", "--format", "flac", "--expires", "2h").stdout)
    assert one["format"] == "flac" and one["expires_in_seconds"] == 7200

    short = json.loads(world.cli("url", DONE, A, "--expires", "1s").stdout)
    assert short["expires_in_seconds"] == 1
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(short["url"], timeout=30)
    assert expired.value.code == 403 and b"Request has expired" in expired.value.read()

    for args, says in [(("--expires", "8d"), "--expires"), (("--expires", "0s"), "--expires"),
                       (("--format", "wav"), "--format"), ((), "")]:
        track = "999999999999999999" if not args else A
        res = world.cli("url", DONE, track, *args, ok=False)
        assert res.returncode != 0, args
        assert (says or "TRACK") in res.stderr, res.stderr


def test_download_verifies_and_refuses_a_damaged_object(world: World, tmp_path: Path) -> None:
    out = world.cli("download", DONE, str(tmp_path / "a")).stdout
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(Path(t.key).name for t in world.manifest.tracks)
    for t in world.manifest.tracks:
        path = tmp_path / "a" / Path(t.key).name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == t.sha256
    assert out.count("verified") == 6

    mix = next(t for t in world.manifest.tracks if t.kind == "mixed" and t.format == "mp3")
    good = world.store.get_bytes(mix.key)
    try:
        # a file already there that matches is kept without asking S3 again
        again = world.cli("download", DONE, str(tmp_path / "a")).stdout
        assert again.count("(already there)") == 6
        world.store.put_bytes(mix.key, good[:-100] + bytes(100))  # same size, other bytes
        (tmp_path / "a" / "mix.mp3").write_bytes(b"stale")  # and a bad local copy
        res = world.cli("download", DONE, str(tmp_path / "a"), ok=False)
        assert res.returncode == 1
        assert "mix.mp3: sha256" in res.stderr and mix.sha256 in res.stderr
        names = sorted(p.name for p in (tmp_path / "a").iterdir())
        assert "mix.mp3" not in names  # nothing at its name looks valid
        assert len(names) == 5 and not any(n.endswith(".part") for n in names)

        world.store.put_bytes(mix.key, good[:1000])  # truncated
        res = world.cli("download", DONE, str(tmp_path / "b"), ok=False)
        assert "mix.mp3: 1000 bytes" in res.stderr
        assert "mix.mp3" not in {p.name for p in (tmp_path / "b").iterdir()}
    finally:
        world.store.put_bytes(mix.key, good)


def _ffprobe_samples(path: Path) -> tuple[int, int, int]:
    """(samples per channel, sample rate, channels) of an audio file, by decoding it."""
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
         "stream=sample_rate,channels,duration_ts", "-of", "json", str(path)],
        capture_output=True, text=True, check=True)
    stream = json.loads(proc.stdout)["streams"][0]
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
        capture_output=True, check=True).stdout
    channels = int(stream["channels"])
    return len(decoded) // (2 * channels), int(stream["sample_rate"]), channels


def test_zip_is_an_audacity_project_of_equal_length_tracks(world: World,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "bundle.zip"
    world.cli("zip", "team/standup", "--out", str(target))
    folder = f"voicetrack-{DONE}"
    with zipfile.ZipFile(target) as zf:
        names = sorted(zf.namelist())
        zf.extractall(tmp_path / "x")
    assert names == sorted(f"{folder}/{n}" for n in [
        f"{A}.flac", f"{B}.flac", "mix.flac", f"{DONE}.lof", "manifest.json",
        "timeline.json", "consent.json"])
    root = tmp_path / "x" / folder
    assert (root / f"{DONE}.lof").read_text() == (
        f'file "{A}.flac" offset 0\nfile "{B}.flac" offset 0\nfile "mix.flac" offset 0\n')
    assert json.loads((root / "manifest.json").read_text()) == world.store.get_json(
        world.layout.final_manifest_key)
    want = world.manifest.duration_ms * 48
    channels = {(t.user_id or "mix"): t.channels for t in world.manifest.tracks}
    for track in (A, B, "mix"):
        assert _ffprobe_samples(root / f"{track}.flac") == (want, 48_000, channels[track])

    # the speech timeline promotion wrote next to the manifest is bundled too
    assert json.loads((root / "timeline.json").read_text()) == world.store.get_json(
        world.layout.timeline_key)
    # and the consent record: whoever opens the project sees who is not in it and why
    consent = json.loads((root / "consent.json").read_text())
    assert consent == world.store.get_json(world.layout.consent_key)
    assert [o["userId"] for o in consent["optedOut"]] == [C]


def test_zip_of_a_damaged_source_leaves_no_file(world: World, tmp_path: Path) -> None:
    flac = next(t for t in world.manifest.tracks if t.user_id == A and t.format == "flac")
    good = world.store.get_bytes(flac.key)
    try:
        world.store.put_bytes(flac.key, b"fLaC" + bytes(flac.bytes - 4))
        out = tmp_path / "out"
        res = world.cli("zip", DONE, "--out", str(out / "b.zip"), ok=False)
        assert res.returncode == 1 and f"{A}.flac: sha256" in res.stderr
        assert list(out.iterdir()) == []  # no zip, no part file, no work directory
    finally:
        world.store.put_bytes(flac.key, good)


def test_history_columns_are_kept_and_checked(world: World) -> None:
    async def go(svc: RecordingService) -> None:
        # a row rebuilt without its session gets it later; one that has it keeps it
        other = "0123456789abcdef"
        await svc.create_meeting(other, GUILD, CHANNEL, T0, "uid-x")
        m = await svc.create_meeting(other, GUILD, CHANNEL, T0, "uid-x", namespace="ns1",
                                     session_name="s1")
        assert (m.namespace, m.session_name) == ("ns1", "s1")
        m = await svc.create_meeting(other, GUILD, CHANNEL, T0, "uid-x", namespace="ns2",
                                     session_name="s2")
        assert (m.namespace, m.session_name) == ("ns1", "s1")
        with pytest.raises(InvalidInputError, match="failure_reason"):
            await svc.end_meeting(other, T0, "completed", "why?")
        with pytest.raises(InvalidInputError, match="failure_reason"):
            await svc.end_meeting(other, T0, "failed", "x" * 4001)
        with pytest.raises(InvalidInputError, match="namespace"):
            await svc.create_meeting(other, GUILD, CHANNEL, T0, "uid-x", namespace="n" * 64)
        ended = await svc.end_meeting(other, T0, "cancelled", "no audio was recorded")
        assert (ended.status, ended.failure_reason) == ("cancelled", "no audio was recorded")
        ended = await svc.end_meeting(other, T0, "completed")
        assert ended.failure_reason is None
        with pytest.raises(InvalidInputError, match="limit"):
            await svc.list_meetings(limit=0)
        assert (await svc.find_session_meeting("ns1", "s1")).meeting_id == other

    world.db(go)


def test_links_signed_with_credentials_from_the_aws_chain(world: World) -> None:
    """No VOICETRACK_S3_* keys, the same keys as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    (the chain's environment source): links are minted and download the track; one key
    without the other is refused naming it."""
    settings = world.store.settings
    env = {k: v for k, v in world.env().items()
           if k not in ("VOICETRACK_S3_ACCESS_KEY", "VOICETRACK_S3_SECRET_KEY")}
    env.update(AWS_ACCESS_KEY_ID=settings.access_key,
               AWS_SECRET_ACCESS_KEY=settings.secret_key, AWS_EC2_METADATA_DISABLED="true")
    cmd = [str(BIN / "voicetrack"), "recordings", "url", DONE, "mix"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    data = urllib.request.urlopen(json.loads(res.stdout)["url"], timeout=30).read()
    want = next(t for t in world.manifest.tracks if t.user_id is None and t.format == "mp3")
    assert hashlib.sha256(data).hexdigest() == want.sha256

    half = {**env, "VOICETRACK_S3_ACCESS_KEY": settings.access_key}
    res = subprocess.run(cmd, env=half, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 1 and "VOICETRACK_S3_SECRET_KEY" in res.stderr, res.stderr
