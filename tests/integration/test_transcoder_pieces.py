"""Incremental promotion on real SeaweedFS, ffmpeg and libopus: every chunk's transcode
makes its piece of the final MP3 tracks; promotion assembles them.

The session: three speakers over 2 s chunks with a recorder-restart gap (silence), a pause
(cut), a chunk whose raw track is corrupt (its transcode fails: a `chunk-failed` gap) and
a session end off the slot grid. The assembled tracks are checked against the same plan
promoted in full (one decode, one encode per track): exact length, the LAME tag, markers
at their true time, correlation, no step at chunk boundaries, and the speech timeline
against where the speakers talked. Damaged or missing pieces fall back to full promotion.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pytest

from tests.audio_helpers import (
    Speaker,
    best_correlation,
    decode_file,
    session_to_output_ms,
    upload_chunks,
)
from voicetrack.audio import ms_to_samples
from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, PieceManifest, PromotionPlan, SpeechTimeline
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.mp3grid import (
    ENCODER_DELAY,
    FRAME,
    TOTAL_DELAY,
    crc16_lame,
    owned_end,
)
from voicetrack_transcoder.promote import promote
from voicetrack_transcoder.speech import HANGOVER_MS

pytestmark = pytest.mark.integration

LAYOUT = MeetingLayout("inc", "123456789012345678", "InCrEmEnTaLpRoMo")
A, B, C = "111111111111111111", "222222222222222222", "333333333333333333"
SPEAKERS = [
    Speaker(A, 170, talks=[(300, 2500), (5100, 9100), (13500, 15500), (27000, 30000)],
            markers=[1010, 6010, 14010, 28510]),
    Speaker(B, 240, talks=[(2700, 4600), (10000, 12000), (16500, 19000), (30500, 33000)],
            markers=[3900, 11030, 18010, 31990]),
    Speaker(C, 310, talks=[(7000, 8500), (19500, 22500), (26100, 26900)],
            markers=[7990, 21000], mono_coded=True),
]
RESTART = Gap(start_ms=12_000, end_ms=13_000, cause="recorder-restart")
PAUSE = Gap(start_ms=23_000, end_ms=26_000, cause="paused")
WINDOWS = ([(0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 10000),
            (10000, 12000), (13000, 15000), (15000, 17000), (17000, 19000),
            (19000, 21000), (21000, 23000), (26000, 28000), (28000, 30000), (30000, 32000),
            (32000, 34000)])
FAILED = 8
"""Index of the chunk whose raw track is corrupt: [17000, 19000) is silence."""
SESSION_MS = 34_510
OUTPUT_MS = SESSION_MS - 3000
_buckets = itertools.count(1)


def _store(s3_server: S3Settings) -> ObjectStore:
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-pieces-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    return store


@dataclasses.dataclass
class Run:
    store: ObjectStore
    layout: MeetingLayout
    plan: PromotionPlan
    chunks: list[ChunkSpec]
    gaps: list[Gap]


def record(store: ObjectStore, layout: MeetingLayout, phases: dict[str, int] | None = None
           ) -> Run:
    """Upload the chunks (each speaker's tracks at `phases`), then transcode each in order
    as its Job would (chunk.json first, as the operator writes it), the corrupt one
    failing; return the plan the operator would build."""
    session = upload_chunks(store, layout, SPEAKERS, WINDOWS, SESSION_MS, [RESTART, PAUSE],
                            phases=phases)
    bad = session.chunks[FAILED]
    store.put_bytes(bad.tracks[0].key, b"OggS" + b"\0" * 100)
    for chunk in session.chunks:
        store.put_json(layout.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.index == FAILED:
            with pytest.raises(InvalidInputError):
                transcode_chunk(store, chunk, layout.prefix, ["mp3"], 128, tracks="both")
        else:
            transcode_chunk(store, chunk, layout.prefix, ["mp3"], 128, tracks="both")
    failed = Gap(start_ms=bad.start_ms, end_ms=bad.end_ms, cause="chunk-failed")
    gaps = sorted([RESTART, PAUSE, failed], key=lambda g: g.start_ms)
    done = [c.model_copy(update={"gap": None}) for c in session.chunks if c.index != FAILED]
    plan = PromotionPlan(guild_id=layout.guild_id, meeting_id=layout.meeting_id,
                         prefix=layout.prefix, session_end_ms=SESSION_MS,
                         speakers=[A, B, C], chunks=done, gaps=gaps, formats=["mp3"],
                         mp3_bitrate=128)
    store.put_json(layout.promotion_plan_key, plan.to_api())
    return Run(store, layout, plan, session.chunks, gaps)


@dataclasses.dataclass
class Both:
    run: Run
    manifest: FinalManifest
    full: FinalManifest
    inc: dict[str, bytes]
    ref: dict[str, bytes]
    timeline: SpeechTimeline


@pytest.fixture(scope="module")
def both(s3_server: S3Settings) -> Both:
    store = _store(s3_server)
    run = record(store, LAYOUT)
    manifest = promote(store, LAYOUT.promotion_plan_key)
    inc = {t.track: store.get_bytes(t.key) for t in manifest.tracks}
    timeline = SpeechTimeline.model_validate(store.get_json(LAYOUT.timeline_key))
    full = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    ref = {t.track: store.get_bytes(t.key) for t in full.tracks}
    return Both(run, manifest, full, inc, ref, timeline)


def test_pieces_are_made_by_the_chunk_transcodes(both: Both) -> None:
    store = both.run.store
    for chunk in both.run.chunks:
        key = LAYOUT.piece_manifest_key(chunk.index)
        if chunk.index == FAILED:
            assert not store.exists(key)
            continue
        piece = PieceManifest.model_validate(store.get_json(key))
        assert piece.prev_used == (chunk.index not in (0, FAILED + 1))
        assert piece.end_frame >= piece.first_frame
        for t in piece.tracks:
            data = store.get_bytes(t.key)
            assert (len(data), sha256_hex(data)) == (t.bytes, t.sha256)


def test_assembled_from_pieces_with_the_right_shape(both: Both) -> None:
    m = both.manifest
    assert m.assembly == "incremental" and m.fallback_reason is None
    assert (m.duration_ms, m.paused_ms) == (OUTPUT_MS, 3000)
    assert m.timeline_key == LAYOUT.timeline_key
    assert [(t.track, t.channels) for t in m.tracks] == [
        (t.track, t.channels) for t in both.full.tracks]
    assert {t.track: t.channels for t in m.tracks} == {A: 2, B: 2, C: 1, MIX_TRACK: 2}
    for t in m.tracks:
        assert (t.bytes, t.sha256) == (len(both.inc[t.track]), sha256_hex(both.inc[t.track]))


def _info_tag(data: bytes, check_crc: bool = True) -> tuple[int, int, int]:
    """(delay, padding, frames) from the LAME Info tag, checking its CRC (LAME's: over the
    frame's bytes before the CRC field; ffmpeg's muxer takes 190 bytes whatever the side
    information's length, so for mono files its CRC covers its own field)."""
    at = data.find(b"Info")
    assert 0 < at < 4096
    start = data.rfind(b"\xff\xfb", 0, at)
    frames = int.from_bytes(data[at + 8: at + 12], "big")
    lame = at + 120
    value = int.from_bytes(data[lame + 21: lame + 24], "big")
    crc = int.from_bytes(data[lame + 34: lame + 36], "big")
    if check_crc:
        assert crc16_lame(data[start: lame + 34]) == crc
    return value >> 12, value & 0xFFF, frames


def test_exact_length_and_gapless_tag(both: Both) -> None:
    n = ms_to_samples(OUTPUT_MS)
    for track, data in both.inc.items():
        pcm = decode_file(data)
        assert pcm.shape[0] == n, track
        delay, padding, frames = _info_tag(data)
        assert delay == ENCODER_DELAY
        assert frames * 1152 - delay - padding == n
        # as many frames as one encode of the same audio
        assert _info_tag(both.ref[track], check_crc=False)[2] == frames


def _click(pcm: np.ndarray, around_ms: int, search_ms: int = 200) -> int:
    a = ms_to_samples(around_ms - search_ms)
    b = ms_to_samples(around_ms + search_ms)
    mono = pcm[a:b].astype(np.int64).sum(axis=1)
    return (a + int(np.argmax(np.abs(np.diff(mono, 2))))) // ms_to_samples(1)


def test_markers_at_their_true_time(both: Both) -> None:
    failed = (WINDOWS[FAILED][0], WINDOWS[FAILED][1])
    for speaker in SPEAKERS:
        for at in speaker.markers:
            if failed[0] <= at < failed[1]:
                continue
            want = session_to_output_ms(at, both.run.gaps)
            for track in (speaker.user_id, MIX_TRACK):
                got = _click(decode_file(both.inc[track]), want)
                assert abs(got - want) <= 20, (track, at, want, got)


def test_correlates_with_the_single_pass_encode(both: Both) -> None:
    for track in both.inc:
        inc, ref = decode_file(both.inc[track]), decode_file(both.ref[track])
        corr, lag = best_correlation(ref, inc, ms_to_samples(20))
        assert corr >= 0.99 and lag == 0, (track, corr, lag)


def _unit_boundaries_ms(run: Run) -> list[int]:
    ends = [c.end_ms for c in run.chunks if c.end_ms < SESSION_MS]
    return sorted({session_to_output_ms(t, run.gaps) for t in ends})


def _junctions(run: Run) -> list[int]:
    """Output samples where two encodes meet: the first sample each unit's first frame
    decodes to (`mp3grid`: frame g decodes to samples from g*1152 - 1105 on)."""
    return [owned_end(ms_to_samples(t)) * FRAME - TOTAL_DELAY
            for t in _unit_boundaries_ms(run)]


def test_no_step_at_chunk_boundaries(both: Both) -> None:
    """Around every junction (where two encodes meet, one frame either side for the MDCT
    overlap) the assembled track differs from the single-pass encode no more than codec
    noise does."""
    half = FRAME
    for track in both.inc:
        inc = decode_file(both.inc[track]).astype(np.int64)
        ref = decode_file(both.ref[track]).astype(np.int64)
        err = np.abs(inc - ref).max(axis=1)
        scale = max(int(np.abs(ref).max()), 1)
        for c in _junctions(both.run):
            near = err[max(c - half, 0): c + half].max()
            assert near <= 0.08 * scale, (track, c, int(near), scale)
        # and the steps of the assembled track are those of the single-pass one
        steps_inc = np.abs(np.diff(inc, axis=0)).max()
        steps_ref = np.abs(np.diff(ref, axis=0)).max()
        assert steps_inc <= steps_ref * 1.1 + 200, (track, steps_inc, steps_ref)


def test_speech_timeline_matches_the_talks(both: Both) -> None:
    timeline = both.timeline
    assert timeline.duration_ms == OUTPUT_MS
    failed = WINDOWS[FAILED]
    for speaker in SPEAKERS:
        got = timeline.speakers[speaker.user_id]
        want = []
        for start, end in speaker.talks:
            if failed[0] <= start < failed[1]:
                start = failed[1]
            if failed[0] < end <= failed[1]:
                end = failed[0]
            want.append((session_to_output_ms(start, both.run.gaps),
                         session_to_output_ms(end, both.run.gaps) + HANGOVER_MS))
        assert len(got) == len(want), (speaker.user_id, got, want)
        for (a, b), (wa, wb) in zip(got, want, strict=True):
            assert abs(a - wa) <= 40 and abs(b - wb) <= 60, (speaker.user_id, got, want)
    full = SpeechTimeline.model_validate(both.run.store.get_json(LAYOUT.timeline_key))
    assert full.speakers.keys() == timeline.speakers.keys()  # the full path writes one too


def test_a_bad_piece_falls_back_to_full_promotion(s3_server: S3Settings) -> None:
    """A missing piece blob, a corrupt one, a missing piece.json: each makes promotion run
    in full (and say why); with the piece restored it assembles again."""
    store = _store(s3_server)
    layout = MeetingLayout("inc", "123456789012345678", "FaLlBaCkPiEcEs01")
    record(store, layout)
    manifest_key = layout.piece_manifest_key(3)
    piece = PieceManifest.model_validate(store.get_json(manifest_key))
    blob = piece.tracks[0].key
    good = store.get_bytes(blob)
    corrupt = bytearray(good)
    corrupt[500] ^= 0xFF
    damages = {
        "missing blob": lambda: store.delete_keys([blob]),
        "corrupt blob": lambda: store.put_bytes(blob, bytes(corrupt)),
        "missing piece.json": lambda: store.delete_keys([manifest_key]),
    }
    for what, damage in damages.items():
        damage()
        manifest = promote(store, layout.promotion_plan_key)
        assert manifest.assembly == "full", what
        reason = manifest.fallback_reason or ""
        assert "000003" in reason or "chunk 3" in reason, (what, reason)
        for t in manifest.tracks:
            assert decode_file(store.get_bytes(t.key)).shape[0] == ms_to_samples(OUTPUT_MS)
        store.put_bytes(blob, good)
        store.put_json(manifest_key, piece.to_api())
    assert promote(store, layout.promotion_plan_key).assembly == "incremental"


def test_audio_so_far_is_the_final_tracks_up_to_the_last_piece(both: Both) -> None:
    """While recording, the pieces from chunk 0 on give the tracks so far at stable keys:
    here the run stops before the failed chunk, and its audio is the final track's
    beginning (the same frames)."""
    store = both.run.store
    live = assemble_live(store, LAYOUT)
    assert live is not None
    last = PieceManifest.model_validate(store.get_json(LAYOUT.piece_manifest_key(FAILED - 1)))
    n = last.end_frame * FRAME - TOTAL_DELAY
    assert live.duration_ms == n // 48
    assert {t.track for t in live.tracks} == {A, B, C, MIX_TRACK}
    for t in live.tracks:
        assert t.key == LAYOUT.live_key(t.track, "mp3")
        data = store.get_bytes(t.key)  # a live track: its size and ETag, no sha256
        assert (len(data), store.stat(t.key)[1], t.sha256) == (t.bytes, t.etag, None)
        pcm = decode_file(data)
        assert pcm.shape[0] == n
        final = decode_file(both.inc[t.track])[:n]
        assert np.array_equal(pcm[: n - FRAME], final[: n - FRAME]), t.track
    assert store.get_json(LAYOUT.live_manifest_key)["durationMs"] == live.duration_ms


PHASES = {A: 350, C: 959}
"""`phaseSamples` of the phased run: A 7.3 ms, B 0, C a slot less one sample."""


def test_phases_delay_each_speaker_and_the_pieces_agree(both: Both, s3_server: S3Settings
                                                        ) -> None:
    """The same session with every track of A at phase 350 and of C at 959: promoted in
    full, A and C come out exactly that many samples later than unphased (B, and the
    lengths, unchanged), and the tracks assembled from pieces (and from the stored heads
    of the silences after them) match that full promotion as the unphased ones do."""
    store = _store(s3_server)
    layout = MeetingLayout("inc", "123456789012345678", "PhAsEdPiEcEs0001")
    record(store, layout, PHASES)
    inc_m = promote(store, layout.promotion_plan_key)
    assert inc_m.assembly == "incremental" and inc_m.fallback_reason is None
    inc = {t.track: decode_file(store.get_bytes(t.key)) for t in inc_m.tracks}
    full_m = promote(store, layout.promotion_plan_key, incremental=False)
    full = {t.track: decode_file(store.get_bytes(t.key)) for t in full_m.tracks}
    for speaker in (A, B, C):
        ref = decode_file(both.ref[speaker])
        assert full[speaker].shape == ref.shape
        corr, lag = best_correlation(ref, full[speaker], ms_to_samples(20))
        assert corr >= 0.99 and lag == PHASES.get(speaker, 0), (speaker, corr, lag)
    for track in full:
        assert inc[track].shape[0] == ms_to_samples(OUTPUT_MS)
        corr, lag = best_correlation(full[track], inc[track], ms_to_samples(20))
        assert corr >= 0.99 and lag == 0, (track, corr, lag)
        err = np.abs(inc[track].astype(np.int64) - full[track]).max(axis=1)
        scale = max(int(np.abs(full[track]).max()), 1)
        for c in _junctions(both.run):
            near = err[max(c - FRAME, 0): c + FRAME].max()
            assert near <= 0.08 * scale, (track, c, int(near), scale)
