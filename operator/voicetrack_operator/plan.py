"""The promotion plan, built purely from a session's spec and chunks.

Output time starts at the first chunk's start (the moment capture began, t = 0 of the
recording), so the plan is rebased: every window and gap is shifted by that origin. Every
interval of `[0, end)` that no promoted chunk covers is a gap with its cause: a failed
chunk's window is `chunk-failed`; an interval before a chunk keeps that chunk's recorded
cause (`paused`, `recorder-restart`, …); an interval nobody recorded a cause for is
missing chunks, `chunk-failed` (silence).
"""

from __future__ import annotations

from voicetrack.manifests import PromotionPlan
from voicetrack.resources import ChunkSpec, Gap, SessionSpec, TranscodeStatus


def build_promotion_plan(spec: SessionSpec, meeting_id: str,
                         chunks: list[tuple[ChunkSpec, TranscodeStatus]]) -> PromotionPlan | None:
    """The plan for `chunks` (spec, transcode status) or None when no chunk is `done`.

    Raises ValueError when chunk windows overlap (a recorder bug; promotion must not
    guess which copy is right)."""
    ordered = sorted(chunks, key=lambda c: c[0].start_ms)
    if not any(status == TranscodeStatus.DONE for _, status in ordered):
        return None
    origin = ordered[0][0].start_ms
    cursor = origin
    promoted: list[ChunkSpec] = []
    gaps: list[Gap] = []
    for chunk, status in ordered:
        if chunk.start_ms < cursor:
            raise ValueError(f"chunk {chunk.index} starts at {chunk.start_ms} ms, inside the "
                             f"previous window ending at {cursor} ms")
        if chunk.start_ms > cursor:
            # no recorded cause: chunks are missing here (lost), never a made-up restart
            cause = chunk.gap.cause if chunk.gap else "chunk-failed"
            gaps.append(Gap(start_ms=cursor - origin, end_ms=chunk.start_ms - origin,
                            cause=cause))
        if status == TranscodeStatus.DONE:
            promoted.append(chunk.model_copy(update={
                "start_ms": chunk.start_ms - origin, "end_ms": chunk.end_ms - origin,
                "gap": None}))
        else:
            gaps.append(Gap(start_ms=chunk.start_ms - origin, end_ms=chunk.end_ms - origin,
                            cause="chunk-failed"))
        cursor = chunk.end_ms
    speakers = sorted({t.user_id for c in promoted for t in c.tracks})
    return PromotionPlan(
        guild_id=spec.guild_id, meeting_id=meeting_id, prefix=spec.storage.prefix,
        session_end_ms=cursor - origin, speakers=speakers, chunks=promoted, gaps=gaps,
        tracks=spec.output.tracks, formats=list(spec.output.formats),
        mp3_bitrate=spec.output.mp3_bitrate)
