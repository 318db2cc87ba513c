"""The promotion's streams: the output timeline of a plan, raw tracks fetched ahead, and
one continuous decoded stream per speaker (one libopus decoder for the whole session, so
no restart at chunk boundaries), decoded ahead of the encoders in its own thread.

Shapes: samples are int16 at 48 kHz, arrays of shape (n, channels); a slot is 20 ms
(`FRAME_SAMPLES` samples per channel). Used by `promote.py` and `pieces.render` (so by
every piece, head and unit assembly renders too).

Phase. A raw track is stored on the 20 ms slot grid, but its audio belongs
`ChunkTrack.phaseSamples` (0..959) later (the recorder rounds each stream's anchor down
to a slot, `voicetrack_recorder.discord.timeline`). `SpeakerStream` delays the speaker's
decoded audio by it: in a chunk's window output sample n is decoded sample n - phase, the
last `phase` samples carried over into what follows (the next block, the next chunk, or
the silence after it). When the phase of a speaker's next chunk differs (a new stream:
rejoin, new SSRC), |delta| samples are inserted (zeros) or dropped (the last decoded ones
before that chunk, normally the silence frame's) at its start. Silence, gaps and cuts keep
the delay. Each `read(slots)` still returns exactly `slots` x 960 samples; the carry past
the end of the timeline is dropped. With every phase 0 the output is that of the undelayed
stream, bit for bit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from voicetrack.audio import (
    CHANNELS,
    FRAME_MS,
    FRAME_SAMPLES,
    OPUS_SILENCE_FRAME,
    RAW_FORMAT_OGG_OPUS,
    RAW_FORMAT_PCM,
    Channels,
)
from voicetrack.chunkspec import ChunkSpec, ChunkTrack
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan
from voicetrack.objectstore import ObjectStore
from voicetrack_transcoder.opusdec import OpusDecodeError, OpusDecoder
from voicetrack_transcoder.rawtracks import RawTrack, check_window, load_raw

BLOCK_SLOTS = 50
"""Slots (20 ms) per processing block: one second of audio."""
PREFETCH_CHUNKS = 6
"""At most this many chunks are fetched ahead of the one being decoded ..."""
PREFETCH_AUDIO_MS = {RAW_FORMAT_OGG_OPUS: 60_000, RAW_FORMAT_PCM: 20_000}
"""... and at most this much audio per speaker (PCM is 11.5 MB per minute per speaker)."""


class UndecodableOpus(InvalidInputError):
    """A packet of a verified raw track that libopus rejects, in a stream that does not
    conceal (`SpeakerStream(conceal=False)`): the incremental assembly then falls back to
    the full promotion, which conceals and counts it."""

@dataclass(frozen=True)
class Segment:
    """A stretch of session time `[start_ms, end_ms)`: a chunk's window (`chunk` set),
    silence, or a cut (`cut`: paused, not in the output)."""

    start_ms: int
    end_ms: int
    chunk: int | None = None
    """Position of the chunk in `plan.chunks`."""
    cut: bool = False


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

    `get(pos, user)` returns the RawTrack of the chunk at `pos` in `chunks` (raising its
    InvalidInputError if it is bad); each is handed out once and then forgotten. Each is
    read by `rawtracks.load_raw`: the chunk's frozen copy under `layout` (the meeting's
    layout), or its raw object in `chunks/<index>/` only when it has none."""

    def __init__(self, store: ObjectStore, layout: MeetingLayout, chunks: list[ChunkSpec],
                 pool: ThreadPoolExecutor, ahead: int = PREFETCH_CHUNKS) -> None:
        self.store, self.layout, self.chunks = store, layout, chunks
        self.pool, self.ahead = pool, ahead
        self._futures: dict[tuple[int, str], Future[RawTrack]] = {}
        self._submitted = 0
        self._lock = threading.Lock()

    def _submit_until(self, pos: int) -> None:
        while self._submitted <= min(pos, len(self.chunks) - 1):
            chunk = self.chunks[self._submitted]
            for track in chunk.tracks:
                self._futures[(self._submitted, track.user_id)] = self.pool.submit(
                    load_raw, self.store, self.layout, chunk, track)
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
    With `channels` 1 the packets are decoded as mono (PCM raw: its left channel). With
    `conceal` a packet libopus rejects is concealed (20 ms, `opusdec`) and counted in
    `concealed`; without, `read` raises UndecodableOpus."""

    def __init__(self, user_id: str, plan: PromotionPlan, timeline: list[Segment],
                 fetcher: RawFetcher, channels: int = CHANNELS, conceal: bool = False) -> None:
        self.user_id = user_id
        self.channels = channels
        self.opus = plan.chunks[0].raw_format == RAW_FORMAT_OGG_OPUS if plan.chunks else True
        self._pieces = self._iter_pieces(plan, timeline, fetcher)
        self._piece: list[bytes] | np.ndarray | int | None = None
        self._offset = 0
        self._phase = 0
        """The current delay (samples): `_carry` holds that many decoded samples."""
        self._carry = np.zeros((0, channels), dtype=np.int16)
        self._decoder = OpusDecoder(channels, conceal) if self.opus else None

    @property
    def concealed(self) -> int:
        """Slots (20 ms) concealed so far (always 0 without `conceal`, and for PCM)."""
        return self._decoder.concealed if self._decoder is not None else 0

    def _iter_pieces(self, plan: PromotionPlan, timeline: list[Segment], fetcher: RawFetcher
                     ) -> Iterator[tuple[list[bytes] | np.ndarray | int, int]]:
        """Packets (Opus), samples (PCM) or a count of silent slots, in output order, each
        with the track's phase (samples; 0 for silence, which keeps the delay)."""
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
                    yield slots, 0
                continue
            raw = fetcher.get(seg.chunk, self.user_id)
            if raw.packets is not None:
                yield raw.packets, track.phase_samples
            else:
                yield (np.frombuffer(raw.data, dtype="<i2").reshape(-1, CHANNELS),
                       track.phase_samples)

    def read(self, slots: int) -> np.ndarray:
        """The next `slots` slots of audio; silence past the end of the timeline."""
        out = np.zeros((slots * FRAME_SAMPLES, self.channels), dtype=np.int16)
        packets: list[bytes] = []
        phases: list[tuple[int, int]] = []  # (sample in this block, phase) at a chunk's start
        filled = 0
        while filled < slots:
            if self._piece is None:
                item = next(self._pieces, None)
                self._piece, phase = item if item is not None else (1 << 62, 0)  # past the end
                self._offset = 0
                if not isinstance(self._piece, int):
                    phases.append((filled * FRAME_SAMPLES, phase))
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
                raise UndecodableOpus(f"user {self.user_id}: corrupt Opus data: {err}"
                                      ) from None
            if n != out.shape[0]:
                raise InvalidInputError(f"user {self.user_id}: decoded {n} samples for "
                                        f"{out.shape[0]}")
        return self._delay(out, phases)

    def _delay(self, block: np.ndarray, phases: list[tuple[int, int]]) -> np.ndarray:
        """`block` (decoded, stored slot time) delayed by the current phase, which becomes
        each `(at, phase)`'s from sample `at` of the block on (module docstring, Phase):
        the same number of samples, the rest carried into the next block."""
        if self._phase == 0 and all(p == 0 for _, p in phases):
            return block  # the undelayed stream, untouched
        parts, size, at = [self._carry], self._carry.shape[0], 0
        for start, phase in phases:
            parts.append(block[at:start])
            size, at = size + start - at, start
            if phase > self._phase:  # later than before: zeros in between
                parts.append(np.zeros((phase - self._phase, block.shape[1]), np.int16))
                size += phase - self._phase
            elif phase < self._phase:  # earlier: drop the last samples before the chunk
                joined = np.concatenate(parts)[:size - (self._phase - phase)]
                parts, size = [joined], joined.shape[0]
            self._phase = phase
        parts.append(block[at:])
        joined = np.concatenate(parts)
        n = block.shape[0]
        self._carry = joined[n:].copy()
        return joined[:n]

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


