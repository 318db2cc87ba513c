"""The recordings read layer's pure parts: link lifetimes, the Audacity `.lof` writer, which
track and format a link or a bundle takes, the layout read back from a key, and the
operator's meeting outcome."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from rich.console import Console

from voicetrack.db.queries import MeetingRecord
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.manifests import LiveManifest
from voicetrack.recordings.bundle import LofEntry, lof_text
from voicetrack.recordings.expiry import parse_expiry
from voicetrack.recordings.live import LiveAudio
from voicetrack.recordings.models import TrackInfo, render_sources
from voicetrack.recordings.service import meeting_layout, select_tracks
from voicetrack.recordings.text import hms, show_live, size
from voicetrack_operator.services.failures import FAILURE_REASON_MAX, meeting_outcome

pytestmark = pytest.mark.unit

A, B = "400000000000000011", "400000000000000012"


@pytest.mark.parametrize(("text", "seconds"), [
    ("900", 900), ("900s", 900), ("15m", 900), ("2h", 7200), ("1d", 86_400), ("7d", 604_800),
    ("1h30m", 5400), ("1m1s", 61), (" 15M ", 900), ("1", 1), ("1s", 1), ("604800", 604_800),
])
def test_expiry_parses_seconds_and_units(text: str, seconds: int) -> None:
    assert parse_expiry(text) == seconds


@pytest.mark.parametrize(("text", "says"), [
    ("0", "1 s to 7 days"), ("0s", "1 s to 7 days"), ("604801", "1 s to 7 days"),
    ("8d", "1 s to 7 days"), ("7d1s", "1 s to 7 days"),
    ("", "not a lifetime"), ("15 m", "not a lifetime"), ("15min", "not a lifetime"),
    ("m", "not a lifetime"), ("-5s", "not a lifetime"), ("1.5h", "not a lifetime"),
    ("30m1h", "not a lifetime"), ("1m1m", "not a lifetime"), ("15mx", "not a lifetime"),
])
def test_expiry_refuses_bad_or_out_of_bounds_lifetimes(text: str, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says) as err:
        parse_expiry(text)
    assert str(err.value).startswith("--expires: ")


def test_lof_lists_every_file_from_zero() -> None:
    assert lof_text([LofEntry(f"{A}.flac"), LofEntry("mix.flac")]) == (
        f'file "{A}.flac" offset 0\nfile "mix.flac" offset 0\n')
    assert lof_text([LofEntry("a b.flac", 1.5), LofEntry("sub/c.flac", 0.25)]) == (
        'file "a b.flac" offset 1.5\nfile "sub/c.flac" offset 0.25\n')


@pytest.mark.parametrize(("entries", "says"), [
    ([], "at least one"),
    ([LofEntry('a"b.flac')], r"entries\[0\].name"),
    ([LofEntry("ok.flac"), LofEntry("a\nfile \"x\"")], r"entries\[1\].name"),
    ([LofEntry("/abs.flac")], r"entries\[0\].name"),
    ([LofEntry("../up.flac")], r"entries\[0\].name"),
    ([LofEntry("  ")], r"entries\[0\].name"),
    ([LofEntry("a.flac", -1.0)], r"entries\[0\].offset_s"),
    ([LofEntry("a.flac", float("nan"))], r"entries\[0\].offset_s"),
])
def test_lof_refuses_what_it_cannot_write(entries: list[LofEntry], says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        lof_text(entries)


def track(user: str | None, fmt: str, key: str | None = None) -> TrackInfo:
    name = f"{user or 'mix'}.{'ogg' if fmt == 'opus' else fmt}"
    return TrackInfo(recording_id=f"r{user}{fmt}", kind="speaker" if user else "mixed",
                     user_id=user, format=fmt, key=key or f"p/1/m/final/{name}",
                     filename=name, bytes=1, sha256="a" * 64, duration_ms=1000)


TRACKS = [track(A, "flac"), track(A, "mp3"), track(B, "opus"), track(None, "mp3"),
          track(None, "opus")]


def test_links_pick_mp3_by_default_else_the_first_format() -> None:
    got = select_tracks(TRACKS, None, None, "m")
    assert [(t.track, t.format) for t in got] == [(A, "mp3"), (B, "opus"), ("mix", "mp3")]
    assert [(t.track, t.format) for t in select_tracks(TRACKS, "mixed", "opus", "m")] == [
        ("mix", "opus")]
    with pytest.raises(NotFoundError, match=f"TRACK: .* it has {A}, {B}, mix"):
        select_tracks(TRACKS, "999999999999999999", None, "m")
    with pytest.raises(NotFoundError, match=r"--format: track .* has no 'flac'; it has opus"):
        select_tracks(TRACKS, B, "flac", "m")
    with pytest.raises(NotFoundError, match="no final tracks"):
        select_tracks([], None, None, "m")


def test_bundles_render_from_the_best_format_speakers_first() -> None:
    mix_first = [TRACKS[3], *TRACKS[:3], TRACKS[4]]
    assert [(t.track, t.format) for t in render_sources(mix_first)] == [
        (A, "flac"), (B, "opus"), ("mix", "opus")]


def record(guild: str = "123456789012345678", meeting: str = "abcdefABCDEF0123"
           ) -> MeetingRecord:
    return MeetingRecord(meeting, guild, "223456789012345678", datetime(2026, 1, 1, tzinfo=UTC),
                         None, "completed", "ns", "s", None)


def test_layout_is_read_back_from_a_final_key() -> None:
    r = record()
    for prefix in ("recordings", "a/b", ""):
        root = "/".join(p for p in (prefix, r.guild_id, r.meeting_id) if p)
        layout = meeting_layout(r, track(A, "mp3", f"{root}/final/{A}.mp3"))
        assert layout.prefix == prefix
        assert layout.final_manifest_key == f"{root}/final/manifest.json"
    with pytest.raises(InvalidInputError, match="not under"):
        meeting_layout(r, track(A, "mp3", f"recordings/{r.guild_id}/other/final/{A}.mp3"))
    with pytest.raises(InvalidInputError, match="not under"):
        meeting_layout(r, track(A, "mp3", f"x{r.guild_id}/{r.meeting_id}/final/{A}.mp3"))


def test_meeting_outcome_names_why() -> None:
    assert meeting_outcome({}, ["r1"]) == ("completed", None)
    assert meeting_outcome({}, []) == ("cancelled", "no audio was recorded")
    assert meeting_outcome({"recorderFailure": "storage: AccessDenied"}, []) == (
        "failed", "RecorderFailed: storage: AccessDenied")
    # what it recorded before failing is kept, and the meeting says it failed
    assert meeting_outcome({"recorderFailure": "exit 2"}, ["r1"])[0] == "failed"
    status, why = meeting_outcome({"chunks": {"total": 3, "failed": 3}}, [])
    assert status == "failed" and why is not None and "all 3 chunk(s)" in why
    long = meeting_outcome({"recorderFailure": "x" * 5000}, [])[1]
    assert long is not None and len(long) == FAILURE_REASON_MAX


def test_human_figures() -> None:
    assert [hms(None), hms(999), hms(61_000), hms(3_723_000)] == ["-", "0:00", "1:01", "1:02:03"]
    assert [size(None), size(10), size(2048), size(5 * 1024**3)] == [
        "-", "10 B", "2.0 KiB", "5.0 GiB"]


def _live(**check: str) -> LiveAudio:
    manifest = LiveManifest.model_validate({
        "toolVersion": "t", "meetingId": "abcdefABCDEF0123", "durationMs": 4000,
        "recordedMs": 4000, "pausedMs": 0, "assembly": "incremental", "tracks": [{
            "track": "mix", "kind": "mixed", "format": "mp3", "key": "k/live/mix.mp3",
            "bytes": 9, "durationMs": 4000, **check}]})
    return LiveAudio(record(), manifest, "k/live/manifest.json")


def test_show_lists_a_live_tracks_etag_and_an_older_ones_sha256() -> None:
    """`show` of a live meeting: a live track has its ETag and no sha256 (before, the
    live manifest did not even parse without one); an older manifest's sha256 shows."""
    for check, want in (({"etag": "e0f1-3"}, "e0f1-3"),
                        ({"sha256": "ab" * 32}, f"sha256 {'ab' * 32}")):
        live = _live(**check)
        out = Console(width=200, record=True)
        show_live(out, live)
        assert want in out.export_text(), check
        [doc] = live.as_dict()["tracks"]
        assert (doc["etag"], doc["sha256"]) == (check.get("etag"), check.get("sha256"))


@pytest.mark.parametrize(("check", "says"), [
    ({}, "live track 'mix' (k/live/mix.mp3) has neither an etag nor a sha256"),
    ({"etag": None, "sha256": None}, "has neither an etag nor a sha256"),
    ({"etag": ""}, "tracks.0.etag"),
    ({"sha256": ""}, "tracks.0.sha256"),
])
def test_a_live_track_with_nothing_to_check_it_by_is_refused(check: dict[str, str],
                                                              says: str) -> None:
    """Before, both were optional: a track with neither validated, and downloads saved it
    checked by size only; an empty ETag sent no If-Match at all."""
    with pytest.raises(ValidationError, match=re.escape(says)):
        _live(**check)
