"""`voicetrack-transcoder promote` on real SeaweedFS and real ffmpeg.

The main scenario: three synthetic speakers (one mono-coded, as Discord clients send) over
32 one-second chunks with silences, a speaker absent from whole chunks, a recorder gap
(silence in the output), a pause (cut from the output) and a session end between slots
(padding). Every final track is checked against the speakers' known audio.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import (
    Session,
    Speaker,
    best_correlation,
    decode_file,
    file_channels,
    output_time,
    session_to_output_ms,
    upload_chunks,
)
from voicetrack.audio import FRAME_MS, OPUS_SILENCE_FRAME, ms_to_samples
from voicetrack.chunkspec import Gap
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.oggopus import decode_ogg_opus
from voicetrack.termination import TerminationReport
from voicetrack_transcoder.opusdec import OpusDecoder
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

TRANSCODER = str(Path(sys.executable).parent / "voicetrack-transcoder")
LAYOUT = MeetingLayout("recordings", "123456789012345678", "PrOmOtEmEeTiNg01")
A, B, C = "111111111111111111", "222222222222222222", "333333333333333333"
SPEAKERS = [
    Speaker(A, 170, talks=[(300, 2500), (5000, 9000), (13500, 15000), (27000, 30000)],
            markers=[3010, 10500, 16500, 31010]),
    Speaker(B, 240, talks=[(2000, 6000), (14000, 18000), (30000, 34000)],
            markers=[1000, 11500, 20000, 35000]),
    Speaker(C, 310, talks=[(7000, 11000), (19000, 22500), (26500, 28000)],
            markers=[6500, 13100, 33000], mono_coded=True),
]
"""A and B send stereo-coded packets (as a bot may), C mono-coded ones (as a client does)."""
RESTART = Gap(start_ms=12_000, end_ms=13_000, cause="recorder-restart")
PAUSE = Gap(start_ms=23_000, end_ms=26_000, cause="paused")
WINDOWS = ([(i * 1000, (i + 1) * 1000) for i in range(12)]
           + [(i * 1000, (i + 1) * 1000) for i in range(13, 23)]
           + [(i * 1000, (i + 1) * 1000) for i in range(26, 36)])
SESSION_MS = 36_510
OUTPUT_MS = SESSION_MS - 3000
FORMATS = ["mp3", "flac", "opus"]
_buckets = itertools.count(1)


def _store(s3_server: S3Settings) -> ObjectStore:
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-promote-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    return store


def _plan(session: Session, **changes: object) -> PromotionPlan:
    plan = PromotionPlan(
        guild_id=session.layout.guild_id, meeting_id=session.layout.meeting_id,
        prefix=session.layout.prefix, session_end_ms=session.session_ms,
        speakers=list(session.sources), chunks=session.chunks, gaps=session.gaps)
    return plan.model_copy(update=changes)


def run_promote(store: ObjectStore, plan_key: str, termination_log: Path | None = None
                ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **store.settings.env()}
    if termination_log is not None:
        env["VOICETRACK_TERMINATION_LOG"] = str(termination_log)
    return subprocess.run([TRANSCODER, "promote", "--plan-key", plan_key], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@dataclasses.dataclass
class Promoted:
    store: ObjectStore
    session: Session
    proc: subprocess.CompletedProcess[str]
    manifest: FinalManifest
    decoded: dict[tuple[str, str], np.ndarray]
    _correlations: dict[tuple[str, str], tuple[float, int]] = dataclasses.field(
        default_factory=dict)

    def correlation(self, track: str, fmt: str) -> tuple[float, int]:
        """(correlation, lag in samples) of a decoded final track with its source."""
        if (track, fmt) not in self._correlations:
            self._correlations[(track, fmt)] = best_correlation(
                expected_source(self.session, track), self.decoded[(track, fmt)],
                ms_to_samples(20))
        return self._correlations[(track, fmt)]


@pytest.fixture(scope="module")
def promoted(s3_server: S3Settings) -> Promoted:
    store = _store(s3_server)
    assert len(WINDOWS) >= 30
    session = upload_chunks(store, LAYOUT, SPEAKERS, WINDOWS, SESSION_MS, [RESTART, PAUSE])
    plan = _plan(session, formats=FORMATS, mp3_bitrate=128)
    store.put_json(LAYOUT.promotion_plan_key, plan.to_api())
    proc = run_promote(store, LAYOUT.promotion_plan_key)
    assert proc.returncode == 0, proc.stderr
    manifest = FinalManifest.model_validate(store.get_json(LAYOUT.final_manifest_key))
    decoded = {(t.track, t.format): decode_file(store.get_bytes(t.key))
               for t in manifest.tracks}
    return Promoted(store, session, proc, manifest, decoded)


def expected_source(session: Session, track: str) -> np.ndarray:
    """What a final track must sound like: the speaker (or the sum) in output time, with
    everything outside the recorded chunks silent."""
    if track == MIX_TRACK:
        total = sum(expected_source(session, u).astype(np.int32) for u in session.sources)
        return np.asarray(total)
    pcm = np.zeros_like(session.sources[track])
    for chunk in session.chunks:
        a, b = ms_to_samples(chunk.start_ms), ms_to_samples(chunk.end_ms)
        pcm[a:b] = session.sources[track][a:b]
    return output_time(pcm, session.gaps)


def test_manifest_lists_every_track_and_format(promoted: Promoted) -> None:
    m = promoted.manifest
    assert (m.duration_ms, m.paused_ms, m.recorded_ms) == (OUTPUT_MS, 3000, len(WINDOWS) * 1000)
    assert m.gaps == [RESTART, PAUSE]
    assert {(t.track, t.format) for t in m.tracks} == {
        (name, f) for name in (A, B, C, MIX_TRACK) for f in FORMATS}
    for t in m.tracks:
        assert t.key == LAYOUT.final_key(t.track, t.format)
        data = promoted.store.get_bytes(t.key)
        assert (len(data), sha256_hex(data)) == (t.bytes, t.sha256)
        assert t.duration_ms == OUTPUT_MS
        assert t.kind == ("mixed" if t.track == MIX_TRACK else "speaker")
        assert t.user_id == (None if t.track == MIX_TRACK else t.track)
    progress = [line for line in promoted.proc.stdout.splitlines()
                if line.startswith("progress: ")]
    percents = [int(line.split()[1].rstrip("%")) for line in progress]
    assert len(percents) >= 5 and percents == sorted(percents) and percents[-1] == 100


def test_mono_coded_speakers_get_mono_tracks(promoted: Promoted) -> None:
    """C's packets are all mono-coded: its tracks are mono (half the encoding work, nothing
    lost, as the sample-exact FLAC check below shows); A and B and so the mix stay stereo."""
    want = {A: 2, B: 2, C: 1, MIX_TRACK: 2}
    for track in promoted.manifest.tracks:
        assert track.channels == want[track.track], track
        assert file_channels(promoted.store.get_bytes(track.key)) == want[track.track], track


def test_all_mono_speakers_give_a_mono_mix(s3_server: S3Settings) -> None:
    store = _store(s3_server)
    layout = MeetingLayout("mono", "123456789012345678", "MoNoMoNoMoNoMoN1")
    speakers = [Speaker(A, 200, talks=[(200, 2800)], markers=[1500], mono_coded=True),
                Speaker(B, 300, talks=[(1500, 3600)], markers=[3000], mono_coded=True)]
    session = upload_chunks(store, layout, speakers, [(0, 2000), (2000, 4000)], 4000, [])
    store.put_json(layout.promotion_plan_key,
                   _plan(session, formats=["flac"], tracks="both").to_api())
    manifest = promote(store, layout.promotion_plan_key)
    assert {t.track: t.channels for t in manifest.tracks} == {A: 1, B: 1, MIX_TRACK: 1}
    pcm = {t.track: decode_file(store.get_bytes(t.key)) for t in manifest.tracks}
    for user in (A, B):
        mono = OpusDecoder(1).decode(session.packets[user])
        assert np.array_equal(pcm[user], np.repeat(mono, 2, axis=1)), user
        # a stereo decoder's left channel is the same (its right one differs where the
        # codec switches mode: tests/unit/test_transcoder_audio.py)
        stereo = OpusDecoder().decode(session.packets[user])
        assert np.array_equal(stereo[:, 0], mono[:, 0])
    mix = pcm[A].astype(np.int32) + pcm[B].astype(np.int32)
    assert np.abs(mix).max() < 32_767  # quiet enough that the limiter leaves it alone
    assert np.array_equal(pcm[MIX_TRACK], mix)


def test_tracks_have_equal_length_and_the_recorded_duration(promoted: Promoted) -> None:
    for (track, fmt), pcm in promoted.decoded.items():
        assert abs(pcm.shape[0] - ms_to_samples(OUTPUT_MS)) <= ms_to_samples(20), (track, fmt)
    lengths = [pcm.shape[0] for pcm in promoted.decoded.values()]
    assert max(lengths) - min(lengths) <= ms_to_samples(20)


def test_every_marker_lands_at_its_session_time(promoted: Promoted) -> None:
    for speaker in SPEAKERS:
        for at in speaker.markers:
            want = session_to_output_ms(at, promoted.session.gaps)
            for track in (speaker.user_id, MIX_TRACK):
                for fmt in FORMATS:
                    pcm = promoted.decoded[(track, fmt)]
                    got = _find_click(pcm, want)
                    assert abs(got - want) <= 20, (track, fmt, at, want, got)


def _find_click(pcm: np.ndarray, around_ms: int, search_ms: int = 200) -> int:
    """Output time (ms) of the sharpest transient within ±search_ms: the clicks are 2 ms
    bursts, the voices smooth tones, so the largest second difference marks the click."""
    a = ms_to_samples(around_ms - search_ms)
    b = ms_to_samples(around_ms + search_ms)
    mono = pcm[a:b].astype(np.int64).sum(axis=1)
    sharp = np.abs(np.diff(mono, 2))
    return (a + int(np.argmax(sharp))) // ms_to_samples(1)


def test_each_track_correlates_with_its_source(promoted: Promoted) -> None:
    for track, fmt in promoted.decoded:
        corr, lag = promoted.correlation(track, fmt)
        assert corr >= 0.99, (track, fmt, corr)
        assert abs(lag) <= ms_to_samples(20)


def _continuous_decode(session: Session, user: str) -> np.ndarray:
    """The speaker's packets over the whole session as one stream (silence frames where
    the speaker has no raw track, pause cut, tail padded), decoded by one decoder."""
    packets = session.packets[user]
    covered = {slot for c in session.chunks if any(t.user_id == user for t in c.tracks)
               for slot in range(c.start_ms // FRAME_MS, c.end_ms // FRAME_MS)}
    paused = set(range(PAUSE.start_ms // FRAME_MS, PAUSE.end_ms // FRAME_MS))
    stream = [p if i in covered else OPUS_SILENCE_FRAME for i, p in enumerate(packets)
              if i not in paused]
    mono = next(s.mono_coded for s in SPEAKERS if s.user_id == user)
    pcm = np.repeat(OpusDecoder(1).decode(stream), 2, axis=1) if mono \
        else OpusDecoder().decode(stream)
    tail = np.zeros((ms_to_samples(SESSION_MS % FRAME_MS), 2), dtype=np.int16)
    return np.concatenate([pcm, tail])


def test_speaker_flac_is_the_continuous_decode_sample_for_sample(promoted: Promoted) -> None:
    for user in (A, B, C):
        assert np.array_equal(promoted.decoded[(user, "flac")],
                              _continuous_decode(promoted.session, user)), user


def _boundary_steps(pcm: np.ndarray, boundaries_ms: list[int], lag: int, half_ms: int = 10
                    ) -> np.ndarray:
    """Largest sample-to-sample step within ±half_ms of each boundary (shifted by `lag`)."""
    half = ms_to_samples(half_ms)
    steps = []
    for at in boundaries_ms:
        c = ms_to_samples(at) + lag
        window = pcm[max(c - half, 0):c + half].astype(np.int64)
        steps.append(np.abs(np.diff(window, axis=0)).max() if window.shape[0] > 1 else 0)
    return np.array(steps)


def _chunk_boundaries_in_output(session: Session) -> list[int]:
    ends = sorted({c.start_ms for c in session.chunks} | {c.end_ms for c in session.chunks})
    return [session_to_output_ms(t, session.gaps) for t in ends if 0 < t < SESSION_MS]


def test_no_discontinuity_at_chunk_boundaries(promoted: Promoted) -> None:
    boundaries = _chunk_boundaries_in_output(promoted.session)
    for (track, fmt), pcm in promoted.decoded.items():
        source = expected_source(promoted.session, track)
        _, lag = promoted.correlation(track, fmt)
        # ±25 ms of source against ±10 ms of output: the codecs smear a sound by a few ms
        # (pre-echo) and add a little noise; a decoder restart adds thousands
        own = _boundary_steps(source, boundaries, 0, half_ms=25)
        got = _boundary_steps(pcm, boundaries, lag)
        assert (got <= own * 1.25 + 150).all(), (track, fmt, got.max(), boundaries)


def test_the_boundary_check_catches_per_chunk_decoding(promoted: Promoted) -> None:
    """Decoding every chunk on its own and joining the PCM (what promotion must not do)
    fails the check above: the check can fail."""
    session = promoted.session
    pcm = np.zeros((ms_to_samples(SESSION_MS), 2), dtype=np.int16)
    for chunk in session.chunks:
        for track in chunk.tracks:
            if track.user_id == A:
                packets = decode_ogg_opus(promoted.store.get_bytes(track.key)).packets
                pcm[ms_to_samples(chunk.start_ms):ms_to_samples(chunk.end_ms)] = \
                    OpusDecoder().decode(packets)
    joined = output_time(pcm, session.gaps)
    boundaries = _chunk_boundaries_in_output(session)
    source = expected_source(session, A)
    _, lag = best_correlation(source, joined, ms_to_samples(20))
    own = _boundary_steps(source, boundaries, 0, half_ms=25)
    assert not (_boundary_steps(joined, boundaries, lag) <= own * 1.25 + 150).all()


def test_mix_never_clips(promoted: Promoted) -> None:
    assert np.abs(promoted.decoded[(MIX_TRACK, "flac")].astype(np.int32)).max() < 32_767


def test_waveforms(promoted: Promoted) -> None:
    for name in (A, B, C, MIX_TRACK):
        peaks = json.loads(promoted.store.get_bytes(LAYOUT.waveform_key(name, "json")))
        assert peaks["version"] == 2 and peaks["channels"] == 1 and peaks["bits"] == 8
        spp = peaks["samples_per_pixel"]
        assert peaks["length"] == -(-ms_to_samples(OUTPUT_MS) // spp)
        assert len(peaks["data"]) == 2 * peaks["length"]
        data = np.array(peaks["data"]).reshape(-1, 2)
        assert (data[:, 0] <= data[:, 1]).all() and data.min() >= -128 and data.max() <= 127
        flac = promoted.decoded[(name, "flac")]
        loud = int(np.abs(flac[: spp * 100].astype(np.int32)).max()) >> 8
        assert max(abs(int(data[:100].min())), int(data[:100].max())) in (loud - 1, loud)
        png = promoted.store.get_bytes(LAYOUT.waveform_key(name, "png"))
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_pcm_raw_chunks_promote_exactly(s3_server: S3Settings) -> None:
    """PCM raw → FLAC final is lossless end to end: every sample where it belongs."""
    store = _store(s3_server)
    layout = MeetingLayout("pcm", "123456789012345678", "PcMpCmPcMpCmPcM1")
    speakers = [Speaker(A, 200, level=0.2, talks=[(200, 1800)], markers=[4500],
                        mono_coded=True),
                Speaker(B, 300, level=0.2, talks=[(3100, 4200)], markers=[700])]
    pause = Gap(start_ms=2000, end_ms=3000, cause="paused")
    session = upload_chunks(store, layout, speakers, [(0, 1000), (1000, 2000), (3000, 4000),
                            (4000, 5000)], 5000, [pause], raw_format="pcm-s16le")
    plan = _plan(session, formats=["flac"], tracks="both")
    store.put_json(layout.promotion_plan_key, plan.to_api())
    manifest = promote(store, layout.promotion_plan_key)
    assert manifest.duration_ms == 4000
    for user, channels in ((A, 1), (B, 2)):
        data = store.get_bytes(layout.final_key(user, "flac"))
        assert file_channels(data) == channels
        assert np.array_equal(decode_file(data), output_time(session.sources[user], [pause]))
    mix = decode_file(store.get_bytes(layout.final_key(MIX_TRACK, "flac")))
    assert np.array_equal(mix.astype(np.int32), expected_source(session, MIX_TRACK))
    # promoting again writes the same objects
    keys = {k: sha256_hex(store.get_bytes(k)) for k in store.list_keys(layout.final_root)}
    assert promote(store, layout.promotion_plan_key) == manifest
    assert {k: sha256_hex(store.get_bytes(k)) for k in store.list_keys(layout.final_root)} == keys


def test_tracks_option_is_honoured(s3_server: S3Settings) -> None:
    store = _store(s3_server)
    layout = MeetingLayout("opt", "123456789012345678", "OpTiOnSoPtIoNs01")
    speakers = [Speaker(A, 200, talks=[(100, 900)]), Speaker(B, 300, talks=[(1100, 1900)])]
    session = upload_chunks(store, layout, speakers, [(0, 1000), (1000, 2000)], 2000, [])
    for tracks, names in (("mixed", {MIX_TRACK}), ("perSpeaker", {A, B})):
        store.delete_prefix(layout.final_root)
        store.put_json(layout.promotion_plan_key,
                       _plan(session, tracks=tracks, formats=["mp3"]).to_api())
        manifest = promote(store, layout.promotion_plan_key)
        assert {t.track for t in manifest.tracks} == names
        finals = {k.rsplit("/", 1)[1] for k in store.list_keys(layout.final_root)}
        assert finals == {f"{n}.mp3" for n in names} | {
            f"waveform-{n}.{e}" for n in names for e in ("json", "png")} | {
            "manifest.json", "timeline.json"}
        # no chunk made a piece: promoted in full, saying why
        assert manifest.assembly == "full" and "piece.json" in (manifest.fallback_reason or "")


def test_bad_raw_exits_2_and_writes_nothing(s3_server: S3Settings, tmp_path: Path) -> None:
    store = _store(s3_server)
    layout = MeetingLayout("bad", "123456789012345678", "BaDbAdBaDbAdBaD1")
    speakers = [Speaker(A, 200, talks=[(100, 2900)])]
    session = upload_chunks(store, layout, speakers, [(0, 1000), (1000, 2000), (2000, 3000)],
                            3000, [])
    store.put_json(layout.promotion_plan_key, _plan(session).to_api())
    victim = session.chunks[2].tracks[0].key
    store.put_bytes(victim, store.get_bytes(victim)[:-40])  # corrupt: sha256 and length
    before = set(store.list_keys(""))
    term = tmp_path / "termination-log"
    proc = run_promote(store, layout.promotion_plan_key, term)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and victim in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert set(store.list_keys("")) == before  # no final object, raw chunks kept
    # the termination message names the chunk (structured), with the same reason: what
    # the operator reads to leave that chunk out
    report = TerminationReport.parse(term.read_text())
    assert report == TerminationReport(proc.stderr.strip()[len("error: "):], 2), report

    store.delete_keys([victim])
    with pytest.raises(InvalidInputError, match="is missing"):
        promote(store, layout.promotion_plan_key)
    assert not store.list_keys(layout.final_root)
    proc = run_promote(store, layout.root + "/no-such-plan.json", term)
    assert proc.returncode == 2 and "no-such-plan.json" in proc.stderr
    # no chunk to blame: a plain message, as before
    assert TerminationReport.parse(term.read_text()) is None
    assert "no-such-plan.json" in term.read_text()
    store.put_bytes(layout.root + "/garbled.json", b"{not json")
    with pytest.raises(InvalidInputError, match=r"garbled\.json is malformed"):
        promote(store, layout.root + "/garbled.json")
