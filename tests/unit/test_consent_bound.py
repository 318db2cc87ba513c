"""More members opted out than a chunk can list (review finding #5): `ChunkSpec.optedOut`
holds at most MAX_TRACKS (128) entries, and the recorder listed every opted-out member it
had seen, so the 129th member opted out and seen in one session made the spool's
`ChunkSpec` refuse every chunk from then on: the recorder crash-looped. The chunk now lists
the members who matter first (those with audio in this session: promotion must exclude
them) and never more than the model allows, with an error in the log. Real `Chunker` and
`Spool`, on a virtual session clock (`test_chunker_consent.recorder`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.unit.test_chunker_consent import FRAME, LAYOUT, at, recorder
from voicetrack.resources import MAX_TRACKS
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

SPEAKERS = [f"5000000000000{i:05d}" for i in range(3)]
"""Members who speak in chunk 0, then opt out."""
SILENT = [f"6000000000000{i:05d}" for i in range(200)]
"""Members seen in the channel (a voice state) while opted out, who never had audio."""


def test_a_chunk_lists_at_most_max_tracks_opt_outs_and_keeps_those_with_audio(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec, time = recorder(opt_out_users=SILENT)
    spool = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup")
    for slot in range(250):
        for user in SPEAKERS:
            assert rec.push(user, slot, FRAME)
    rec.consent.see_all(SILENT)  # in the channel's voice states, opted out from the start
    at(time, rec, 5400)
    first = rec.chunker.seal()
    assert first is not None and len(first.tracks) == 3
    spool.add(first)  # 200 opted out and seen: over the limit already

    at(time, rec, 6000)  # the three speakers opt out too
    rec.kube.opt_out = (frozenset([*SILENT, *SPEAKERS]), frozenset())
    rec.follow_consent()
    at(time, rec, 10400)
    with caplog.at_level(logging.ERROR, logger="voicetrack_recorder.consent"):
        second = rec.chunker.seal()
        assert second is not None and second.tracks == []
        spec = spool.add(second).spec  # the model's limit holds: no crash loop
    listed = [o.user_id for o in spec.opted_out]
    assert len(listed) == MAX_TRACKS
    assert set(SPEAKERS) <= set(listed)  # their audio of chunk 0 must not be promoted
    assert len(rec.consent.opted_out()) == MAX_TRACKS
    assert any("203 members opted out" in r.getMessage() for r in caplog.records)
