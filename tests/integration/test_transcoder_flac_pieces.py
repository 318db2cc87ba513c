"""Incremental promotion of FLAC final tracks on real SeaweedFS, ffmpeg and libopus: every
chunk's Job stores its unit as FLAC frames beside the MP3 piece; promotion joins them.

The session (2 s chunks): a failed chunk in the middle (its raw track corrupt: a
`chunk-failed` gap, after speech), windows nobody spoke in (chunks without tracks, no
Job), a recorder-restart gap, a pause (cut), speakers absent from most units, a session end
off the chunk grid. FLAC is lossless, so each assembled track is compared sample for sample
with the same plan promoted in full; it must decode with ffmpeg stopping at the first
error (CRC-8 and CRC-16 checked), with STREAMINFO's total samples exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import RawFormat, Speaker, upload_chunks
from voicetrack.audio import ms_to_samples
from voicetrack.chunkspec import Gap
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, PieceManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_transcoder import assembly
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.flacframes import (
    BLOCK,
    crc8,
    crc16,
    encode_number,
    frames_of,
    silent_frames,
    stream_head,
    strip_head,
)
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

A, B, C = "111111111111111111", "222222222222222222", "333333333333333333"
SPEAKERS = [
    Speaker(A, 170, talks=[(300, 1700), (5100, 7700), (23300, 24600)],
            markers=[1010, 6010, 24010]),
    Speaker(B, 240, talks=[(2300, 3600), (16300, 17800)], markers=[3010, 17010],
            mono_coded=True),
    # C talks across chunk 11's start: chunk 12's piece starts its decoder mid-speech
    Speaker(C, 310, talks=[(8300, 9700), (10300, 11600), (24700, 27200)],
            markers=[9010, 11010, 27010]),
]
RESTART = Gap(start_ms=12_000, end_ms=13_000, cause="recorder-restart")
PAUSE = Gap(start_ms=21_000, end_ms=23_000, cause="paused")
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000), (6000, 8000), (8000, 10000),
           (10000, 12000), (13000, 15000), (15000, 17000), (17000, 19000), (19000, 21000),
           (23000, 25000), (25000, 27000), (27000, 28000)]
FAILED = 3
"""Chunk [6000, 8000), where A talks: its window is silence after speech."""
SILENT = [6, 9]
"""Chunks [13000, 15000) and [19000, 21000) (before the pause): nobody spoke, no tracks,
no Job."""
SESSION_MS = 28_710
OUTPUT_MS = SESSION_MS - 2000
FORMATS = ["mp3", "flac"]
_buckets = itertools.count(1)


@dataclasses.dataclass
class Promoted:
    store: ObjectStore
    layout: MeetingLayout
    inc: FinalManifest
    full: FinalManifest
    inc_flac: dict[str, bytes]
    full_flac: dict[str, bytes]
    seconds: tuple[float, float]
    """Wall time of the assembly and of the full promotion."""


def record(s3_server: S3Settings, meeting: str, raw_format: RawFormat,
           tracks: str = "both", formats: list[str] | None = None
           ) -> tuple[ObjectStore, MeetingLayout]:
    """Upload the chunks, transcode each as its Job would (the failed one failing, the
    silent one without a Job), write the plan the operator would build; the session's
    `formats` (default `FORMATS`)."""
    formats = formats or FORMATS
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-flac-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    layout = MeetingLayout("inc", "123456789012345678", meeting)
    session = upload_chunks(store, layout, SPEAKERS, WINDOWS, SESSION_MS, [RESTART, PAUSE],
                            raw_format)
    assert [c.index for c in session.chunks if not c.tracks] == SILENT
    bad = session.chunks[FAILED]
    store.put_bytes(bad.tracks[0].key, b"OggS" + b"\0" * 100)
    for chunk in session.chunks:
        store.put_json(layout.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.index == FAILED:
            with pytest.raises(InvalidInputError):
                transcode_chunk(store, chunk, layout.prefix, formats, 128, tracks=tracks)
        elif chunk.tracks:
            transcode_chunk(store, chunk, layout.prefix, formats, 128, tracks=tracks)
    failed = Gap(start_ms=bad.start_ms, end_ms=bad.end_ms, cause="chunk-failed")
    plan = PromotionPlan(
        guild_id=layout.guild_id, meeting_id=layout.meeting_id, prefix=layout.prefix,
        session_end_ms=SESSION_MS, speakers=[A, B, C],
        chunks=[c.model_copy(update={"gap": None}) for c in session.chunks
                if c.index != FAILED],
        gaps=sorted([RESTART, PAUSE, failed], key=lambda g: g.start_ms), formats=formats,
        mp3_bitrate=128, tracks=tracks)
    store.put_json(layout.promotion_plan_key, plan.to_api())
    return store, layout


def both(s3_server: S3Settings, meeting: str, raw_format: RawFormat,
         tracks: str = "both") -> Promoted:
    store, layout = record(s3_server, meeting, raw_format, tracks)
    t0 = time.monotonic()
    inc = promote(store, layout.promotion_plan_key)
    t1 = time.monotonic()
    inc_flac = {t.track: store.get_bytes(t.key) for t in inc.tracks if t.format == "flac"}
    t2 = time.monotonic()
    full = promote(store, layout.promotion_plan_key, incremental=False)
    t3 = time.monotonic()
    full_flac = {t.track: store.get_bytes(t.key) for t in full.tracks if t.format == "flac"}
    return Promoted(store, layout, inc, full, inc_flac, full_flac, (t1 - t0, t3 - t2))


@pytest.fixture(scope="module")
def opus(s3_server: S3Settings) -> Promoted:
    return both(s3_server, "FlAcPiEcEsOpUs01", "ogg-opus")


@pytest.fixture(scope="module")
def pcm(s3_server: S3Settings) -> Promoted:
    return both(s3_server, "FlAcPiEcEsPcM001", "pcm-s16le")


def strict_decode(data: bytes) -> np.ndarray:
    """Samples of a FLAC file, int16 (n, channels), decoded by ffmpeg stopping at the
    first error with every check on (CRC-8 of headers, CRC-16 of frames)."""
    channels = ((data[20] >> 1) & 0x07) + 1
    with tempfile.NamedTemporaryFile(suffix=".flac") as f:
        f.write(data)
        f.flush()
        proc = subprocess.run(
            ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin",
             "-err_detect", "crccheck+bitstream+buffer+explode", "-xerror", "-i", f.name,
             "-f", "s16le", "-ac", str(channels), "pipe:1"], capture_output=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr.decode()
    return np.frombuffer(proc.stdout, dtype="<i2").reshape(-1, channels)


def streaminfo_samples(data: bytes) -> int:
    """Total samples of STREAMINFO (RFC 9639 §8.2: the 36 bits after rate, channels,
    bit depth)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0
    return int.from_bytes(data[18:26], "big") & ((1 << 36) - 1)


def check_assembled(p: Promoted) -> None:
    assert p.inc.assembly == "incremental", p.inc.fallback_reason
    assert [(t.track, t.format) for t in p.inc.tracks] == [
        (t.track, t.format) for t in p.full.tracks]
    assert set(p.inc_flac) == {A, B, C, MIX_TRACK}
    n = ms_to_samples(OUTPUT_MS)
    for track, data in p.inc_flac.items():
        assert streaminfo_samples(data) == n, track
        frames = frames_of(strip_head(data), 0)
        assert all(f.header.variable for f in frames)
        assert sum(f.header.block for f in frames) == n
        assert strict_decode(data).shape[0] == n, track


def test_pcm_raw_flac_is_the_full_promotion_sample_for_sample(pcm: Promoted) -> None:
    """PCM raw chunks: every assembled FLAC track decodes to exactly the full promotion's
    samples, the failed chunk's window, the silent chunk, the restart gap, the cut pause
    and the speakers' absences included."""
    check_assembled(pcm)
    for track, data in pcm.inc_flac.items():
        got, want = strict_decode(data), strict_decode(pcm.full_flac[track])
        assert got.shape == want.shape and np.array_equal(got, want), track
    print(f"PCM raw, {OUTPUT_MS} ms x {len(pcm.inc_flac)} tracks: assembled "
          f"{pcm.seconds[0]:.2f} s, full {pcm.seconds[1]:.2f} s")


def test_opus_flac_is_the_full_promotion_but_where_a_decoder_restarts_mid_speech(
        opus: Promoted) -> None:
    """Ogg Opus raw chunks: exactly the full promotion's samples, except in a unit whose
    piece started its Opus decoder while a speaker talked (the render of unit k decodes
    from chunk k-1's start with a fresh decoder, `flacpieces.py`): here C (and so the mix)
    in chunk 12's unit, decoded from 25000 ms while C talks 24700-27200. There they may
    differ by a few LSB (printed), as the MP3 pieces' PCM does."""
    check_assembled(opus)
    restart = (ms_to_samples(27000 - 2000), ms_to_samples(28000 - 2000))  # output time
    for track, data in opus.inc_flac.items():
        got, want = strict_decode(data), strict_decode(opus.full_flac[track])
        assert got.shape == want.shape, track
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32)).max(axis=1)
        inside = diff[restart[0]: restart[1]] if track in (C, MIX_TRACK) else diff[:0]
        outside = diff.copy()
        if inside.size:
            outside[restart[0]: restart[1]] = 0
        assert not outside.any(), (track, np.flatnonzero(outside)[:5])
        print(f"{track}: largest difference {int(diff.max())} LSB, "
              f"{int(np.count_nonzero(diff))} samples differ")
        assert diff.max() <= 64, track
    print(f"Opus raw, {OUTPUT_MS} ms x {len(opus.inc_flac)} tracks: assembled "
          f"{opus.seconds[0]:.2f} s, full {opus.seconds[1]:.2f} s")


@pytest.mark.parametrize("tracks, names", [("mixed", {MIX_TRACK}), ("perSpeaker", {A, B, C})])
def test_mixed_or_per_speaker_only(s3_server: S3Settings, tracks: str, names: set[str]
                                   ) -> None:
    """`tracks` mixed (the speakers rendered for the mix, not stored) or perSpeaker: the
    FLAC tracks asked for, assembled, sample for sample the full promotion's."""
    p = both(s3_server, f"FlAcTrAcKs{tracks[:6]:0<6}", "pcm-s16le", tracks)
    assert p.inc.assembly == "incremental", p.inc.fallback_reason
    assert set(p.inc_flac) == names
    for track, data in p.inc_flac.items():
        assert streaminfo_samples(data) == ms_to_samples(OUTPUT_MS)
        assert np.array_equal(strict_decode(data), strict_decode(p.full_flac[track])), track


def test_flac_pieces_are_stored_beside_the_mp3_ones(pcm: Promoted) -> None:
    store, layout = pcm.store, pcm.layout
    for index in range(len(WINDOWS)):
        key = layout.piece_manifest_key(index)
        if index == FAILED or index in SILENT:
            assert not store.exists(key)
            continue
        piece = PieceManifest.model_validate(store.get_json(key))
        unit = ms_to_samples(piece.unit_end_ms) - ms_to_samples(piece.unit_start_ms)
        for t in piece.tracks:
            assert t.flac is not None and t.flac.samples == unit
            assert t.flac.key == layout.piece_key(index, t.track, "flac")
            frames = frames_of(store.get_bytes(t.flac.key),
                               ms_to_samples(piece.unit_start_ms))
            assert len(frames) == t.flac.frames


def test_a_bad_flac_piece_falls_back_to_full_promotion(
        s3_server: S3Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tampered FLAC piece, a piece.json whose FLAC samples lie, a piece.json made
    without FLAC (as before FLAC pieces): each makes promotion run in full (saying why),
    and the FLAC tracks are still the whole session; restored, it assembles again. A
    meeting as long as `READABLE_SAMPLES` is promoted in full too."""
    store, layout = record(s3_server, "FlAcFaLlBaCk0001", "pcm-s16le")
    key = layout.piece_manifest_key(4)
    piece = PieceManifest.model_validate(store.get_json(key))
    flac = piece.tracks[0].flac
    assert flac is not None
    good = store.get_bytes(flac.key)
    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0x01
    lying = piece.model_copy(update={"tracks": [
        t.model_copy(update={"flac": t.flac.model_copy(update={"samples": 96_001})})
        if t.flac else t for t in piece.tracks]})
    old = piece.model_copy(update={"tracks": [
        t.model_copy(update={"flac": None}) for t in piece.tracks]})
    damages = {
        "tampered bytes": (lambda: store.put_bytes(flac.key, bytes(tampered)), flac.key),
        "samples": (lambda: store.put_json(key, lying.to_api()), "samples"),
        "no FLAC": (lambda: store.put_json(key, old.to_api()), "no FLAC piece"),
    }
    n = ms_to_samples(OUTPUT_MS)
    for what, (damage, reason) in damages.items():
        damage()
        manifest = promote(store, layout.promotion_plan_key)
        assert manifest.assembly == "full", what
        assert reason in (manifest.fallback_reason or ""), (what, manifest.fallback_reason)
        for t in manifest.tracks:
            if t.format == "flac":
                data = store.get_bytes(t.key)
                assert strict_decode(data).shape[0] == n
        store.put_bytes(flac.key, good)
        store.put_json(key, piece.to_api())
    monkeypatch.setattr(assembly, "READABLE_SAMPLES", n)
    manifest = promote(store, layout.promotion_plan_key)
    assert manifest.assembly == "full" and "2^31" in (manifest.fallback_reason or "")
    monkeypatch.undo()
    assert promote(store, layout.promotion_plan_key).assembly == "incremental"


def _decoded_after(path: str, start: int) -> int:
    """Samples ffmpeg decodes from `path` (mono) after sample `start`."""
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-xerror", "-i", path, "-af",
         f"atrim=start_sample={start}", "-f", "s16le", "pipe:1"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return len(proc.stdout) // 2


def test_ffmpeg_stops_reading_variable_blocksize_flac_at_2_31(tmp_path: Path) -> None:
    """Why `flacpieces.READABLE_SAMPLES`: ffmpeg reads a variable-blocksize stream (what
    assembly writes) only to sample 2^31 + 1024, silently, and a fixed-blocksize one
    (what the full promotion writes) to its end. The same 2^31 + 96 000 samples of
    silence, CONSTANT frames both ways. Should a newer ffmpeg read both to the end, this
    fails, and the limit can go."""
    n = (1 << 31) + 96_000
    variable, blocks = silent_frames(n, 1, 0)
    fixed = bytearray()
    for number, block in enumerate(blocks):  # the same frames, numbered by frame
        head = bytes([0xFF, 0xF8, 0x7A, 0x08]) + encode_number(number) + (
            block - 1).to_bytes(2, "big")
        frame = head + bytes([crc8(head)]) + b"\x00\x00\x00"
        fixed += frame + crc16(frame).to_bytes(2, "big")
    start = (1 << 31) - 48_000
    got = {}
    for name, frames, low in (("variable", variable, min(blocks[:-1])),
                              ("fixed", bytes(fixed), BLOCK)):
        path = tmp_path / f"{name}.flac"
        path.write_bytes(stream_head(low, BLOCK, 1, n) + frames)
        got[name] = _decoded_after(str(path), start)
    assert got == {"variable": 48_000 + 1024, "fixed": n - start}, got
