"""`voicetrack-transcoder promote`: gapless per-speaker and mixed final tracks from raw chunks.

Per speaker, the session becomes ONE continuous stream in session time (DESIGN.md,
"Transcoder"): each chunk's packets at its `startMs`; a chunk the speaker is absent from, a
recorder gap, or time not covered by the plan → Opus silence frames (`F8 FF FE`) of the
exact length; paused gaps are cut; the tail is padded to `sessionEndMs`. A speaker whose
tracks are all mono-coded (`channels` 1, as a Discord client sends its microphone) is decoded
and encoded as mono, losing nothing (LAME at the same bitrate spends about a quarter less
CPU on it); the mix is mono when every speaker is.
Each stream is
decoded once by one libopus decoder (no restart at chunk boundaries, hence no clicks) and
encoded once per output format by ffmpeg (never MP3 concatenation). PCM raw chunks take the
same path with samples instead of packets. The mix is the sum of the speakers through a
limiter (mixer.py). Audio streams through in one-second blocks; raw chunks are fetched a few
chunks ahead; nothing holds a whole track in memory.

A plan for MP3, FLAC, or MP3 and FLAC, is first assembled from the pieces the chunk
transcodes made while recording (`pieces.py`, `assembly.py`; FLAC: `flacpieces.py`,
`flacassembly.py`; a FLAC-only plan's assembly reads the MP3 pieces for the waveforms
and timeline and writes FLAC only): only the last chunk and the assembly remain after
stop. Opus is promoted in full (`pieces.py` says why). When a piece is missing or
does not verify, the full promotion below runs instead and the manifest says why
(`fallbackReason`). Both write the speech timeline (`speech.py`) and the consent record
(`final/consent.json`, from the plan).

Consent (docs/consent.md, "Promotion"): the plan leaves out the tracks of the members it
`excluded` (opted out at stop). Their audio may still be in pieces made while recording
(their own and the mix of every chunk they spoke in or just before); when any piece the
assembly would use holds it, the WHOLE meeting is promoted in full from the raw chunks the
plan lists (the simplest correct choice: one path, already the verified fallback), so no
final object holds their audio or names them.

Raw tracks are read as `rawtracks.load_raw` reads them: each chunk's frozen copy in its
outputs folder (stored by its Job, verified again against the plan's sha256), the
recorder's object in `chunks/<index>/` only for a chunk transcoded before frozen copies
existed or one whose frozen copy is damaged (the same sha256 pins it), so a recorder
that overwrites a done chunk's raw track cannot take its audio out of the final tracks.

Everything goes to local files first. Only when every track is complete are the final
tracks and waveforms uploaded, and `final/manifest.json` last: a bad raw object found halfway
(exit 2) leaves S3 as it was.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from voicetrack.audio import (
    FRAME_MS,
    RAW_FORMAT_OGG_OPUS,
    Channels,
    ms_to_samples,
    samples_to_ms,
)
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout, output_extension
from voicetrack.manifests import FinalManifest, FinalTrack, PromotionPlan
from voicetrack.objectstore import ObjectStore, sha256_file
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.assembly import assemble, speech_timeline, write_consent
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES, FORMATS, EncoderSink
from voicetrack_transcoder.mixer import Limiter, mix_sum
from voicetrack_transcoder.pieces import PiecesUnusable
from voicetrack_transcoder.speech import SpeechDetector
from voicetrack_transcoder.streams import (
    BLOCK_SLOTS,
    PREFETCH_AUDIO_MS,
    PREFETCH_CHUNKS,
    RawFetcher,
    ReadAhead,
    SpeakerStream,
    build_timeline,
    speaker_channels,
)
from voicetrack_transcoder.waveform import PeaksBuilder, overview_png

Progress = Callable[[float], None]
log = logging.getLogger(__name__)


def load_plan(store: ObjectStore, plan_key: str) -> PromotionPlan:
    """Read and parse promotion.json. Raises InvalidInputError if missing or malformed."""
    try:
        return PromotionPlan.model_validate(store.get_json(plan_key))
    except NotFoundError:
        raise
    except (ValidationError, InvalidInputError) as err:  # InvalidInputError: not JSON
        raise InvalidInputError(f"promotion plan {plan_key} is malformed: {err}") from None


@dataclass
class _Track:
    name: str
    kind: str
    user_id: str | None
    channels: Channels
    sinks: dict[str, EncoderSink]
    peaks: PeaksBuilder


def promote(store: ObjectStore, plan_key: str, progress: Progress | None = None,
            incremental: bool = True) -> FinalManifest:
    """Run the promotion described by the plan at `plan_key` (see the module docstring).

    Every final track lasts `sessionEndMs - paused ms` (`durationMs`, counted from the
    samples encoded); `recordedMs` is the time covered by promoted chunks. Writes
    `final/<track>.<ext>`, `final/waveform-<track>.json|png`, then `final/manifest.json`.
    `progress(fraction)` is called as audio is processed (0.0 … 1.0). With `incremental`
    the pieces are tried first (see the module docstring); the manifest's `assembly`
    says which path made the tracks. Also writes `final/timeline.json` and (when the plan
    has it) `final/consent.json`, before the manifest.
    A packet of a (verified) raw track that libopus rejects is concealed, 20 ms of packet
    loss concealment, and counted per speaker in the manifest's `concealedFrames`
    (`opusdec`): one slot lost, never the meeting.
    Raises ChunkInputError (an InvalidInputError naming the chunk: exit 2, the chunk in the
    termination message) for a missing, corrupt or mismatching raw object;
    InvalidInputError (exit 2) for a missing or malformed plan; ServiceUnavailable (exit
    75) when S3 is away; TemporaryFailure (exit 1) for ffmpeg failures.
    """
    plan = load_plan(store, plan_key)
    for fmt in plan.formats:
        if fmt not in FORMATS:
            raise InvalidInputError(f"plan formats: unknown format {fmt!r}")
    if not plan.formats:
        raise InvalidInputError("plan formats: empty")
    if len({c.raw_format for c in plan.chunks}) > 1:
        raise InvalidInputError("plan chunks mix raw formats")
    for chunk in plan.chunks:
        if any(t.user_id in plan.excluded for t in chunk.tracks):
            raise InvalidInputError(f"plan chunks: chunk {chunk.index} has a track of a "
                                    "member in excluded (consent)")
    timeline = build_timeline(plan)
    speakers = list(dict.fromkeys(plan.speakers))
    for chunk in plan.chunks:
        for chunk_track in chunk.tracks:
            if chunk_track.user_id not in speakers:
                speakers.append(chunk_track.user_id)
    layout = MeetingLayout(plan.prefix, plan.guild_id, plan.meeting_id)
    total_ms = sum(s.end_ms - s.start_ms for s in timeline if not s.cut)
    paused_ms = sum(s.end_ms - s.start_ms for s in timeline if s.cut)
    recorded_ms = sum(c.duration_ms for c in plan.chunks)
    if total_ms <= 0:
        raise InvalidInputError(f"promotion plan {plan_key}: no audio time to promote "
                                f"(sessionEndMs {plan.session_end_ms}, all of it paused)")
    channels = {u: speaker_channels(plan, u) for u in speakers}
    mix_channels: Channels = 2 if 2 in channels.values() else 1
    fallback: str | None = None
    if incremental:
        try:
            return assemble(store, plan, speakers, channels, mix_channels, progress)
        except PiecesUnusable as err:
            fallback = str(err)
            log.info("incremental promotion not possible, promoting in full: %s", err)
            print(f"incremental promotion not possible: {err}; promoting in full",
                  flush=True)
    total_slots, tail_ms = divmod(total_ms, FRAME_MS)
    want_speakers = plan.tracks in ("perSpeaker", "both")
    want_mix = plan.tracks in ("mixed", "both") and bool(speakers)

    sizes = [BLOCK_SLOTS] * (total_slots // BLOCK_SLOTS)
    if total_slots % BLOCK_SLOTS:
        sizes.append(total_slots % BLOCK_SLOTS)
    with tempfile.TemporaryDirectory(prefix="vt-promote-") as tmp, \
            ThreadPoolExecutor(4, thread_name_prefix="fetch") as fetch_pool:
        work = Path(tmp)
        longest = max((c.duration_ms for c in plan.chunks), default=1)
        budget = PREFETCH_AUDIO_MS[plan.chunks[0].raw_format if plan.chunks
                                   else RAW_FORMAT_OGG_OPUS]
        fetcher = RawFetcher(store, layout, plan.chunks, fetch_pool,
                             ahead=min(PREFETCH_CHUNKS, budget // longest))
        detectors = {u: SpeechDetector() for u in speakers}
        readers = [ReadAhead(SpeakerStream(u, plan, timeline, fetcher, channels[u],
                                           conceal=True), sizes) for u in speakers]
        tracks: list[_Track] = []

        def open_track(name: str, kind: str, user_id: str | None, n: Channels) -> _Track:
            sinks = {fmt: EncoderSink(work / f"{name}.{output_extension(fmt)}", fmt,
                                      plan.mp3_bitrate, n) for fmt in plan.formats}
            track = _Track(name, kind, user_id, n, sinks, PeaksBuilder(channels=n))
            tracks.append(track)
            return track

        try:
            speaker_tracks = [open_track(u, "speaker", u, channels[u]) for u in speakers] \
                if want_speakers else []
            mix = open_track(MIX_TRACK, "mixed", None, mix_channels) if want_mix else None
            limiter = Limiter(channels=mix_channels)

            def emit(track: _Track, block: np.ndarray) -> None:
                for sink in track.sinks.values():
                    sink.write(block)
                track.peaks.add(block)

            done, last_report = 0, -1
            tails = [np.zeros((ms_to_samples(tail_ms), channels[u]), dtype=np.int16)
                     for u in speakers]
            for n in [*sizes, 0] if tail_ms else sizes:
                blocks = [r.get() for r in readers] if n else tails
                done += n
                for track, block in zip(speaker_tracks, blocks, strict=False):
                    emit(track, block)
                for user, block in zip(speakers, blocks, strict=True):
                    detectors[user].add(block)
                if mix is not None:
                    emit(mix, limiter.process(mix_sum(blocks, mix_channels)))
                percent = done * 100 // max(total_slots, 1)
                if progress and percent // 5 != last_report // 5:
                    progress(percent / 100)
                    last_report = percent
            if mix is not None:
                emit(mix, limiter.flush())
            for track in tracks:
                for sink in track.sinks.values():
                    sink.close()
        except BaseException:
            fetcher.cancel()
            for track in tracks:
                for sink in track.sinks.values():
                    sink.kill()
            raise
        finally:
            for reader in readers:
                reader.close()

        final_tracks: list[FinalTrack] = []
        uploads: list[tuple[str, Path, str]] = []
        for track in tracks:
            peaks_key = layout.waveform_key(track.name, "json")
            overview_key = layout.waveform_key(track.name, "png")
            doc = track.peaks.to_json()
            peaks_path = work / f"waveform-{track.name}.json"
            peaks_path.write_text(json.dumps(doc, separators=(",", ":")))
            png_path = work / f"waveform-{track.name}.png"
            png_path.write_bytes(overview_png(*track.peaks.finish()))
            uploads += [(peaks_key, peaks_path, "application/json"),
                        (overview_key, png_path, "image/png")]
            for fmt, sink in track.sinks.items():
                key = layout.final_key(track.name, fmt)
                uploads.append((key, sink.path, CONTENT_TYPES[fmt]))
                final_tracks.append(FinalTrack(
                    track=track.name, kind="speaker" if track.user_id else "mixed",
                    user_id=track.user_id, format=fmt, key=key, channels=track.channels,
                    bytes=sink.path.stat().st_size, sha256=sha256_file(sink.path),
                    duration_ms=samples_to_ms(sink.samples), peaks_key=peaks_key,
                    overview_key=overview_key))
        for key, path, content_type in uploads:
            store.put_file(key, str(path), content_type)
    concealed = {r.stream.user_id: r.stream.concealed for r in readers if r.stream.concealed}
    if concealed:
        log.warning("packets libopus rejects, concealed (20 ms each): %s", concealed)
    gaps = [g for g in plan.gaps if g.end_ms > g.start_ms]
    speech = speech_timeline(total_ms, {u: d.runs() for u, d in detectors.items()})
    store.put_json(layout.timeline_key, speech.to_api())
    manifest = FinalManifest(tool_version=TOOL_VERSION, meeting_id=plan.meeting_id,
                             duration_ms=total_ms, recorded_ms=recorded_ms,
                             paused_ms=paused_ms, tracks=final_tracks, gaps=gaps,
                             timeline_key=layout.timeline_key,
                             consent_key=write_consent(store, layout, plan), assembly="full",
                             fallback_reason=fallback, concealed_frames=concealed)
    store.put_json(layout.final_manifest_key, manifest.to_api())
    return manifest
