"""`context.context_from` and `context.spec_problem`: a chunk's place in output time from
the earlier specs, and which sets of them are refused, without servers (the integration
side is `tests/integration/test_transcoder_prev_spec.py`)."""

from __future__ import annotations

import pytest

from voicetrack.chunkspec import ChunkSpec, ChunkTrack, Gap
from voicetrack.layout import MeetingLayout
from voicetrack.resources import MAX_CHUNK_SECONDS
from voicetrack_transcoder.context import ChunkContext, Known, context_from, spec_problem

pytestmark = pytest.mark.unit

LAYOUT = MeetingLayout("ctx", "100000000000000007", "ChUnKcOnTeXtAaAa")
USER = "200000000000000011"


def _spec(index: int, start_ms: int, end_ms: int, gap: Gap | None = None,
          stereo: bool = False) -> ChunkSpec:
    tracks = [ChunkTrack(user_id=USER, key=LAYOUT.raw_key(index, USER, "ogg-opus"), frames=1,
                         first_ms=start_ms, last_ms=start_ms, bytes=1, sha256="0" * 64,
                         channels=2 if stereo else 1)]
    return ChunkSpec(session_name="s", meeting_id=LAYOUT.meeting_id, guild_id=LAYOUT.guild_id,
                     index=index, start_ms=start_ms, end_ms=end_ms, gap=gap, tracks=tracks)


def _pause(start_ms: int, end_ms: int) -> Gap:
    return Gap(start_ms=start_ms, end_ms=end_ms, cause="paused")


# 0 [1000, 3000) | paused 2 s | 1 [5000, 7000) | restart 1 s | 2 [8000, 10000)
# | 3 [10000, 12000) | paused 1 s | 4 [13000, 15000)
CHAIN = [_spec(0, 1000, 3000), _spec(1, 5000, 7000, _pause(3000, 5000)),
         _spec(2, 8000, 10000, Gap(start_ms=7000, end_ms=8000, cause="recorder-restart")),
         _spec(3, 10000, 12000, stereo=True), _spec(4, 13000, 15000, _pause(12000, 13000))]
CHUNK = CHAIN[4]


def test_the_pause_total_and_origin_from_the_session_start() -> None:
    assert context_from(CHUNK, CHAIN[3], None, CHAIN[:4]) == ChunkContext(
        origin_ms=1000, paused_ms=3000, prev=CHAIN[3], prev_paused_ms=2000, stereo_seen=True)


def test_a_piece_before_continues_the_chain() -> None:
    """Chunk 1's piece holds the chain up to it: only the specs after it are summed, and
    the result is the one from the session start."""
    known = Known(index=1, end_ms=7000, origin_ms=1000, paused_ms=2000, stereo_seen=False)
    whole = context_from(CHUNK, CHAIN[3], None, CHAIN[:4])
    assert context_from(CHUNK, CHAIN[3], known, CHAIN[2:4]) == whole


@pytest.mark.parametrize(("known", "specs", "why"), [
    (None, [CHAIN[0], CHAIN[1], CHAIN[1], CHAIN[3]], "chunk 1 after chunk 1"),  # duplicate
    (None, [CHAIN[0], CHAIN[2], CHAIN[1], CHAIN[3]], "chunk 1 after chunk 2"),  # disorder
    (None, [CHAIN[0], _spec(1, 2000, 7000), *CHAIN[2:4]], "begins at 2000 ms, before"),
    (None, [*CHAIN[:2], _spec(2, 8000, 10000, _pause(8020, 8040)), CHAIN[3]],
     "gap does not lie before its start"),                                 # negative pause
    (None, [_spec(0, 0, 3000), CHAIN[1], CHAIN[2], _spec(3, 10000, 12000)],
     "spec is not the one placed"),                                        # not prev
    (None, [], "spec is not the one placed"),
    (Known(index=1, end_ms=7500, origin_ms=1000, paused_ms=2000, stereo_seen=False),
     CHAIN[2:4], "does not follow chunk 1's piece"),                       # overlaps it
    (Known(index=2, end_ms=10000, origin_ms=1000, paused_ms=2000, stereo_seen=False),
     CHAIN[2:4], "does not follow chunk 2's piece"),                       # not after it
])
def test_specs_that_cannot_be_one_session_are_refused(
        known: Known | None, specs: list[ChunkSpec], why: str) -> None:
    made = context_from(CHUNK, CHAIN[3], known, specs)
    assert isinstance(made, str) and why in made, made


def test_holes_are_read_as_the_plan_reads_them() -> None:
    """A missing index or a window nobody sealed is a hole, not a refusal (the plan
    accepts both): only pauses are cut, so a hole after chunk 1 changes nothing."""
    whole = context_from(CHUNK, CHAIN[3], None, CHAIN[:4])
    assert context_from(CHUNK, CHAIN[3], None, [CHAIN[0], CHAIN[1], CHAIN[3]]) == whole
    late = _spec(2, 8020, 10000, Gap(start_ms=7020, end_ms=8020, cause="recorder-restart"))
    assert context_from(CHUNK, CHAIN[3], None, [*CHAIN[:2], late, CHAIN[3]]) == whole
    no_first = context_from(CHUNK, CHAIN[3], None, CHAIN[1:4])  # chunk 0 never came
    assert isinstance(no_first, ChunkContext) and (no_first.origin_ms, no_first.paused_ms) \
        == (5000, 1000)  # the plan's origin: the first chunk there is
    known = Known(index=0, end_ms=3000, origin_ms=1000, paused_ms=0, stereo_seen=False)
    assert context_from(CHUNK, CHAIN[3], known, CHAIN[2:4]) == ChunkContext(
        origin_ms=1000, paused_ms=1000, prev=CHAIN[3], prev_paused_ms=0, stereo_seen=True)


def test_a_chunk_longer_than_the_recorder_seals_is_refused() -> None:
    longest = MAX_CHUNK_SECONDS * 1000
    long0 = _spec(0, 0, longest + 1000)
    after = _spec(1, longest + 1000, longest + 3000)
    chunk = _spec(2, longest + 3000, longest + 5000)
    made = context_from(chunk, after, None, [long0, after])
    assert isinstance(made, str) and "more than" in made
    fits = _spec(0, 1000, longest + 1000)
    assert isinstance(context_from(chunk, after, None, [fits, after]), ChunkContext)


def test_spec_problem() -> None:
    assert spec_problem(CHAIN[2], LAYOUT, 2) is None
    assert "index 2, not 3" in (spec_problem(CHAIN[2], LAYOUT, 3) or "")
    other = MeetingLayout("ctx", LAYOUT.guild_id, "OtHeRmEeTiNgIdAa")
    assert "meeting" in (spec_problem(CHAIN[2].model_copy(
        update={"meeting_id": other.meeting_id, "tracks": []}), LAYOUT, 2) or "")
    elsewhere = MeetingLayout("elsewhere", LAYOUT.guild_id, LAYOUT.meeting_id)
    moved = CHAIN[2].model_copy(update={"tracks": [CHAIN[2].tracks[0].model_copy(
        update={"key": elsewhere.raw_key(2, USER, "ogg-opus")})]})
    assert "track key" in (spec_problem(moved, LAYOUT, 2) or "")
