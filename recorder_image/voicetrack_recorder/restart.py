"""What a restarted container takes from its previous run's spool besides its chunks.

The container restarts in the same pod (`ending.RESTARTED_ENDS`, a crash, an OOM kill): the
spool, an emptyDir, outlives it. Besides the chunks sealed and not uploaded
(`ChunkUploader.adopt`), the next run takes from it:

- the marker chunk a previous run stored in S3 only (`marker_file`; the API server refused
  it or stayed away: `stopmarkers.mark_consent`), which the recorder cannot list in S3:
  `said_chunks` makes it the session's last chunk when it follows the API server's, so
  the next index follows it and the gaps it carried are not carried again;
- the gaps a previous run left unsaid (`unsaid_file`), as far as they follow the session's
  last chunk (`restore_unsaid`).
"""

from __future__ import annotations

import logging

from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack_recorder.gaps import follow, spans
from voicetrack_recorder.spool import Spool

log = logging.getLogger(__name__)


def said_chunks(spool: Spool, existing: list[ChunkSpec]) -> list[ChunkSpec]:
    """The session's RecordingChunks `existing` (index order), followed by the marker chunk
    a previous run stored in S3 only (`Spool.stored_marker`, taken once) when it follows
    them: the next index after the last one's (0 when there is none) and starting (or its
    gap starting, ms) where the last one ends. Its file is kept for a further restart
    until the API server lists a chunk at or past its index (made from it, or the next
    run's chunks), then removed; so is one that does not follow (logged as a warning: a
    chunk before it is gone). Runs in a thread (file I/O)."""
    marker, spool.stored_marker = spool.stored_marker, None
    if marker is None:
        return existing
    last = existing[-1] if existing else None
    start = marker.gap.start_ms if marker.gap is not None else marker.start_ms
    if (marker.index == 0 and last is None) or (
            last is not None and marker.index == last.index + 1 and start == last.end_ms):
        log.warning("chunk %d [%d, %d) ms, a marker a previous run stored in S3 only, is "
                    "the session's last: continuing after it", marker.index,
                    marker.start_ms, marker.end_ms)
        return [*existing, marker]
    if last is not None and marker.index <= last.index:
        log.info("chunk %d, a marker a previous run stored in S3 only: the API server "
                 "lists chunks up to %d now; forgotten", marker.index, last.index)
    else:
        log.warning("chunk %d [%d, %d) ms, a marker a previous run stored in S3 only, does "
                    "not follow chunk %s ending at %s ms: discarded", marker.index,
                    start, marker.end_ms, last.index if last else None,
                    last.end_ms if last else None)
    spool.save_stored_marker(None)
    return existing


def restore_unsaid(spool: Spool, end_ms: int | None) -> list[Gap]:
    """The gaps a previous run left unsaid (`Spool.unsaid`, taken once) that follow the
    session's last chunk, ending at `end_ms` (session ms; None: no chunk), as
    `gaps.follow` keeps them; the rest is dropped with a warning (their time falls in the
    restart gap) and the spool's file rewritten to match. Runs in a thread (file I/O)."""
    saved, spool.unsaid = spool.unsaid, []
    kept = follow(saved, end_ms)
    if saved and not kept:
        log.warning("the gaps a previous run left unsaid, %s, do not follow the "
                    "session's last chunk (ending at %s ms): discarded", spans(saved), end_ms)
    elif kept:
        log.warning("a previous run left unsaid %s: the next chunk carries them",
                    spans(kept))
    spool.save_unsaid(kept)  # rewritten only when it differs
    return kept
