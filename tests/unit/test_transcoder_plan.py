"""Promotion timeline, raw-track validation and option parsing, without servers."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from voicetrack.audio import OPUS_SILENCE_FRAME
from voicetrack.chunkspec import ChunkSpec, ChunkTrack, Gap
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan
from voicetrack.oggopus import encode_ogg_opus
from voicetrack_transcoder.ffmpeg import encode_args, parse_formats
from voicetrack_transcoder.rawtracks import check_window, validate_raw
from voicetrack_transcoder.streams import Segment, build_timeline

pytestmark = pytest.mark.unit

USER = "111111111111111111"


def _chunk(index: int, start: int, end: int, raw_format: str = "ogg-opus",
           data: bytes = b"", sha: str | None = None) -> ChunkSpec:
    """A chunk with one track; a window the model refuses (off the grid, empty) is set after
    validation, so the transcoder's own checks can be tested."""
    key = MeetingLayout("p", "1" * 18, "AbCdEfGhIjKlMnOp").raw_key(index, USER, raw_format)
    track = ChunkTrack(user_id=USER, key=key, frames=1, first_ms=start,
                       last_ms=start, bytes=len(data),
                       sha256=sha or hashlib.sha256(data).hexdigest())
    return ChunkSpec.model_validate({
        "sessionName": "s", "meetingId": "AbCdEfGhIjKlMnOp", "guildId": "1" * 18,
        "index": index, "startMs": 0, "endMs": 20, "rawFormat": raw_format,
        "tracks": [track.to_api()]}).model_copy(update={"start_ms": start, "end_ms": end})


def _plan(chunks: list[ChunkSpec], gaps: list[Gap], end: int) -> PromotionPlan:
    return PromotionPlan.model_construct(  # unchecked, so bad windows reach build_timeline
        guild_id="1" * 18, meeting_id="AbCdEfGhIjKlMnOp", prefix="p", session_end_ms=end,
        speakers=[USER], chunks=chunks, gaps=gaps)


def test_timeline_orders_chunks_gaps_and_fills_holes() -> None:
    chunks = [_chunk(0, 0, 1000), _chunk(1, 1000, 2000), _chunk(2, 5000, 6000)]
    gaps = [Gap(start_ms=2000, end_ms=3000, cause="recorder-restart"),
            Gap(start_ms=3000, end_ms=4000, cause="paused")]
    timeline = build_timeline(_plan(chunks, gaps, 6510))
    assert timeline == [
        Segment(0, 1000, chunk=0), Segment(1000, 2000, chunk=1), Segment(2000, 3000),
        Segment(3000, 4000, cut=True), Segment(4000, 5000), Segment(5000, 6000, chunk=2),
        Segment(6000, 6510)]


@pytest.mark.parametrize(("chunks", "gaps", "match"), [
    ([(0, 1000), (900, 2000)], [], "overlaps"),
    ([(0, 1010)], [], "slot grid"),
    ([(0, 1000)], [(500, 1500, "paused")], "overlaps"),
    ([(0, 1000)], [(1000, 1010, "paused")], "slot grid"),
    ([(1000, 1000)], [], "not after"),
])
def test_timeline_rejects_bad_plans(chunks: list[tuple[int, int]],
                                    gaps: list[tuple[int, int, str]], match: str) -> None:
    plan = _plan([_chunk(i, a, b) for i, (a, b) in enumerate(chunks)],
                 [Gap.model_construct(start_ms=a, end_ms=b, cause=c)  # unchecked: see above
                  for a, b, c in gaps], 3000)
    with pytest.raises(InvalidInputError, match=match):
        build_timeline(plan)


def test_check_window_counts_slots() -> None:
    assert check_window(20, 1020, "w") == 50
    with pytest.raises(InvalidInputError, match="grid"):
        check_window(10, 1010, "w")


def test_valid_raw_tracks_pass() -> None:
    ogg = encode_ogg_opus([OPUS_SILENCE_FRAME] * 50)
    raw = validate_raw(_chunk(0, 0, 1000, data=ogg), _chunk(0, 0, 1000, data=ogg).tracks[0], ogg)
    assert raw.packets == [OPUS_SILENCE_FRAME] * 50
    pcm = np.zeros((48_000, 2), dtype="<i2").tobytes()
    chunk = _chunk(0, 0, 1000, "pcm-s16le", pcm)
    assert validate_raw(chunk, chunk.tracks[0], pcm).packets is None


@pytest.mark.parametrize(("data", "raw_format", "sha", "match"), [
    (b"", "ogg-opus", None, "empty"),
    (encode_ogg_opus([OPUS_SILENCE_FRAME] * 49), "ogg-opus", None, "49 packets"),
    (encode_ogg_opus([OPUS_SILENCE_FRAME] * 50)[:-5], "ogg-opus", None, "truncated"),
    (encode_ogg_opus([OPUS_SILENCE_FRAME] * 50), "ogg-opus", "0" * 64, "sha256"),
    (encode_ogg_opus([bytes([0xF0, 1])] * 50), "ogg-opus", None, "not a well-formed 20 ms"),
    # one 20 ms frame by its TOC, but padding flagged with no padding length (RFC 6716
    # R6/R7): ffmpeg decoded the track a frame short, exit 0, and the chunk was done; the
    # promotion's libopus decoder then refused it on every retry (review of the receive
    # pipeline, fault 1c)
    (encode_ogg_opus([OPUS_SILENCE_FRAME] * 49 + [b"\xfb\x41"]), "ogg-opus", None,
     "packet 49 is not a well-formed 20 ms"),
    (b"\0" * (48_000 * 4 - 4), "pcm-s16le", None, "window needs 192000"),
])
def test_bad_raw_tracks_are_input_errors(data: bytes, raw_format: str, sha: str | None,
                                         match: str) -> None:
    chunk = _chunk(3, 0, 1000, raw_format, data, sha)
    with pytest.raises(InvalidInputError, match=match) as info:
        validate_raw(chunk, chunk.tracks[0], data)
    assert "chunk 3" in str(info.value) and chunk.tracks[0].key in str(info.value)


def test_formats_are_parsed_and_checked() -> None:
    assert parse_formats("mp3, FLAC,mp3,opus") == ["mp3", "flac", "opus"]
    with pytest.raises(ValueError, match="wav"):
        parse_formats("mp3,wav")
    with pytest.raises(ValueError, match="no output"):
        parse_formats(" , ")
    assert "192k" in encode_args("mp3", 192)
