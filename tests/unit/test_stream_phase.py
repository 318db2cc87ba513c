"""A track's sub-slot phase (`ChunkTrack.phaseSamples`) at promotion: `SpeakerStream` delays
each chunk's decoded audio by it, carries the tail into what follows, inserts or drops the
difference where the phase changes, keeps every block's length exact, and leaves phase-0
streams untouched; a piece's render (`pieces.render`) gives the full stream's samples.
Pure numpy and libopus, fake fetchers, no S3."""

from __future__ import annotations

import numpy as np
import pytest

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES, ms_to_samples
from voicetrack.chunkspec import ChunkSpec, ChunkTrack
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan
from voicetrack_transcoder import pieces
from voicetrack_transcoder.rawtracks import RawTrack
from voicetrack_transcoder.streams import SpeakerStream, build_timeline

pytestmark = pytest.mark.unit

GUILD, MEETING, USER = "123456789012345678", "abcdefABCDEF0123", "223456789012345678"
LAYOUT = MeetingLayout("k", GUILD, MEETING)
RNG = np.random.default_rng(7)


def chunk(index: int, start: int, end: int, phase: int | None, fmt: str = "pcm-s16le"
          ) -> ChunkSpec:
    """A chunk of window [start, end) ms with USER's track at `phase` (None: no track)."""
    tracks = [] if phase is None else [ChunkTrack(
        user_id=USER, key=LAYOUT.raw_key(index, USER, fmt), frames=1, first_ms=start,
        last_ms=start, bytes=1, sha256="0" * 64, phase_samples=phase)]
    return ChunkSpec(session_name="standup", meeting_id=MEETING, guild_id=GUILD, index=index,
                     start_ms=start, end_ms=end, raw_format=fmt, tracks=tracks)  # type: ignore[arg-type]


def plan_of(chunks: list[ChunkSpec], end_ms: int) -> PromotionPlan:
    return PromotionPlan(guild_id=GUILD, meeting_id=MEETING, prefix="k", session_end_ms=end_ms,
                         speakers=[USER], chunks=chunks)


class Fetched:
    """Stands in for `streams.RawFetcher`: each chunk's window of `source` (stored slot
    time, int16 stereo; the chunks' times + `offset_ms`) as PCM, or as the `packets` of
    that window."""

    def __init__(self, chunks: list[ChunkSpec], source: np.ndarray,
                 packets: list[bytes] | None = None, offset_ms: int = 0) -> None:
        self.chunks, self.source, self.packets = chunks, source, packets
        self.offset_ms = offset_ms

    def get(self, pos: int, user_id: str) -> RawTrack:
        c = self.chunks[pos]
        a, b = ms_to_samples(c.start_ms + self.offset_ms), ms_to_samples(c.end_ms + self.offset_ms)
        if self.packets is not None:
            return RawTrack(c.tracks[0], "ogg-opus", b"",
                            self.packets[c.start_ms // FRAME_MS: c.end_ms // FRAME_MS],
                            (b - a) // FRAME_SAMPLES)
        return RawTrack(c.tracks[0], "pcm-s16le", self.source[a:b].tobytes(), None,
                        (b - a) // FRAME_SAMPLES)


def stream_out(chunks: list[ChunkSpec], end_ms: int, source: np.ndarray,
               blocks: list[int], packets: list[bytes] | None = None) -> np.ndarray:
    """The whole stream read in blocks of `blocks` slots (cycled), each checked exact."""
    plan = plan_of(chunks, end_ms)
    stream = SpeakerStream(USER, plan, build_timeline(plan), Fetched(  # type: ignore[arg-type]
        chunks, source, packets), 2)
    out, total, i = [], end_ms // FRAME_MS, 0
    try:
        while total:
            n = min(blocks[i % len(blocks)], total)
            block = stream.read(n)
            assert block.shape == (n * FRAME_SAMPLES, 2)
            out.append(block)
            total, i = total - n, i + 1
    finally:
        stream.close()
    return np.concatenate(out)


def noise(ms: int) -> np.ndarray:
    return RNG.integers(-20000, 20000, (ms_to_samples(ms), 2), dtype=np.int16)


@pytest.mark.parametrize("blocks", [[50], [1], [3, 7, 2]])
def test_a_track_comes_out_its_phase_later_and_the_tail_flushes_into_silence(
        blocks: list[int]) -> None:
    source = noise(300)
    source[ms_to_samples(200):] = 0  # nothing stored after the chunks: silence
    out = stream_out([chunk(0, 0, 100, 480), chunk(1, 100, 200, 480)], 300, source, blocks)
    assert out.shape == source.shape
    assert not out[:480].any()
    assert np.array_equal(out[480:480 + 9600], source[:9600])  # both chunks, tail included
    assert not out[480 + 9600:].any()


def test_phase_zero_is_the_stored_audio_bit_for_bit() -> None:
    source = noise(300)
    source[ms_to_samples(100):ms_to_samples(140)] = 0
    out = stream_out([chunk(0, 0, 100, 0), chunk(2, 140, 300, 0)], 300, source, [4])
    assert np.array_equal(out, source)


@pytest.mark.parametrize("blocks", [[50], [1], [2, 5]])
def test_a_phase_change_inserts_or_drops_the_difference_and_keeps_the_length(
        blocks: list[int]) -> None:
    """Chunk 0 at phase 100, chunk 1 at 700 (600 zeros inserted at its start), a window
    without the speaker (silence, the delay kept), chunk 3 at 50 (650 samples dropped before
    it): each chunk's audio at its slots + its phase, the stream exactly its length."""
    source = noise(400)
    source[ms_to_samples(200):ms_to_samples(300)] = 0
    chunks = [chunk(0, 0, 100, 100), chunk(1, 100, 200, 700), chunk(2, 200, 300, None),
              chunk(3, 300, 400, 50)]
    out = stream_out(chunks, 400, source, blocks)
    assert out.shape == source.shape
    assert not out[:100].any()
    assert np.array_equal(out[100:4900], source[:4800])
    assert not out[4900:5500].any()
    assert np.array_equal(out[5500:9600 + 700], source[4800:9600])
    assert not out[10300:14400 + 50].any()  # the silence frames, 650 of them dropped
    assert np.array_equal(out[14450:], source[14400:19200 - 50])


def test_an_opus_track_is_delayed_sample_for_sample() -> None:
    """The same packets at phase 480 decode to the phase-0 output 480 samples later."""
    from tests.audio_helpers import encode_session
    pcm = noise(400) // 4
    packets = encode_session(pcm, False)
    zero = stream_out([chunk(0, 0, 200, 0, "ogg-opus"), chunk(1, 200, 400, 0, "ogg-opus")],
                      400, pcm, [7], packets)
    late = stream_out([chunk(0, 0, 200, 480, "ogg-opus"), chunk(1, 200, 400, 480, "ogg-opus")],
                      400, pcm, [7], packets)
    assert zero.any() and not late[:480].any()
    assert np.array_equal(late[480:], zero[:-480])


def test_a_piece_render_gives_the_full_streams_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pieces.render` of a unit (chunk k, from chunk k-1's start) equals the full stream
    over the unit, with phases that change between chunks and the carry over a window
    without the speaker."""
    source = noise(600)
    source[ms_to_samples(300):ms_to_samples(400)] = 0
    chunks = [chunk(0, 0, 100, 300), chunk(1, 100, 200, 900), chunk(2, 200, 300, 10),
              chunk(3, 300, 400, None), chunk(4, 400, 500, 959), chunk(5, 500, 600, 0)]
    full = stream_out(chunks, 600, source, [50])
    for k in range(1, 6):
        prev, this = chunks[k - 1], chunks[k]
        base = prev.start_ms
        monkeypatch.setattr(pieces, "RawFetcher", lambda store, layout, cs, pool, base=base:
                            Fetched(cs, source, offset_ms=base))
        placed = [pieces.Placed(c, c.start_ms) for c in (prev, this) if c.tracks]
        got = pieces.render(None, LAYOUT, placed, base, this.end_ms, [USER],  # type: ignore[arg-type]
                            {USER: 2}, None)
        a, b = ms_to_samples(prev.end_ms), ms_to_samples(this.end_ms)
        assert np.array_equal(got.cut(USER, a, b), full[a:b]), k
