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

Everything goes to local files first. Only when every track is complete are the final
tracks and waveforms uploaded, and `final/manifest.json` last: a bad raw object found halfway
(exit 2) leaves S3 as it was.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from voicetrack.audio import (
    CHANNELS,
    FRAME_MS,
    FRAME_SAMPLES,
    OPUS_SILENCE_FRAME,
    RAW_FORMAT_OGG_OPUS,
    RAW_FORMAT_PCM,
    Channels,
    ms_to_samples,
    samples_to_ms,
)
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MIX_TRACK, MeetingLayout, output_extension
from voicetrack.manifests import FinalManifest, FinalTrack, PromotionPlan
from voicetrack.objectstore import ObjectStore, sha256_file
from voicetrack.resources import ChunkSpec, ChunkTrack
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES, FORMATS, EncoderSink
from voicetrack_transcoder.mixer import Limiter, mix_sum
from voicetrack_transcoder.opusdec import OpusDecodeError, OpusDecoder
from voicetrack_transcoder.rawtracks import RawTrack, check_window, load_raw
from voicetrack_transcoder.waveform import PeaksBuilder, overview_png

BLOCK_SLOTS = 50
"""Slots (20 ms) per processing block: one second of audio."""
PREFETCH_CHUNKS = 6
"""At most this many chunks are fetched ahead of the one being decoded ..."""
PREFETCH_AUDIO_MS = {RAW_FORMAT_OGG_OPUS: 60_000, RAW_FORMAT_PCM: 20_000}
"""... and at most this much audio per speaker (PCM is 11.5 MB per minute per speaker)."""

Progress = Callable[[float], None]


@dataclass(frozen=True)
class Segment:
    """A stretch of session time `[start_ms, end_ms)`: a chunk's window (`chunk` set),
    silence, or a cut (`cut`: paused, not in the output)."""

    start_ms: int
    end_ms: int
    chunk: int | None = None
    """Position of the chunk in `plan.chunks`."""
    cut: bool = False


def load_plan(store: ObjectStore, plan_key: str) -> PromotionPlan:
    """Read and parse promotion.json. Raises InvalidInputError if missing or malformed."""
    try:
        return PromotionPlan.model_validate(store.get_json(plan_key))
    except NotFoundError:
        raise
    except (ValidationError, InvalidInputError) as err:  # InvalidInputError: not JSON
        raise InvalidInputError(f"promotion plan {plan_key} is malformed: {err}") from None


def build_timeline(plan: PromotionPlan) -> list[Segment]:
    """Segments covering `[0, max(sessionEndMs, last chunk end))` in order.

    Chunks and gaps must lie on the 20 ms grid and must not overlap one another; time that
    neither covers becomes silence. Raises InvalidInputError naming the offending item."""
    items: list[tuple[int, int, str, Segment]] = []
    for pos, chunk in enumerate(plan.chunks):
        check_window(chunk.start_ms, chunk.end_ms, f"chunk {chunk.index}")
        users = [t.user_id for t in chunk.tracks]
        if len(set(users)) != len(users):
            raise InvalidInputError(f"chunk {chunk.index}: a user id appears twice in tracks")
        items.append((chunk.start_ms, chunk.end_ms, f"chunk {chunk.index}",
                      Segment(chunk.start_ms, chunk.end_ms, chunk=pos)))
    for gap in plan.gaps:
        if gap.end_ms == gap.start_ms:
            continue
        check_window(gap.start_ms, gap.end_ms, f"gap {gap.cause}")
        items.append((gap.start_ms, gap.end_ms, f"gap {gap.cause} [{gap.start_ms}, {gap.end_ms})",
                      Segment(gap.start_ms, gap.end_ms, cut=gap.cause == "paused")))
    items.sort(key=lambda item: (item[0], item[1]))
    timeline: list[Segment] = []
    at, prev = 0, "session start"
    for start, end, name, segment in items:
        if start < at:
            raise InvalidInputError(f"{name} overlaps {prev} (starts at {start} < {at} ms)")
        if start > at:
            timeline.append(Segment(at, start))
        timeline.append(segment)
        at, prev = end, name
    if plan.session_end_ms > at:
        timeline.append(Segment(at, plan.session_end_ms))
    return timeline


class RawFetcher:
    """Fetches and validates raw tracks a few chunks ahead of the decoders, in threads.

    `get(pos, user)` returns the RawTrack of the chunk at `pos` in `plan.chunks` (raising
    its InvalidInputError if it is bad); each is handed out once and then forgotten."""

    def __init__(self, store: ObjectStore, chunks: list[ChunkSpec], pool: ThreadPoolExecutor,
                 ahead: int = PREFETCH_CHUNKS) -> None:
        self.store, self.chunks, self.pool, self.ahead = store, chunks, pool, ahead
        self._futures: dict[tuple[int, str], Future[RawTrack]] = {}
        self._submitted = 0
        self._lock = threading.Lock()

    def _submit_until(self, pos: int) -> None:
        while self._submitted <= min(pos, len(self.chunks) - 1):
            chunk = self.chunks[self._submitted]
            for track in chunk.tracks:
                self._futures[(self._submitted, track.user_id)] = self.pool.submit(
                    load_raw, self.store, chunk, track)
            self._submitted += 1

    def get(self, pos: int, user_id: str) -> RawTrack:
        with self._lock:
            self._submit_until(pos + self.ahead)
            future = self._futures.pop((pos, user_id))
        return future.result()

    def cancel(self) -> None:
        with self._lock:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()


def speaker_channels(plan: PromotionPlan, user_id: str) -> Channels:
    """1 when every raw track of `user_id` in the plan is mono-coded (or there is none),
    else 2: the channel count of the speaker's final tracks."""
    return max((t.channels for c in plan.chunks for t in c.tracks if t.user_id == user_id),
               default=1)


class SpeakerStream:
    """One speaker's audio in output time: `read(slots)` returns the next `slots` × 960
    samples (int16, shape (n, `channels`)), decoded by one decoder for the whole session.
    With `channels` 1 the packets are decoded as mono (PCM raw: its left channel)."""

    def __init__(self, user_id: str, plan: PromotionPlan, timeline: list[Segment],
                 fetcher: RawFetcher, channels: int = CHANNELS) -> None:
        self.user_id = user_id
        self.channels = channels
        self.opus = plan.chunks[0].raw_format == RAW_FORMAT_OGG_OPUS if plan.chunks else True
        self._pieces = self._iter_pieces(plan, timeline, fetcher)
        self._piece: list[bytes] | np.ndarray | int | None = None
        self._offset = 0
        self._decoder = OpusDecoder(channels) if self.opus else None

    def _iter_pieces(self, plan: PromotionPlan, timeline: list[Segment], fetcher: RawFetcher
                     ) -> Iterator[list[bytes] | np.ndarray | int]:
        """Packets (Opus), samples (PCM) or a count of silent slots, in output order."""
        for seg in timeline:
            if seg.cut:
                continue
            slots = (seg.end_ms - seg.start_ms) // FRAME_MS
            track: ChunkTrack | None = None
            if seg.chunk is not None:
                chunk = plan.chunks[seg.chunk]
                track = next((t for t in chunk.tracks if t.user_id == self.user_id), None)
            if seg.chunk is None or track is None:
                if slots:
                    yield slots
                continue
            raw = fetcher.get(seg.chunk, self.user_id)
            if raw.packets is not None:
                yield raw.packets
            else:
                yield np.frombuffer(raw.data, dtype="<i2").reshape(-1, CHANNELS)

    def read(self, slots: int) -> np.ndarray:
        """The next `slots` slots of audio; silence past the end of the timeline."""
        out = np.zeros((slots * FRAME_SAMPLES, self.channels), dtype=np.int16)
        packets: list[bytes] = []
        filled = 0
        while filled < slots:
            if self._piece is None:
                self._piece = next(self._pieces, None)
                self._offset = 0
                if self._piece is None:
                    self._piece = 1 << 62  # past the end: silence
            piece = self._piece
            length = piece if isinstance(piece, int) else (
                len(piece) if isinstance(piece, list) else piece.shape[0] // FRAME_SAMPLES)
            take = min(slots - filled, length - self._offset)
            if isinstance(piece, int):
                if self.opus:
                    packets.extend([OPUS_SILENCE_FRAME] * take)
            elif isinstance(piece, list):
                packets.extend(piece[self._offset: self._offset + take])
            else:
                a, b = self._offset * FRAME_SAMPLES, (self._offset + take) * FRAME_SAMPLES
                out[filled * FRAME_SAMPLES: (filled + take) * FRAME_SAMPLES] = \
                    piece[a:b, :self.channels]
            filled += take
            self._offset += take
            if self._offset >= length:
                self._piece = None
        if self._decoder is not None:
            try:
                n = self._decoder.decode_into(packets, out)
            except OpusDecodeError as err:
                raise InvalidInputError(f"user {self.user_id}: corrupt Opus data: {err}"
                                        ) from None
            if n != out.shape[0]:
                raise InvalidInputError(f"user {self.user_id}: decoded {n} samples for "
                                        f"{out.shape[0]}")
        return out

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()


class ReadAhead:
    """Decodes one SpeakerStream in its own thread, up to `depth` blocks ahead of the
    consumer, so decoding overlaps with encoding and mixing. `sizes` are the block sizes in
    slots, in order; `get()` returns the next block or raises the decoder's error."""

    def __init__(self, stream: SpeakerStream, sizes: list[int], depth: int = 4) -> None:
        self.stream = stream
        self.sizes = sizes
        self._queue: queue.Queue[np.ndarray | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode-{stream.user_id}",
                                        daemon=True)
        self._thread.start()

    def _put(self, item: np.ndarray | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for n in self.sizes:
                if not self._put(self.stream.read(n)):
                    return
        except BaseException as err:
            self._put(err)

    def get(self) -> np.ndarray:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.stream.close()


@dataclass
class _Track:
    name: str
    kind: str
    user_id: str | None
    channels: Channels
    sinks: dict[str, EncoderSink]
    peaks: PeaksBuilder


def promote(store: ObjectStore, plan_key: str, progress: Progress | None = None
            ) -> FinalManifest:
    """Run the promotion described by the plan at `plan_key` (see the module docstring).

    Every final track lasts `sessionEndMs - paused ms` (`durationMs`, counted from the
    samples encoded); `recordedMs` is the time covered by promoted chunks. Writes
    `final/<track>.<ext>`, `final/waveform-<track>.json|png`, then `final/manifest.json`.
    `progress(fraction)` is called as audio is processed (0.0 … 1.0).
    Raises InvalidInputError (exit 2) for a missing or malformed plan or a missing, corrupt
    or mismatching raw object; TemporaryFailure (exit 1) for S3 or ffmpeg failures.
    """
    plan = load_plan(store, plan_key)
    for fmt in plan.formats:
        if fmt not in FORMATS:
            raise InvalidInputError(f"plan formats: unknown format {fmt!r}")
    if not plan.formats:
        raise InvalidInputError("plan formats: empty")
    if len({c.raw_format for c in plan.chunks}) > 1:
        raise InvalidInputError("plan chunks mix raw formats")
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
        fetcher = RawFetcher(store, plan.chunks, fetch_pool,
                             ahead=min(PREFETCH_CHUNKS, budget // longest))
        channels = {u: speaker_channels(plan, u) for u in speakers}
        mix_channels: Channels = 2 if 2 in channels.values() else 1
        readers = [ReadAhead(SpeakerStream(u, plan, timeline, fetcher, channels[u]), sizes)
                   for u in speakers]
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
    gaps = [g for g in plan.gaps if g.end_ms > g.start_ms]
    manifest = FinalManifest(tool_version=TOOL_VERSION, meeting_id=plan.meeting_id,
                             duration_ms=total_ms, recorded_ms=recorded_ms,
                             paused_ms=paused_ms, tracks=final_tracks, gaps=gaps)
    store.put_json(layout.final_manifest_key, manifest.to_api())
    return manifest
