"""What a restarted container takes from its previous run's spool besides its chunks.

The container restarts in the same pod (`ending.RESTARTED_ENDS`, a crash, an OOM kill): the
spool, an emptyDir, outlives it. Besides the chunks sealed and not uploaded
(`ChunkUploader.adopt`), the next run takes from it:

- the marker chunks previous runs stored in S3 only (`marker_file`; the API server refused
  them or stayed away: `stopmarkers.mark_consent`), which the recorder cannot list in S3:
  `said_chunks` makes the chain of them that follows the API server's last chunk the
  session's last chunks, so the next index follows them and the gaps they carried are not
  carried again;
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
    """The session's RecordingChunks `existing` (index order), followed by the marker
    chunks previous runs stored in S3 only (`Spool.stored_markers`, index order) that the
    API server does not list yet, as far as they form a chain after them: each at the next
    index after the chunk before (0 when there is none) and starting (or its gap starting,
    ms) where that one ends. The spool's file keeps that chain for a further restart; the
    markers the API server lists (index at or below its last: made from S3, or a later
    run's chunks) are dropped from it, and so is the rest of a chain that does not follow
    (logged as a warning: a chunk before it is gone). Never raises (the file's failures
    are logged); when that rewrite fails, the file stays as it was and `stored_markers`
    becomes the chain all the same, so a marker kept later is written after the chain.
    Runs in a thread (file I/O)."""
    markers = spool.stored_markers
    if not markers:
        return existing
    last = existing[-1] if existing else None
    listed = [m for m in markers if last is not None and m.index <= last.index]
    if listed:
        log.info("chunks %s, markers a previous run stored in S3 only: the API server lists "
                 "chunks up to %d now; forgotten", [m.index for m in listed],
                 last.index if last else None)
    chain: list[ChunkSpec] = []
    for marker in markers[len(listed):]:  # indexes increase (`read_stored_markers`)
        start = marker.gap.start_ms if marker.gap is not None else marker.start_ms
        if not ((marker.index == 0 and last is None) or (
                last is not None and marker.index == last.index + 1
                and start == last.end_ms)):
            log.warning("chunk %d [%d, %d) ms, a marker a previous run stored in S3 only, "
                        "does not follow chunk %s ending at %s ms: discarded with the %d "
                        "after it", marker.index, start, marker.end_ms,
                        last.index if last else None, last.end_ms if last else None,
                        len(markers) - len(listed) - len(chain) - 1)
            break
        chain.append(marker)
        last = marker
    if chain:
        log.warning("chunks %s, markers a previous run stored in S3 only, are the session's "
                    "last: continuing after them", [(m.index, m.start_ms, m.end_ms)
                                                    for m in chain])
    if len(chain) != len(markers) and not spool.save_stored_markers(chain):
        # the file keeps the old list (a restart drops the same markers again), but the
        # next marker kept must follow the chain: appended after a marker dropped here
        # with a higher index, the file's indexes no longer increased and the next read
        # refused it whole, forgetting every marker in it
        spool.stored_markers = chain
    return [*existing, *chain]


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
