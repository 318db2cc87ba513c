"""Incremental promotion of a FLAC-only session (`spec.output.formats: [flac]`, issue 13)
on real SeaweedFS, ffmpeg and libopus: its chunks' Jobs make the MP3 pieces (units,
peaks, voice activity, the audio so far) and the FLAC pieces beside them; promotion joins
the FLAC pieces and writes FLAC only (no MP3 final object, no MP3 in the manifest).

The session is `test_transcoder_flac_pieces`'s (a failed chunk, chunks nobody spoke in,
a restart gap, a cut pause, a session end off the chunk grid), PCM raw chunks, so every
assembled track is compared sample for sample with the same plan promoted in full.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from tests.integration import test_transcoder_flac_pieces as base
from voicetrack.audio import ms_to_samples
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, PieceManifest, SpeechTimeline
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

FLAC = ["flac"]
TRACKS = {base.A, base.B, base.C, MIX_TRACK}


@dataclasses.dataclass
class FlacOnly:
    store: ObjectStore
    layout: MeetingLayout
    inc: FinalManifest
    full: FinalManifest
    inc_keys: list[str]
    """Every object under `final/` after the assembly (before the full promotion)."""
    inc_flac: dict[str, bytes]
    full_flac: dict[str, bytes]
    seconds: tuple[float, float]


def flac_bytes(store: ObjectStore, manifest: FinalManifest) -> dict[str, bytes]:
    return {t.track: store.get_bytes(t.key) for t in manifest.tracks}


@pytest.fixture(scope="module")
def flac_only(s3_server: S3Settings) -> FlacOnly:
    store, layout = base.record(s3_server, "FlAcOnLyPcM00001", "pcm-s16le", formats=FLAC)
    t0 = time.monotonic()
    inc = promote(store, layout.promotion_plan_key)
    t1 = time.monotonic()
    inc_keys = store.list_keys(layout.final_root)
    inc_flac = flac_bytes(store, inc)
    t2 = time.monotonic()
    full = promote(store, layout.promotion_plan_key, incremental=False)
    t3 = time.monotonic()
    return FlacOnly(store, layout, inc, full, inc_keys, inc_flac, flac_bytes(store, full),
                    (t1 - t0, t3 - t2))


def check_flac_only(store: ObjectStore, layout: MeetingLayout, m: FinalManifest,
                    keys: list[str]) -> None:
    """FLAC tracks only, every one the whole output long; no MP3 object under final/."""
    assert {(t.track, t.format) for t in m.tracks} == {(n, "flac") for n in TRACKS}
    assert [k for k in keys if k.endswith(".mp3")] == []
    for t in m.tracks:
        assert t.key == layout.final_key(t.track, "flac") and t.key in keys
        assert t.peaks_key in keys and t.overview_key in keys
        data = store.get_bytes(t.key)
        assert base.streaminfo_samples(data) == ms_to_samples(base.OUTPUT_MS), t.track


def test_the_chunks_get_mp3_and_flac_pieces(flac_only: FlacOnly) -> None:
    """Every transcoded chunk of the FLAC-only session has its piece: the MP3 frames (what
    the units, peaks and voice activity hang on) and the FLAC frames beside them."""
    store, layout = flac_only.store, flac_only.layout
    made = 0
    for index in range(len(base.WINDOWS)):
        key = layout.piece_manifest_key(index)
        if index == base.FAILED or index in base.SILENT:
            assert not store.exists(key)
            continue
        piece = PieceManifest.model_validate(store.get_json(key))
        for t in piece.tracks:
            assert t.key == layout.piece_key(index, t.track, "mp3") and store.exists(t.key)
            assert t.flac is not None and store.exists(t.flac.key)
        made += 1
    assert made == len(base.WINDOWS) - 1 - len(base.SILENT)


def test_flac_only_is_assembled_sample_for_sample_the_full_promotion(
        flac_only: FlacOnly) -> None:
    """The assembly writes FLAC only: no MP3 final object, no MP3 in the manifest, no
    fallback; every track decodes (strictly) to exactly the full promotion's samples, and
    both list the same tracks."""
    p = flac_only
    assert (p.inc.assembly, p.inc.fallback_reason) == ("incremental", None)
    assert p.full.assembly == "full"
    check_flac_only(p.store, p.layout, p.inc, p.inc_keys)
    assert [(t.track, t.format) for t in p.inc.tracks] == [
        (t.track, t.format) for t in p.full.tracks]
    for track, data in p.inc_flac.items():
        got, want = base.strict_decode(data), base.strict_decode(p.full_flac[track])
        assert got.shape == want.shape and np.array_equal(got, want), track
    timeline = SpeechTimeline.model_validate(p.store.get_json(p.layout.timeline_key))
    assert timeline.duration_ms == base.OUTPUT_MS
    assert set(timeline.speakers) == {base.A, base.B, base.C}
    print(f"FLAC only, PCM raw, {base.OUTPUT_MS} ms x {len(p.inc_flac)} tracks: assembled "
          f"{p.seconds[0]:.2f} s, full {p.seconds[1]:.2f} s")


def test_a_flac_only_session_has_the_audio_so_far(flac_only: FlacOnly) -> None:
    """The live Job joins a FLAC-only session's MP3 pieces as it does an MP3 session's."""
    chunks = len(base.WINDOWS)
    live = assemble_live(flac_only.store, flac_only.layout, chunks,
                         silent=[base.FAILED, *base.SILENT])
    assert live is not None
    assert {(t.track, t.format) for t in live.tracks} == {(n, "mp3") for n in TRACKS}


def test_a_missing_flac_piece_falls_back_to_full_promotion(s3_server: S3Settings) -> None:
    """A FLAC piece gone: the whole FLAC-only meeting is promoted in full, the manifest
    saying why, FLAC only still; put back, it assembles again."""
    store, layout = base.record(s3_server, "FlAcOnLyMiSsInG1", "pcm-s16le", formats=FLAC)
    piece = PieceManifest.model_validate(store.get_json(layout.piece_manifest_key(4)))
    flac = piece.tracks[0].flac
    assert flac is not None
    good = store.get_bytes(flac.key)
    assert store.delete_keys([flac.key]) == 1
    m = promote(store, layout.promotion_plan_key)
    assert m.assembly == "full" and flac.key in (m.fallback_reason or ""), m.fallback_reason
    check_flac_only(store, layout, m, store.list_keys(layout.final_root))
    full = flac_bytes(store, m)
    store.put_bytes(flac.key, good)
    again = promote(store, layout.promotion_plan_key)
    assert (again.assembly, again.fallback_reason) == ("incremental", None)
    for t in again.tracks:  # the same audio both ways
        assert np.array_equal(base.strict_decode(store.get_bytes(t.key)),
                              base.strict_decode(full[t.track])), t.track
