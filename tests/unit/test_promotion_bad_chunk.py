"""A promotion is never wedged by one bad chunk (`voicetrack_operator.services.leftout`): the
structured termination message that names the chunk, how the operator reads it, the plan
built again without the chunk (its time a gap, its opt-outs kept), the leave-out-once rule,
the deletion progress that remembers it, and the decoder that conceals a packet libopus
rejects instead of failing the meeting. Pure functions and libopus, no cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.unit.test_plan_consent import ANN, CAT, DONE, FAILED, chunk, plan_of
from voicetrack.audio import FRAME_SAMPLES, OPUS_SILENCE_FRAME
from voicetrack.chunkspec import ChunkSpec, ChunkStatus, Gap
from voicetrack.errors import ChunkInputError, InvalidInputError
from voicetrack.manifests import PromotionPlan
from voicetrack.termination import MESSAGE_MAX_BYTES, TerminationReport, write_termination_message
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.failures import bad_chunk, termination_message
from voicetrack_operator.services.inventory import ChunkInventory, InventoryChunk
from voicetrack_operator.services.leftout import LEAVE_OUT_MAX, left_out_reason, may_leave_out
from voicetrack_transcoder.opusdec import OpusDecodeError, OpusDecoder
from voicetrack_transcoder.rawtracks import RawTrack, validate_raw
from voicetrack_transcoder.streams import SpeakerStream, UndecodableOpus, build_timeline

pytestmark = pytest.mark.unit

REASON = "chunk 3: raw object k/chunks/000003/1.opus: sha256 ab… does not match the chunk's cd…"


# ---------------------------------------------------------------- the termination message


def test_a_report_round_trips_and_a_plain_message_is_none() -> None:
    text = TerminationReport(REASON, 3).to_message()
    assert json.loads(text) == {"reason": REASON, "badChunk": 3}
    assert TerminationReport.parse(text) == TerminationReport(REASON, 3)
    for plain in ("error: ffmpeg died", "", "{not json", '["list"]', '{"reason": "x"}',
                  '{"reason": "x", "badChunk": -1}', '{"reason": "x", "badChunk": true}',
                  '{"reason": 3, "badChunk": 1}', '{"reason": "x", "badChunk": "3"}'):
        assert TerminationReport.parse(plain) is None, plain


def test_a_long_reason_is_cut_never_the_json() -> None:
    text = TerminationReport("é" * 5000, 12).to_message()
    assert len(text.encode()) <= MESSAGE_MAX_BYTES
    report = TerminationReport.parse(text)
    assert report is not None and report.bad_chunk == 12 and report.reason.startswith("éé")


def test_write_termination_message_writes_the_report_only_with_a_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "termination-log"
    monkeypatch.setenv("VOICETRACK_TERMINATION_LOG", str(target))
    assert write_termination_message("bad\n  input", 7) == str(target)
    assert TerminationReport.parse(target.read_text()) == TerminationReport("bad input", 7)
    write_termination_message("bad\n  input")
    assert target.read_text() == "bad input"


def test_a_bad_raw_object_raises_the_error_that_names_its_chunk() -> None:
    spec = chunk(3, 0, 1000, {ANN: (0, 980)})
    with pytest.raises(ChunkInputError, match="sha256") as err:
        validate_raw(spec, spec.tracks[0], b"forged")
    assert err.value.index == 3 and isinstance(err.value, InvalidInputError)


# ---------------------------------------------------------------- the operator reads it


def pod(name: str, created: str, message: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "transcoder", "state": {
                "terminated": {"exitCode": 2, "message": message}}}]}}


def test_the_newest_pods_report_names_the_chunk_and_gives_the_reason() -> None:
    report = TerminationReport(REASON, 3).to_message()
    assert termination_message(pod("p", "t", report)) == REASON  # never the JSON
    assert bad_chunk([pod("a", "2026-01-01T00:00:00Z", TerminationReport("x", 1).to_message()),
                      pod("b", "2026-01-01T00:01:00Z", report)]) == 3
    # a failure no chunk is blamed for: today's behaviour
    assert bad_chunk([pod("a", "t", "promotion plan p is malformed")]) is None
    assert bad_chunk([]) is None


# ---------------------------------------------------------------- the plan, built again


def test_a_left_out_chunk_is_a_gap_and_its_opt_outs_still_count() -> None:
    """The last chunk (its raw object overwritten after its transcode) holds CAT's opt-out:
    left out, its window is a `chunk-failed` gap, and CAT stays excluded."""
    specs = [chunk(0, 0, 10_000, {ANN: (0, 9_980), CAT: (1_000, 9_000)}),
             chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)}),
             chunk(2, 20_000, 30_000, {ANN: (20_000, 29_980)}, opted=((CAT, 25_000, "user"),))]
    inv = ChunkInventory(chunks={c.index: InventoryChunk(c, ChunkStatus(
        transcode_status=DONE)) for c in specs})
    before = plan_of(inv.for_plan())
    assert [c.index for c in before.chunks] == [0, 1, 2] and before.gaps == []

    inv.leave_out({2: "left out: sha256 mismatch"})
    assert inv.chunks[2].status.transcode_status is FAILED
    assert inv.chunks[2].status.error == "left out: sha256 mismatch"
    assert [c.spec.index for c in inv.failed] == [2]
    after = plan_of(inv.for_plan())
    assert [c.index for c in after.chunks] == [0, 1]
    assert after.gaps == [Gap(start_ms=20_000, end_ms=30_000, cause="chunk-failed")]
    assert after.session_end_ms == 30_000
    assert CAT in after.excluded and after.speakers == [ANN]
    assert all(t.user_id != CAT for c in after.chunks for t in c.tracks)
    assert after.consent is not None and CAT in [o.user_id for o in after.consent.opted_out]

    # a middle chunk: a gap between the two kept ones, the origin unchanged
    inv = ChunkInventory(chunks={c.index: InventoryChunk(c, ChunkStatus(
        transcode_status=DONE)) for c in specs})
    inv.leave_out({1: "bad", 9: "no such chunk"})
    middle = plan_of(inv.for_plan())
    assert [c.index for c in middle.chunks] == [0, 2]
    assert middle.gaps == [Gap(start_ms=10_000, end_ms=20_000, cause="chunk-failed")]


def test_an_already_failed_chunk_keeps_its_own_reason() -> None:
    spec = chunk(0, 0, 1000, {ANN: (0, 980)})
    inv = ChunkInventory(chunks={0: InventoryChunk(spec, ChunkStatus(
        transcode_status=FAILED, error="transcode not finished within 300 s"))})
    inv.leave_out({0: "left out"})
    assert inv.chunks[0].status.error == "transcode not finished within 300 s"


def test_a_chunk_is_left_out_once_and_only_when_the_plan_promotes_it() -> None:
    specs: list[tuple[ChunkSpec, Any]] = [(chunk(0, 0, 1000, {ANN: (0, 980)}), DONE),
                                         (chunk(1, 1000, 2000, {ANN: (1000, 1980)}), DONE),
                                         (chunk(2, 2000, 3000, {ANN: (2000, 2980)}), FAILED)]
    plan = plan_of(specs)
    assert may_leave_out(1, plan, {})
    assert not may_leave_out(1, plan, {1: "left out before"})  # once: then PromotionFailed
    assert not may_leave_out(2, plan, {})  # failed already: not promoted, no help
    assert not may_leave_out(7, plan, {})  # not a chunk of the plan


def test_no_more_than_a_few_chunks_are_left_out() -> None:
    """Every raw object unreadable (the store's fault, not a recorder's) must not promote
    an empty meeting chunk by chunk: past LEAVE_OUT_MAX the failure stays. Before: no
    bound (review of the day's diff, fault 3)."""
    specs: list[tuple[ChunkSpec, Any]] = [
        (chunk(i, i * 1000, (i + 1) * 1000, {ANN: (i * 1000, i * 1000 + 980)}), DONE)
        for i in range(LEAVE_OUT_MAX + 2)]
    plan = plan_of(specs)
    left = {i: "left out" for i in range(LEAVE_OUT_MAX - 1)}
    assert may_leave_out(LEAVE_OUT_MAX - 1, plan, left)
    left[LEAVE_OUT_MAX - 1] = "left out"
    assert not may_leave_out(LEAVE_OUT_MAX, plan, left)


def test_the_reason_says_why_and_where_the_raw_tracks_are() -> None:
    reason = left_out_reason(3, REASON)
    assert reason.startswith("left out of the promotion") and REASON in reason
    assert "final/failed/000003/" in reason
    assert len(left_out_reason(3, "x" * 5000)) == 1000


def test_deletion_progress_keeps_the_left_out_chunks() -> None:
    p = DeletionProgress(DeletionStep.PROMOTE, left_out={4: "bad", 2: "worse"})
    assert p.to_api() == {"step": "promote", "leftOut": [{"index": 2, "reason": "worse"},
                                                         {"index": 4, "reason": "bad"}]}
    assert DeletionProgress.from_status({"deletion": p.to_api()}) == p
    assert DeletionProgress(DeletionStep.PROMOTE).to_api() == {"step": "promote"}
    junk = {"deletion": {"step": "promote", "leftOut": [{"index": "x"}, 3, {"index": 5}]}}
    assert DeletionProgress.from_status(junk).left_out == {5: ""}


# ---------------------------------------------------------------- the decoder conceals

BAD_PACKET = bytes([0xFB, 0x00])
"""TOC code 3 (RFC 6716 §3.2.5) with a frame count of 0: libopus answers OPUS_INVALID_PACKET."""


def test_a_packet_libopus_rejects_fails_a_strict_decoder() -> None:
    with pytest.raises(OpusDecodeError, match="packet 1"):
        OpusDecoder(2).decode([OPUS_SILENCE_FRAME, BAD_PACKET, OPUS_SILENCE_FRAME])


def test_a_concealing_decoder_loses_that_slot_only_and_counts_it() -> None:
    dec = OpusDecoder(2, conceal=True)
    packets = [OPUS_SILENCE_FRAME, BAD_PACKET, OPUS_SILENCE_FRAME, BAD_PACKET,
               OPUS_SILENCE_FRAME]
    out = np.empty((len(packets) * FRAME_SAMPLES, 2), dtype=np.int16)
    assert dec.decode_into(packets, out) == len(packets) * FRAME_SAMPLES
    assert dec.concealed == 2
    assert not out.any()  # concealment after silence is silence
    assert OpusDecoder(2).concealed == 0


class Fetched:
    """Stands in for `streams.RawFetcher`: hands out fixed packets as a validated track
    (a packet libopus rejects passes the sha256 and `is_one_slot` checks before)."""

    def __init__(self, spec: ChunkSpec, packets: list[bytes]) -> None:
        self.spec, self.packets = spec, packets

    def get(self, pos: int, user_id: str) -> RawTrack:
        return RawTrack(self.spec.tracks[0], "ogg-opus", b"", self.packets, len(self.packets))


@pytest.mark.parametrize("conceal", [False, True])
def test_a_speaker_stream_conceals_only_when_asked(conceal: bool) -> None:
    """The full promotion conceals (and counts: `concealedFrames`); a strict stream (the
    pieces' renders) raises UndecodableOpus, on which the assembly falls back to it."""
    spec = chunk(0, 0, 100, {ANN: (0, 80)})
    plan = PromotionPlan(guild_id=spec.guild_id, meeting_id=spec.meeting_id, prefix="k",
                         session_end_ms=100, speakers=[ANN], chunks=[spec])
    packets = [OPUS_SILENCE_FRAME, BAD_PACKET, OPUS_SILENCE_FRAME, OPUS_SILENCE_FRAME,
               OPUS_SILENCE_FRAME]
    stream = SpeakerStream(ANN, plan, build_timeline(plan), Fetched(spec, packets),  # type: ignore[arg-type]
                           2, conceal=conceal)
    try:
        if not conceal:
            with pytest.raises(UndecodableOpus, match=f"user {ANN}: corrupt Opus data"):
                stream.read(5)
            return
        assert stream.read(5).shape == (5 * FRAME_SAMPLES, 2)
        assert stream.concealed == 1
    finally:
        stream.close()
