"""A restarted recorder carries on its session's opt-outs (review finding): `prepare`
reads the last chunk's `optedOut` into `Consent`. Before, a member opted out by role who
had spoken and left before the restart was in none of the new run's chunks, so not in the
last chunk's `optedOut`, so not excluded: their audio from before the opt-out was
promoted."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from tests.discord_rig import VirtualTime
from tests.unit.recorder_rig import LAYOUT, unreachable
from tests.unit.test_chunker_consent import CHANNEL, GUILD
from voicetrack.chunkspec import ChunkSpec, OptOut
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.unit

A = "400000000000000071"
LATE = "990000000000000071"
"""Sorts after every other opted-out member: listed only as one with audio."""


def empty_uploader(kube: RecorderKube, tmp_path: Path) -> ChunkUploader:
    """An uploader with an empty spool (`prepare` asks it for the chunks a previous run
    left there: none); its object store points at a port nothing listens on."""
    store = ObjectStore(S3Settings(endpoint=f"http://{unreachable()}", access_key="a",
                                   secret_key="b"))
    return ChunkUploader(store, kube, Spool(tmp_path / "s", 1 << 20, LAYOUT, "standup"),
                         "uid-1", str(tmp_path / "acks.json"))


async def test_prepare_restores_the_last_chunks_opt_outs(tmp_path: Path) -> None:
    time = VirtualTime()
    time.now = 1_800_000_000.0
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5,
                       opt_out_role_ids=["900000000000000001"])
    kube = RecorderKube(client.ApiClient(), "ns", "standup")
    rec = Recorder(kube, empty_uploader(kube, tmp_path), spec,
                   SessionClock(int(time.now * 1000) - 21_000, time_fn=time))
    last = ChunkSpec(session_name="standup", meeting_id="abcdef0123456789", guild_id=GUILD,
                     index=3, start_ms=15_000, end_ms=20_000,
                     opted_out=[OptOut(user_id=A, since_ms=12_000, via="role")])
    rec.kube.list_chunks = lambda: [last]  # type: ignore[method-assign]
    rec.kube.paused = False
    await rec.prepare()
    rec.follow_consent()  # the loop's first look, before the source reads roles
    assert rec.chunker.next_index == 4
    assert [(o.user_id, o.since_ms, o.via) for o in rec.consent.opted_out()] == [
        (A, 12_000, "role")]


async def test_prepare_counts_who_spoke_before_the_restart_as_recorded(
        tmp_path: Path) -> None:
    """With more opted-out members than `optedOut` holds, those with audio come first
    (`Consent.opted_out`). A member who spoke before the restart and opts out after it
    has audio in an earlier chunk: `prepare` notes it from the existing chunks' tracks.
    Before, only the last chunk's `optedOut` was read, the member ranked as without audio
    and could be left off the list, and their earlier audio promoted."""
    from voicetrack.chunkspec import ChunkTrack
    from voicetrack.resources import MAX_TRACKS

    time = VirtualTime()
    time.now = 1_800_000_000.0
    many = [f"5{i:017d}" for i in range(MAX_TRACKS + 20)]
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5)
    kube = RecorderKube(client.ApiClient(), "ns", "standup")
    rec = Recorder(kube, empty_uploader(kube, tmp_path), spec,
                   SessionClock(int(time.now * 1000) - 21_000, time_fn=time))
    spoke = ChunkSpec(session_name="standup", meeting_id="abcdef0123456789", guild_id=GUILD,
                      index=0, start_ms=0, end_ms=5_000, tracks=[ChunkTrack(
                          user_id=LATE, key=f"recordings/{GUILD}/abcdef0123456789/chunks/000000/"
                          f"{LATE}.opus", frames=10, first_ms=100, last_ms=300,
                          bytes=1, sha256="0" * 64)])
    rec.kube.list_chunks = lambda: [spoke]  # type: ignore[method-assign]
    rec.kube.paused = False
    await rec.prepare()
    rec.kube.opt_out = (frozenset([*many, LATE]), frozenset())
    for user in [*many, LATE]:
        rec.consent.see(user)
    rec.follow_consent()
    listed = [o.user_id for o in rec.consent.opted_out()]
    assert len(listed) == MAX_TRACKS and LATE in listed
