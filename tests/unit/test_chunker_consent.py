"""Consent in the chunker (issue 12): the recorder's sink (`Recorder.push`,
`Recorder.follow_consent`) over the real `Chunker` and `Spool`, on a virtual session clock.

A member opted out mid-chunk keeps the frames before their `sinceMs` and loses every one at
or after it, including frames already held for slots past the moment the opt-out was
seen; the sealed chunk lists them in `optedOut` and its `ChunkSpec` (built by the spool,
as production does) passes the model's rule. Without the cut, the same chunk is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.discord_rig import VirtualTime
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.layout import MeetingLayout
from voicetrack.resources import SessionSpec
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import UploadStats

pytestmark = pytest.mark.unit

GUILD, CHANNEL = "300000000000000061", "300000000000000062"
A, B = "400000000000000071", "400000000000000072"
FRAME = b"\xfc\xff\xfe"  # any non-empty Opus packet: the chunker does not decode
LAYOUT = MeetingLayout(prefix="rec", guild_id=GUILD, meeting_id="abcdef0123456789")


def recorder(opt_out_users: list[str] | None = None) -> tuple[Recorder, VirtualTime]:
    """A Recorder whose session watch is stood in for by setting `kube.opt_out` (the
    attribute `RecorderKube.watch_paused` keeps); no API call is made."""
    time = VirtualTime()
    clock = SessionClock(int(time.now * 1000), time_fn=time)
    spec = SessionSpec(guild_id=GUILD, channel_id=CHANNEL, chunk_seconds=5,
                       opt_out_user_ids=opt_out_users or [])
    kube = RecorderKube(client.ApiClient(), "ns", "standup")
    rec = Recorder(kube, cast(Any, None), spec, clock)
    rec.chunker.open(0)
    return rec, time


def at(time: VirtualTime, rec: Recorder, ms: int) -> None:
    time.now = (rec.clock.t0_ms + ms) / 1000


def test_an_opt_out_mid_chunk_cuts_the_track_at_since_ms(tmp_path: Path) -> None:
    rec, time = recorder()
    for slot in range(0, 130):  # both talk; B's frames up to 2.58 s are already held
        assert rec.push(A, slot, FRAME) and rec.push(B, slot, FRAME)
    at(time, rec, 2410)
    rec.kube.opt_out = (frozenset({B}), frozenset())  # the watch saw /record optout
    rec.follow_consent()
    assert rec.consent.since_ms(B) == 2410
    for slot in range(130, 250):
        assert rec.push(A, slot, FRAME)
        assert not rec.push(B, slot, FRAME)
    chunk = rec.chunker.seal()
    assert chunk is not None
    tracks = {t.user_id: t for t in chunk.tracks}
    assert tracks[A].frames == 250 and tracks[A].last_ms == 4980
    assert tracks[B].frames == 121 and tracks[B].last_ms == 2400  # slot 120 < 2410 ms
    assert all(p == b"\xf8\xff\xfe" for p in tracks[B].packets[121:])  # silence after
    spec = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").add(chunk).spec
    assert [(o.user_id, o.since_ms, o.via) for o in spec.opted_out] == [(B, 2410, "user")]
    assert spec.to_api()["optedOut"] == [{"userId": B, "sinceMs": 2410, "via": "user"}]


def test_without_the_cut_the_model_refuses_the_chunk(tmp_path: Path) -> None:
    rec, time = recorder()
    plain = Chunker(250)  # no consent: keeps B's frames past the opt-out
    plain.open(0)
    for slot in range(250):
        plain.push(B, slot, FRAME)
    at(time, rec, 2410)
    rec.consent.see(B)
    rec.consent.set_policy([B], [])
    chunk = plain.seal()
    assert chunk is not None
    chunk.opted_out = rec.consent.opted_out()
    with pytest.raises(ValueError, match="at or after their opt-out"):
        Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").add(chunk)


def test_opt_in_records_again_and_the_next_chunk_lists_nobody(tmp_path: Path) -> None:
    rec, time = recorder([B])
    assert not rec.push(B, 0, FRAME)  # opted out from the start: nothing, not even slot 0
    at(time, rec, 3000)
    rec.kube.opt_out = (frozenset(), frozenset())  # /record optin
    rec.follow_consent()
    assert rec.consent.since_ms(B) is None
    for slot in range(150, 400):
        assert rec.push(B, slot, FRAME)
    first = rec.chunker.seal()
    second = rec.chunker.seal()
    assert first is not None and second is not None
    assert first.opted_out == [] and second.opted_out == []
    assert [t.first_ms for t in first.tracks] == [3000]
    assert [t.frames for t in second.tracks] == [150]


def test_a_files_speaker_opted_out_later_is_cut_behind_the_clock(tmp_path: Path) -> None:
    rec, time = recorder()
    for slot in range(50):
        assert rec.push(A, slot, FRAME)
    at(time, rec, 500)  # the source ran ahead of the clock: slots 25..49 are past 500 ms
    rec.kube.opt_out = (frozenset({A}), frozenset())
    rec.follow_consent()
    chunk = rec.chunker.seal(100, reopen=False)
    assert chunk is not None
    assert [(t.frames, t.last_ms) for t in chunk.tracks] == [(25, 480)]
    assert rec.chunker.stats.opted_out == 25
    assert [o.since_ms for o in chunk.opted_out] == [500]


class MarkerUploader:
    """The uploader's side of `Recorder._give_up` (the real one creates the marker through
    the API): keeps the marker chunk's spec."""

    def __init__(self, spool: Spool, creates: bool = True) -> None:
        self.spool = spool
        self.stats = UploadStats()
        self.creates = creates
        """Whether the API server takes a marker (False: 403 in a terminating namespace,
        or away past the deadline)."""
        self.markers: list[ChunkSpec] = []
        self.stored: list[ChunkSpec] = []

    def create_marker(self, spec: ChunkSpec, deadline: float) -> bool:
        if self.creates:
            self.markers.append(spec)
        return self.creates

    def store_marker_spec(self, spec: ChunkSpec, deadline: float) -> bool:
        self.stored.append(spec)
        return True

    def write_ack_file(self) -> None:
        pass


def test_the_marker_chunk_of_a_lost_window_lists_the_opted_out(tmp_path: Path) -> None:
    rec, time = recorder()
    uploader = MarkerUploader(Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup"))
    rec.uploader = cast(Any, uploader)
    rec.push(B, 0, FRAME)
    at(time, rec, 700)
    rec.kube.opt_out = (frozenset({B}), frozenset())
    rec.follow_consent()
    rec._unsaid = [Gap(start_ms=0, end_ms=1000, cause="connection-lost")]  # S3 down at stop
    rec._give_up(deadline=0.0)
    (marker,) = uploader.markers
    assert marker.tracks == [] and [(o.user_id, o.since_ms) for o in marker.opted_out] == [
        (B, 700)]


def test_a_lost_window_marker_never_made_leaves_consent_to_a_stored_marker(
        tmp_path: Path) -> None:
    """The API server refuses every marker (a terminating namespace): the lost window's
    marker is not made, so the opt-out it carried must still reach promotion; the consent
    marker after it is stored in S3 (`store_marker_spec`), which the inventory reads.
    Before: `_give_up` took the unmade marker's list as said, and no consent marker was
    written. It follows the last chunk made (none: the lost window's start), not the end
    of the window no marker carries (a hole promotion took for missing chunks)."""
    rec, time = recorder()
    uploader = MarkerUploader(Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup"),
                              creates=False)
    rec.uploader = cast(Any, uploader)
    rec.push(B, 0, FRAME)
    at(time, rec, 700)
    rec.kube.opt_out = (frozenset({B}), frozenset())
    rec.follow_consent()
    rec._unsaid = [Gap(start_ms=0, end_ms=1000, cause="connection-lost")]
    rec._give_up(deadline=0.0)
    rec._mark_consent(deadline=0.0)
    assert uploader.markers == []
    (stored,) = uploader.stored
    assert stored.tracks == [] and (stored.start_ms, stored.end_ms) == (0, 20)
    assert [(o.user_id, o.since_ms) for o in stored.opted_out] == [(B, 700)]


def test_a_consent_marker_after_a_lost_window_marker_takes_the_next_index(
        tmp_path: Path) -> None:
    """A lost window's marker takes the chunker's next index; a consent marker after it
    (an opt-out seen in between) must take the one after. Before: both had index 0, and
    the API server refused the second (409 with another spec)."""
    rec, time = recorder()
    uploader = MarkerUploader(Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup"))
    rec.uploader = cast(Any, uploader)
    rec.push(B, 0, FRAME)
    rec._unsaid = [Gap(start_ms=0, end_ms=1000, cause="connection-lost")]
    rec._give_up(deadline=0.0)
    at(time, rec, 1200)
    rec.kube.opt_out = (frozenset({B}), frozenset())
    rec.follow_consent()
    rec._mark_consent(deadline=0.0)
    assert [(m.index, m.start_ms, m.end_ms) for m in uploader.markers] == [
        (0, 980, 1000), (1, 1000, 1020)]
    assert [o.user_id for o in uploader.markers[-1].opted_out] == [B]


def test_a_consent_marker_the_api_refuses_is_stored_in_s3(tmp_path: Path) -> None:
    rec, time = recorder()
    uploader = MarkerUploader(Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup"),
                              creates=False)
    rec.uploader = cast(Any, uploader)
    rec.push(A, 0, FRAME)
    rec._last = (5000, [])
    rec.chunker.next_index = 1
    at(time, rec, 5100)
    rec.kube.opt_out = (frozenset({A}), frozenset())
    rec.follow_consent()
    rec._mark_consent(deadline=0.0)
    (stored,) = uploader.stored
    assert (stored.index, stored.start_ms, stored.end_ms) == (1, 5000, 5020)
    assert [o.user_id for o in stored.opted_out] == [A]
    assert rec.chunker.next_index == 2


def test_a_consent_marker_stored_in_s3_says_the_pause_it_carried(tmp_path: Path) -> None:
    """A pause [5, 30) s left unsaid at stop (in `unsaid.json`), carried by the consent
    marker after it, chunk 1 [30, 30.02) s; the API server refuses it, so it is stored in
    S3. It is said as when the API takes it: nothing is left unsaid, in memory or in the
    spool. Before: the pause stayed in `unsaid.json`, and a restarted container carried it
    again (the pause counted twice)."""
    rec, time = recorder()
    spool = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup")
    uploader = MarkerUploader(spool, creates=False)
    rec.uploader = cast(Any, uploader)
    rec.push(A, 0, FRAME)
    rec._last = (5000, [])
    rec.chunker.next_index = 1
    rec._unsaid = [Gap(start_ms=5000, end_ms=30_000, cause="paused")]
    spool.save_unsaid(rec._unsaid)
    at(time, rec, 30_000)
    rec.kube.opt_out = (frozenset({A}), frozenset())
    rec.follow_consent()
    rec._mark_consent(deadline=0.0)
    (stored,) = uploader.stored
    assert (stored.index, stored.start_ms, stored.end_ms, stored.gap) == (
        1, 30_000, 30_020, Gap(start_ms=5000, end_ms=30_000, cause="paused"))
    assert rec._unsaid == []
    assert not (tmp_path / "s" / "unsaid.json").exists()
    assert Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").unsaid == []
