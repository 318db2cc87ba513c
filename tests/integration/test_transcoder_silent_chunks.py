"""Incremental promotion of a meeting with silent windows, on real SeaweedFS, ffmpeg and
libopus. A window in which nobody spoke is sealed as a chunk without tracks (Discord
sends no packets in silence), which the operator marks done at once, without a Job: it
has no piece. Its unit is rendered at assembly (cheaply: silence, after a spoken chunk
only the encoder's warm-up), and the meeting is still assembled from its pieces,
matching the single-pass encode. Before, every such chunk sent the whole meeting to the
full re-promotion ("chunk N: no usable piece.json"), so a real meeting with any 10 s
pause was never assembled (issue 13, second review)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.audio_helpers import Speaker, best_correlation, decode_file, upload_chunks
from voicetrack.audio import ms_to_samples
from voicetrack.chunkspec import Gap
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan, SilentHeadManifest
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_transcoder import assembly, silence
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, owned_end, split_frames
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

LAYOUT = MeetingLayout("inc", "123456789012345678", "SiLeNtChUnKs0001")
A, B = "111111111111111111", "222222222222222222"
SPEAKERS = [
    # A talks up to 10 ms before chunk 1 ends: its unit's tail reaches the silent chunk 2
    Speaker(A, 190, talks=[(300, 3990)], markers=[1010, 3500]),
    Speaker(B, 260, talks=[(8200, 9800), (12300, 13900)], markers=[9010, 13010]),
]
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 10000),
           (10000, 12000), (12000, 14000), (14000, 16000)]
SILENT = [2, 3, 5, 7]
"""Chunks nobody spoke in: no tracks (chunk 7 is the last one)."""
SESSION_MS = 16_000


@pytest.fixture(scope="module")
def promoted(s3_server: S3Settings) -> tuple[ObjectStore, dict[str, bytes], dict[str, bytes],
                                              str | None, str | None]:
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-silent-{os.getpid()}"))
    store.ensure_bucket()
    session = upload_chunks(store, LAYOUT, SPEAKERS, WINDOWS, SESSION_MS, [])
    assert [c.index for c in session.chunks if not c.tracks] == SILENT
    for chunk in session.chunks:
        store.put_json(LAYOUT.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.tracks:  # the operator runs no Job for a chunk without tracks
            transcode_chunk(store, chunk, LAYOUT.prefix, ["mp3"], 128, tracks="both")
    plan = PromotionPlan(guild_id=LAYOUT.guild_id, meeting_id=LAYOUT.meeting_id,
                         prefix=LAYOUT.prefix, session_end_ms=SESSION_MS, speakers=[A, B],
                         chunks=session.chunks, gaps=[], formats=["mp3"], mp3_bitrate=128)
    store.put_json(LAYOUT.promotion_plan_key, plan.to_api())
    inc = promote(store, LAYOUT.promotion_plan_key)
    inc_tracks = {t.track: store.get_bytes(t.key) for t in inc.tracks}
    full = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    ref_tracks = {t.track: store.get_bytes(t.key) for t in full.tracks}
    return store, inc_tracks, ref_tracks, inc.assembly, inc.fallback_reason


def test_a_meeting_with_silent_chunks_is_assembled_from_its_pieces(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None]) -> None:
    _, inc, _, assembly, reason = promoted
    assert (assembly, reason) == ("incremental", None)
    assert sorted(inc) == sorted([A, B, "mix"])


def test_it_matches_the_single_pass_encode_at_every_junction(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None]) -> None:
    """Exact length, correlation with the single-pass encode, and no step where two
    encodes meet (one frame either side), the silent units' included."""
    _, inc, ref, _, _ = promoted
    junctions = [owned_end(ms_to_samples(end)) * FRAME - TOTAL_DELAY
                 for _, end in WINDOWS[:-1]]
    for track in inc:
        a = decode_file(inc[track]).astype(np.int64)
        b = decode_file(ref[track]).astype(np.int64)
        assert a.shape == b.shape == (ms_to_samples(SESSION_MS), a.shape[1]), track
        corr, lag = best_correlation(b, a, ms_to_samples(20))
        assert corr >= 0.99 and lag == 0, (track, corr, lag)
        err = np.abs(a - b).max(axis=1)
        scale = max(int(np.abs(b).max()), 1)
        for c in junctions:
            near = int(err[max(c - FRAME, 0): c + FRAME].max())
            assert near <= 0.08 * scale, (track, c, near, scale)


def test_units_are_rendered_a_few_at_a_time(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None], monkeypatch: pytest.MonkeyPatch) -> None:
    """The units without a piece are computed side by side, but at most
    `RENDERS_AT_ONCE` of them hold rendered PCM at once: a render after speech holds two
    chunk windows of every track (second review: ~320 MB each for 5 speakers at 60 s
    chunks, 8 at once past the promotion Job's 768 MiB). Chunks 2, 5 and 7 follow speech
    here: three renders, which ran all at once before."""
    store = promoted[0]
    running, peak = 0, 0
    lock = threading.Lock()
    real = assembly.render

    def counted(*args: Any, **kw: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.3)  # long enough for the others to start if they may
            return real(*args, **kw)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(assembly, "render", counted)
    monkeypatch.setattr(assembly, "stored_head", lambda *a, **kw: None)  # computed here
    assert promote(store, LAYOUT.promotion_plan_key).assembly == "incremental"
    assert peak == 2, peak  # RENDERS_AT_ONCE


def test_silence_after_speech_is_encoded_one_second_deep_with_the_same_bytes(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None], monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent unit after speech is rendered and encoded only `HEAD_MS` into it, the
    rest being LAME's silent frame (`settled_made`): the tracks are byte for byte those of
    rendering every such unit whole (issue 13: at 1 h with a silent window in six, those
    renders took most of stop -> final). Chunks 2, 5 and 7 follow speech (7 is the last
    unit, to the stream's end: its frames after the input's end are the silent frame
    too)."""
    store, inc, _, _, _ = promoted
    settled: list[int] = []
    real = assembly.settled_made

    def spied(*args: Any, **kw: Any) -> Any:
        made = real(*args, **kw)
        settled.append(made is not None)
        return made

    monkeypatch.setattr(assembly, "settled_made", spied)
    monkeypatch.setattr(assembly, "stored_head", lambda *a, **kw: None)  # computed here
    monkeypatch.setattr(silence, "HEAD_MS", 1000)
    assert {t.track: store.get_bytes(t.key) for t in promote(
        store, LAYOUT.promotion_plan_key).tracks} == inc
    assert settled == [True, True, True], settled
    monkeypatch.setattr(silence, "HEAD_MS", 10**9)  # every unit rendered whole
    whole = {t.track: store.get_bytes(t.key) for t in promote(
        store, LAYOUT.promotion_plan_key).tracks}
    assert whole == inc and len(settled) == 3


@pytest.mark.parametrize("incremental", [True, False])
def test_a_meeting_nobody_spoke_in_promotes_to_no_tracks(s3_server: S3Settings,
                                                           incremental: bool) -> None:
    """Every window silent (nobody spoke, or every speaker opted out): promotion writes
    the manifest without tracks and the consent record, and fails nothing; the operator
    then writes no recordings row (tests/e2e/test_operator_services.py)."""
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-mute-{os.getpid()}"))
    store.ensure_bucket()
    layout = MeetingLayout("inc", "123456789012345678", f"NoBoDySpOkE{int(incremental)}0001")
    session = upload_chunks(store, layout, [], WINDOWS[:3], 6000, [])
    assert all(not c.tracks for c in session.chunks)
    for chunk in session.chunks:
        store.put_json(layout.chunk_manifest_key(chunk.index), chunk.to_api())
    plan = PromotionPlan(guild_id=layout.guild_id, meeting_id=layout.meeting_id,
                         prefix=layout.prefix, session_end_ms=6000, speakers=[],
                         chunks=session.chunks, gaps=[], formats=["mp3"], mp3_bitrate=128)
    store.put_json(layout.promotion_plan_key, plan.to_api())
    manifest = promote(store, layout.promotion_plan_key, incremental=incremental)
    assert manifest.tracks == [] and manifest.duration_ms == 6000
    assert store.exists(layout.final_manifest_key)


# ---------------------------------------------------------------- heads made while recording


def test_each_spoken_chunks_job_stores_the_head_of_the_silence_after_it(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None]) -> None:
    """Every spoken chunk's Job (0, 1, 4, 6) stores the head of a silence that may
    follow it, before anyone knows what does: chunk 1's is chunk 2's unit's, chunk 4's
    chunk 5's, chunk 6's that of chunk 7, the last window (no Job runs after it); chunk
    0's goes unused (chunk 1 is spoken). Chunk 3's unit follows silence (no head)."""
    store = promoted[0]
    spoken = [i for i in range(len(WINDOWS)) if i not in SILENT]
    assert all(store.exists(LAYOUT.head_after_key(i)) for i in spoken)
    head = SilentHeadManifest.model_validate(store.get_json(LAYOUT.head_after_key(1)))
    assert [p.index for p in head.placed] == [1]
    assert (head.unit_start_ms, head.head_ms) == (4000, 5000)
    assert sorted(t.track for t in head.tracks) == [A, "mix"]  # B spoke in neither


def _renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts `assembly.render` calls (the list's length)."""
    calls: list[int] = []
    real = assembly.render

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(assembly, "render", counted)
    return calls


def test_assembly_uses_the_stored_heads_with_the_same_bytes(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None], monkeypatch: pytest.MonkeyPatch) -> None:
    """The session ends in silence (chunk 7). With the heads stored while recording, no
    unit is rendered at assembly, the last one's included (issue 13: it was rendered
    after stop, no later spoken chunk's Job existing to make it); without them, the heads
    of chunks 2, 5 and 7 are. The tracks are byte for byte the same either way."""
    store, inc, _, _, _ = promoted
    renders = _renders(monkeypatch)
    manifest = promote(store, LAYOUT.promotion_plan_key)
    assert (manifest.assembly, len(renders)) == ("incremental", 0)
    assert {t.track: store.get_bytes(t.key) for t in manifest.tracks} == inc
    monkeypatch.setattr(assembly, "stored_head", lambda *a, **kw: None)
    computed = promote(store, LAYOUT.promotion_plan_key)
    assert len(renders) == 3
    assert {t.track: store.get_bytes(t.key) for t in computed.tracks} == inc


def _reframed(doc: dict[str, Any], data: bytes) -> None:
    """Put `data` as the mix head's bytes, its sha256 and frame count made to match."""
    track = next(t for t in doc["tracks"] if t["track"] == "mix")
    track["mp3"] = base64.b64encode(data).decode()
    track["sha256"] = hashlib.sha256(data).hexdigest()
    track["frames"] = len(split_frames(data))


def _mix_bytes(doc: dict[str, Any]) -> bytes:
    return base64.b64decode(next(t for t in doc["tracks"] if t["track"] == "mix")["mp3"])


def _flip_a_byte(doc: dict[str, Any]) -> None:
    """A bit flipped in the mix's frames, its sha256 left as it was."""
    data = bytearray(_mix_bytes(doc))
    data[len(data) // 2] ^= 0x10
    next(t for t in doc["tracks"] if t["track"] == "mix")["mp3"] = \
        base64.b64encode(bytes(data)).decode()


def _drop_a_frame(doc: dict[str, Any]) -> None:
    """The mix's last frame gone, its sha256 and frame count updated to match."""
    _reframed(doc, b"".join(split_frames(_mix_bytes(doc))[:-1]))


def _other_source(doc: dict[str, Any]) -> None:
    """Made from another raw track of chunk 4 than the plan's."""
    doc["placed"][0]["sources"] = [f"{A}:{'0' * 64}"]


def _other_channels(doc: dict[str, Any]) -> None:
    """The mix made with the other channel count than the plan's."""
    track = next(t for t in doc["tracks"] if t["track"] == "mix")
    track["channels"] = 3 - track["channels"]


def _no_mix(doc: dict[str, Any]) -> None:
    doc["tracks"] = [t for t in doc["tracks"] if t["track"] != "mix"]


SPOILERS: dict[str, Callable[[dict[str, Any]], None] | None] = {
    "missing": None, "flipped": _flip_a_byte, "short": _drop_a_frame,
    "other source": _other_source, "channels": _other_channels, "no mix": _no_mix}


@pytest.mark.parametrize("spoil", list(SPOILERS), ids=list(SPOILERS))
def test_a_missing_or_damaged_head_is_computed_instead(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None], monkeypatch: pytest.MonkeyPatch, spoil: str) -> None:
    """The head of chunk 5's unit (stored by chunk 4's Job) missing, damaged, or not the
    one the plan asks for: assembly computes that unit (one render) and the tracks are
    still the same bytes, made from the pieces; the other stored heads are still used."""
    store, inc, _, _, _ = promoted
    key = LAYOUT.head_after_key(4)
    original = store.get_bytes(key)
    spoiler = SPOILERS[spoil]
    try:
        if spoiler is None:
            store.delete_keys([key])
        else:
            doc = json.loads(original)
            spoiler(doc)
            store.put_json(key, doc)
        renders = _renders(monkeypatch)
        manifest = promote(store, LAYOUT.promotion_plan_key)
        assert (manifest.assembly, manifest.fallback_reason) == ("incremental", None)
        assert len(renders) == 1  # chunk 5's head
        assert {t.track: store.get_bytes(t.key) for t in manifest.tracks} == inc
    finally:
        store.put_bytes(key, original, "application/json")


def test_a_head_that_is_not_json_is_computed_instead(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None], monkeypatch: pytest.MonkeyPatch) -> None:
    store, inc, _, _, _ = promoted
    key = LAYOUT.head_after_key(1)
    original = store.get_bytes(key)
    try:
        store.put_bytes(key, original[: len(original) // 2], "application/json")
        renders = _renders(monkeypatch)
        manifest = promote(store, LAYOUT.promotion_plan_key)
        assert (manifest.assembly, len(renders)) == ("incremental", 1)
        assert {t.track: store.get_bytes(t.key) for t in manifest.tracks} == inc
    finally:
        store.put_bytes(key, original, "application/json")


def test_the_audio_so_far_holds_the_stored_heads_as_the_final_track_does(
        promoted: tuple[ObjectStore, dict[str, bytes], dict[str, bytes], str | None,
                        str | None]) -> None:
    """The live tracks of chunks 0..6 decode to the final tracks' first samples exactly,
    the silence after speech in chunks 2 and 5 included (it was LAME's silent frame from
    the unit's start in the live tracks, the encoder's tail of the speech in the final)."""
    store, inc, _, _, _ = promoted
    manifest = assemble_live(store, LAYOUT, chunks=7, silent=[2, 3, 5])
    assert manifest is not None
    for t in manifest.tracks:
        live = decode_file(store.get_bytes(t.key))
        final = decode_file(inc[t.track])
        assert live.shape[0] > ms_to_samples(12_000), t.track
        assert np.array_equal(live, final[: live.shape[0]]), t.track


# ---------------------------------------------------------------- a session ending in silence

ENDING = MeetingLayout("inc", "123456789012345678", "EnDsInSiLeNcE001")
ENDING_SPEAKERS = [
    Speaker(A, 190, talks=[(300, 2990), (9100, 10990)], markers=[1010, 9510]),
    Speaker(B, 260, talks=[(5200, 8500)], markers=[6010]),
]
ENDING_WINDOWS = [(0, 2000), (2000, 3000), (3000, 5000), (5000, 7000), (7000, 9000),
                  (9000, 11000), (11000, 13000)]
"""Chunk 1 is a spoken chunk of 1 s; 2 and 6 are silent (6, the last, after speech);
chunk 4's raw track is corrupt: its transcode fails, a `chunk-failed` gap after speech."""
ENDING_FAILED = 4
ENDING_MS = 13_000


@pytest.fixture(scope="module")
def ending(s3_server: S3Settings) -> tuple[ObjectStore, dict[str, bytes]]:
    """The session recorded (each chunk's Job run in order, the failed one failing) and
    promoted with no stored head used (the fallback): the store and its tracks."""
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-ending-{os.getpid()}"))
    store.ensure_bucket()
    session = upload_chunks(store, ENDING, ENDING_SPEAKERS, ENDING_WINDOWS, ENDING_MS, [])
    assert [c.index for c in session.chunks if not c.tracks] == [2, 6]
    bad = session.chunks[ENDING_FAILED]
    store.put_bytes(bad.tracks[0].key, b"OggS" + b"\0" * 100)
    for chunk in session.chunks:
        store.put_json(ENDING.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.index == ENDING_FAILED:
            with pytest.raises(InvalidInputError):
                transcode_chunk(store, chunk, ENDING.prefix, ["mp3"], 128, tracks="both")
        elif chunk.tracks:
            transcode_chunk(store, chunk, ENDING.prefix, ["mp3"], 128, tracks="both")
    plan = PromotionPlan(
        guild_id=ENDING.guild_id, meeting_id=ENDING.meeting_id, prefix=ENDING.prefix,
        session_end_ms=ENDING_MS, speakers=[A, B],
        chunks=[c for c in session.chunks if c.index != ENDING_FAILED],
        gaps=[Gap(start_ms=bad.start_ms, end_ms=bad.end_ms, cause="chunk-failed")],
        formats=["mp3"], mp3_bitrate=128)
    store.put_json(ENDING.promotion_plan_key, plan.to_api())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assembly, "stored_head", lambda *a, **kw: None)
        fallback = promote(store, ENDING.promotion_plan_key)
    assert (fallback.assembly, fallback.fallback_reason) == ("incremental", None)
    return store, {t.track: store.get_bytes(t.key) for t in fallback.tracks}


def test_a_session_ending_in_silence_renders_no_unit_after_stop(
        ending: tuple[ObjectStore, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Every silent unit after speech has its head stored while recording: the last
    window's (6: no Job runs after it), the one after the 1 s spoken chunk 1 (whose
    render also decodes chunk 0) and the failed chunk 4's gap. Assembly after stop
    renders no unit (it rendered these three before), and the tracks are byte for byte
    those of the assembly that computes every unit, and of rendering every unit whole."""
    store, fallback = ending
    renders = _renders(monkeypatch)
    manifest = promote(store, ENDING.promotion_plan_key)
    assert (manifest.assembly, manifest.fallback_reason) == ("incremental", None)
    assert len(renders) == 0, len(renders)
    assert {t.track: store.get_bytes(t.key) for t in manifest.tracks} == fallback
    monkeypatch.setattr(assembly, "stored_head", lambda *a, **kw: None)
    monkeypatch.setattr(silence, "HEAD_MS", 10**9)  # every unit rendered whole
    whole = promote(store, ENDING.promotion_plan_key)
    assert len(renders) == 3, len(renders)
    assert {t.track: store.get_bytes(t.key) for t in whole.tracks} == fallback


def test_the_head_after_a_short_spoken_chunk_decodes_the_chunk_before(
        ending: tuple[ObjectStore, dict[str, bytes]]) -> None:
    """Chunk 1 (1 s) is shorter than the ~1.1 s before the unit a head's render decodes:
    its Job places chunk 0 too, as assembly does (`silence.reach_ms`)."""
    store = ending[0]
    head = SilentHeadManifest.model_validate(store.get_json(ENDING.head_after_key(1)))
    assert [(p.index, p.out_start_ms, p.out_end_ms) for p in head.placed] == \
        [(0, 0, 2000), (1, 2000, 3000)]
    assert (head.unit_start_ms, head.from_ms, head.head_ms) == (3000, 0, 4000)


def test_a_session_ending_in_silence_matches_the_single_pass_encode(
        ending: tuple[ObjectStore, dict[str, bytes]]) -> None:
    """Exact length and correlation with the full promotion's single-pass encode, the
    failed chunk's gap and the silence up to stop included."""
    store, fallback = ending
    full = promote(store, ENDING.promotion_plan_key, incremental=False)
    for t in full.tracks:
        a = decode_file(fallback[t.track]).astype(np.int64)
        b = decode_file(store.get_bytes(t.key)).astype(np.int64)
        assert a.shape == b.shape == (ms_to_samples(ENDING_MS), a.shape[1]), t.track
        corr, lag = best_correlation(b, a, ms_to_samples(20))
        assert corr >= 0.99 and lag == 0, (t.track, corr, lag)
