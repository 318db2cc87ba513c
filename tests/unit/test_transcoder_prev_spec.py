"""`context.prev_problem`: which spec may be the chunk right before a chunk, without
servers (the integration side is `tests/integration/test_transcoder_prev_spec.py`)."""

from __future__ import annotations

import pytest

from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.resources import MAX_CHUNK_SECONDS
from voicetrack_transcoder.context import prev_problem

pytestmark = pytest.mark.unit


def _spec(index: int, start_ms: int, end_ms: int, gap: Gap | None = None) -> ChunkSpec:
    return ChunkSpec(session_name="s", meeting_id="PrEvSpEcUnItAaAa",
                     guild_id="100000000000000007", index=index, start_ms=start_ms,
                     end_ms=end_ms, gap=gap)


HOUR = 3_600_000
CHUNK = _spec(60, HOUR, HOUR + 60_000)


def test_the_chunk_right_before_fits() -> None:
    assert prev_problem(_spec(59, HOUR - 60_000, HOUR), CHUNK) is None
    gap = Gap(start_ms=HOUR - 5000, end_ms=HOUR, cause="recorder-restart")
    after_gap = _spec(60, HOUR, HOUR + 60_000, gap)
    assert prev_problem(_spec(59, HOUR - 65_000, HOUR - 5000), after_gap) is None
    longest = MAX_CHUNK_SECONDS * 1000
    assert prev_problem(_spec(59, HOUR - longest, HOUR), CHUNK) is None


@pytest.mark.parametrize(("prev", "chunk", "why"), [
    (_spec(59, 0, 20), CHUNK, "ends at 20 ms"),  # the reviewer's forgery: an hour's render
    (_spec(58, HOUR - 60_000, HOUR), CHUNK, "index 58"),
    (_spec(59, HOUR - 60_000, HOUR + 20), CHUNK, "ends at"),
    (_spec(59, HOUR - 60_000, HOUR),
     _spec(60, HOUR, HOUR + 60_000, Gap(start_ms=HOUR - 40, end_ms=HOUR, cause="paused")),
     "ends at"),
    (_spec(59, 0, HOUR), CHUNK, "more than"),
])
def test_a_spec_that_is_not_the_chunk_before_is_refused(
        prev: ChunkSpec, chunk: ChunkSpec, why: str) -> None:
    problem = prev_problem(prev, chunk)
    assert problem is not None and why in problem
