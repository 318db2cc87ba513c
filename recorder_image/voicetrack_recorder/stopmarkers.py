"""The chunks a recorder writes at stop besides its audio: markers without tracks.

- **The lost window's markers** (`give_up`): what could not be uploaded by the stop
  deadline (the spooled chunks left, windows dropped while the spool was full) becomes
  `connection-lost` gaps carried by marker chunks, the last on the window's last 20 ms
  slot, so nothing disappears without a cause; a pause among them keeps its cause
  (`gaps.carry`).
- **The consent marker** (`mark_consent`, docs/consent.md): an opt-out that no chunk
  carried (made while paused, or seen after the last seal) goes into a chunk at the next
  index, the 20 ms window `[end, end + 20)` after the last chunk (after the pause the
  time left unsaid begins with, which it then carries), with the current `optedOut`;
  promotion reads the opt-outs of every chunk.

A marker needs no S3: it is created through the API only. When the API server refuses the
consent marker (403 while the session's namespace terminates) or stays away past the
deadline, its spec is stored in S3 instead (`ChunkUploader.store_marker_spec`), which the
operator's inventory promotes from, and kept in the spool with the others stored so
(`Spool.add_stored_marker`), so a restarted container continues at the index after it
(`restart.said_chunks`): before, it reused that index over the marker's window. Once kept
there it is said as an API-created one is (the gaps it carried are trimmed from what stays
unsaid); when the spool cannot keep it (`stored-marker.json` not written: EIO, ENOSPC,
EROFS, or full), those gaps stay unsaid, so the restarted run's chunk at that index (its
`chunk.json` replacing the marker's in S3) carries them again. Before, they were trimmed
anyway, and a pause it carried became silence. A lost
window's marker never made leaves the session's last word on consent unsaid (`LastWord`
with `None`), so a consent marker is written, after the last marker made.

A lost window's marker not made (the API away past the deadline or refusing it, or a
window the model refuses) ends the run of markers: the time the rest would have carried
lies after the last chunk made, and the consent marker follows that chunk, not the end of
the time nobody carries. Before, it followed the end: a hole between the two with no gap,
which promotion takes for missing chunks (`chunk-failed` silence, a pause in it too). The
time not carried stays unsaid in the spool (`Spool.save_unsaid`) for a restarted container
to carry with its causes; when none follows (the pod goes), the recording ends before it:
it was lost at the end of the session, so no audio after it moves. When that time begins
with a pause (the refused marker was the one carrying it), the consent marker is placed
after the pause and carries it; before, it sat on the pause's first 20 ms while the spool
still kept the pause from its start, so a restarted container cut 20 ms less than the pause.
"""

from __future__ import annotations

import logging
from collections import deque

from pydantic import ValidationError

from voicetrack.audio import FRAME_MS
from voicetrack.chunkspec import Gap, OptOut
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.gaps import CUT, LOST, Marker, carry, follow, unsaid
from voicetrack_recorder.spool import SpooledChunk
from voicetrack_recorder.uploader import ChunkUploader, Deadline

log = logging.getLogger(__name__)

LastWord = tuple[int, list[OptOut] | None]
"""(endMs, optedOut) of the session's last chunk, spooled or found at start; optedOut None
when that chunk was a lost window's marker never made (its list unsaid)."""


def give_up(pending: deque[SpooledChunk], dropped: list[Gap], chunker: Chunker,
            consent: Consent, uploader: ChunkUploader, deadline: Deadline) -> LastWord | None:
    """Record what could not be uploaded as gaps carried by marker chunks without tracks,
    created in index order until `deadline` (`uploader.Deadline`: monotonic s, None = no
    limit, or read before every retry); then drop the spool files, empty `pending`, and
    leave in `dropped` (and the spool's `unsaid.json`) what the markers made do not carry.

    What is lost: the windows of the chunks left in `pending` and `dropped` (the
    contiguous gaps not carried yet since the last chunk spooled, `gaps.unsaid`: windows
    dropped while the spool was full, and the gaps they carried), all `connection-lost`
    except the gaps the chunks carried, which keep their cause: a pause stays `paused`
    (cut from the output), not silence. `gaps.carry` plans a marker between causes; the
    last marker sits on the window's last 20 ms slot and carries the rest. A marker not
    made (deadline, API refusal, the model's refusal) ends the run of markers, so indexes
    stay consecutive, and the time after the last one made stays unsaid (module doc).
    Returns the session's new last word: the end of the last marker made (of the last
    chunk before the lost window when none was), with its `optedOut` when every marker
    was made, else None (unsaid); None when nothing was lost. Runs in a thread."""
    left = list(pending)
    if not left and not dropped:
        return None
    intervals: list[Gap] = []
    for spooled in left:
        if spooled.spec.gap is not None:
            intervals.append(spooled.spec.gap)
        intervals.append(Gap(start_ms=spooled.spec.start_ms, end_ms=spooled.spec.end_ms,
                             cause=LOST))
    intervals += dropped
    end = intervals[-1].end_ms
    waiting = unsaid(intervals, end)
    index = left[0].index if left else chunker.next_index
    for spooled in left:
        uploader.spool.remove(spooled)
    pending.clear()
    lost = [g for g in waiting if g.cause == LOST]  # what this run lost (UploadStats)
    uploader.stats.lost.extend(lost)
    if left or lost:  # a pause alone waiting (a restart while paused) lost nothing
        log.error("chunks %s not uploaded: %s", [s.index for s in left], ", ".join(
            f"[{g.start_ms}, {g.end_ms}) ms {g.cause}" for g in waiting))
    markers, held = carry(waiting)
    if held is not None and held.cause != CUT:  # the last marker, on the window's last
        # 20 ms (never past the session's end), carries the rest
        last_start = held.end_ms - FRAME_MS
        markers.append(Marker(last_start, last_start + FRAME_MS, Gap(
            start_ms=held.start_ms, end_ms=last_start, cause=held.cause)
            if last_start > held.start_ms else None))
    # else a pause ends what is lost (a resume a previous run kept unsaid, its window
    # never spooled): no marker in it (its 20 ms would be silence, not cut); it stays
    # unsaid, which ends the recording before it, or the consent marker carries it
    opted_out = consent.opted_out()  # the last word on consent
    made = 0
    for i, marker in enumerate(markers):
        try:
            spec = uploader.spool.marker_spec(index + i, marker.start_ms, marker.end_ms,
                                              opted_out, consent.degraded, marker.gap)
        except ValidationError as err:  # e.g. past the session's time limit
            log.error("marker [%d, %d) ms not written: %s", marker.start_ms,
                      marker.end_ms, err)
            break
        if not uploader.create_marker(spec, deadline):
            break
        made += 1
    # the chunker's next index follows the markers made, also when they are fewer than
    # the chunks given up (whose indexes were never created): no hole for the consent
    # marker or a next recorder to leave (the live audio stops at the first missing index)
    chunker.next_index = index + made
    uploader.write_ack_file()
    end = markers[made - 1].end_ms if made else waiting[0].start_ms
    dropped[:] = follow(waiting, end)  # the time no marker made carries: unsaid
    uploader.spool.save_unsaid(dropped)
    if not markers:  # a pause alone: the last chunk's word stands
        return None
    return end, list(opted_out) if made == len(markers) else None


def mark_consent(last: LastWord | None, dropped: list[Gap], chunker: Chunker,
                 consent: Consent, uploader: ChunkUploader, deadline: Deadline
                 ) -> LastWord | None:
    """After `give_up`: when the members opted out now differ from `last`'s (or it is
    unsaid), create a consent marker chunk until `deadline`: the chunker's next index, no
    tracks, the current `optedOut`, the 20 ms window `[end, end + 20)` ms after the last
    chunk (20 ms of silence in the output), or, when the gaps left unsaid after it
    (`dropped`, as `give_up` leaves them) begin with a pause, the 20 ms after that pause,
    which it carries as its gap: the pause stays cut whole, never 20 ms of it silence.
    Stored in S3 instead when the API server refuses it or stays away (module doc). When
    it is recorded (created, or stored in S3 and kept in the spool's
    `stored-marker.json`), `dropped` (and the spool's `unsaid.json`, rewritten atomically)
    keeps only what follows it (ms after its end); stored in S3 but not kept in the spool
    (the file's write failed: logged), they stay as they are, for the restarted run that
    reuses its index. Returns the session's new
    last word when it was written, None when nothing was (no chunk yet: no audio to
    exclude; nothing new; the window past the session's time limit; neither store took
    it). Runs in a thread."""
    if last is None:
        return None
    end, listed = last
    now = consent.opted_out()
    if now == listed:
        return None
    pause = dropped[0] if dropped and dropped[0].cause == CUT \
        and dropped[0].start_ms == end else None
    start = pause.end_ms if pause is not None else end
    try:
        spec = uploader.spool.marker_spec(chunker.next_index, start, start + FRAME_MS, now,
                                          consent.degraded, pause)
    except ValidationError as err:  # e.g. the session's time limit reached
        log.error("consent marker after %d ms not written: %s", end, err)
        return None
    log.info("consent marker chunk %d [%d, %d) ms: optedOut %s", spec.index, start,
             start + FRAME_MS, [o.user_id for o in now])
    if uploader.create_marker(spec, deadline):
        recorded = True
    elif uploader.store_marker_spec(spec, deadline):
        recorded = uploader.spool.add_stored_marker(spec)  # a restart follows it
    else:
        return None
    if recorded:  # said, in the API or in S3 and the spool: not again
        dropped[:] = follow(dropped, spec.end_ms)
        uploader.spool.save_unsaid(dropped)
    chunker.next_index += 1
    return spec.end_ms, now
