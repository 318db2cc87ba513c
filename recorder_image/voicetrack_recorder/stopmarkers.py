"""The chunks a recorder writes at stop besides its audio: markers without tracks.

- **The lost window's markers** (`give_up`): what could not be uploaded by the stop
  deadline (the spooled chunks left, windows dropped while the spool was full) becomes
  `connection-lost` gaps carried by marker chunks, the last on the window's last 20 ms
  slot, so nothing disappears without a cause; a pause among them keeps its cause
  (`gaps.carry`).
- **The consent marker** (`mark_consent`, docs/consent.md): an opt-out that no chunk
  carried (made while paused, or seen after the last seal) goes into a chunk at the next
  index, the 20 ms window `[end, end + 20)` after the last chunk, with the current
  `optedOut`; promotion reads the opt-outs of every chunk.

A marker needs no S3: it is created through the API only. When the API server refuses the
consent marker (403 while the session's namespace terminates) or stays away past the
deadline, its spec is stored in S3 instead (`ChunkUploader.store_marker_spec`), which the
operator's inventory promotes from. A lost window's marker never made leaves the session's
last word on consent unsaid (`LastWord` with `None`), so the consent marker follows it.
"""

from __future__ import annotations

import logging
from collections import deque

from pydantic import ValidationError

from voicetrack.audio import FRAME_MS
from voicetrack.chunkspec import Gap, OptOut
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.gaps import LOST, Marker, carry, unsaid
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
    limit, or read before every retry); then drop the spool files and empty `pending`.

    What is lost: the windows of the chunks left in `pending` and `dropped` (the
    contiguous gaps not carried yet since the last chunk spooled, `gaps.unsaid`: windows
    dropped while the spool was full, and the gaps they carried), all `connection-lost`
    except the gaps the chunks carried, which keep their cause: a pause stays `paused`
    (cut from the output), not silence. `gaps.carry` plans a marker between causes; the
    last marker sits on the window's last 20 ms slot and carries the rest. A marker not
    made (deadline, API refusal) ends the run of markers, so indexes stay consecutive.
    Returns the session's new last word (endMs, and its `optedOut` when every marker was
    made, else None: unsaid), None when nothing was lost. Runs in a thread."""
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
    log.error("chunks %s not uploaded: %s", [s.index for s in left], ", ".join(
        f"[{g.start_ms}, {g.end_ms}) ms {g.cause}" for g in waiting))
    markers, held = carry(waiting)
    if held is not None:  # the last marker, on the window's last 20 ms, carries the rest
        last_start = held.end_ms - FRAME_MS  # held is a lost window (the chunks' windows
        # and the dropped ones end every interval), never past the session's end
        markers.append(Marker(last_start, last_start + FRAME_MS, Gap(
            start_ms=held.start_ms, end_ms=last_start, cause=held.cause)
            if last_start > held.start_ms else None))
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
    return markers[-1].end_ms, list(opted_out) if made == len(markers) else None


def mark_consent(last: LastWord | None, chunker: Chunker, consent: Consent,
                 uploader: ChunkUploader, deadline: Deadline) -> LastWord | None:
    """After `give_up`: when the members opted out now differ from `last`'s (or it is
    unsaid), create a consent marker chunk until `deadline`: the chunker's next index, no
    tracks, the window `[end, end + 20)` ms after the last chunk (20 ms of silence in the
    output), the current `optedOut`; stored in S3 instead when the API server refuses it
    or stays away (module doc). Returns the session's new last word when it was written,
    None when nothing was (no chunk yet: no audio to exclude; nothing new; the window
    past the session's time limit; neither store took it). Runs in a thread."""
    if last is None:
        return None
    end, listed = last
    now = consent.opted_out()
    if now == listed:
        return None
    try:
        spec = uploader.spool.marker_spec(chunker.next_index, end, end + FRAME_MS, now,
                                          consent.degraded)
    except ValidationError as err:  # e.g. the session's time limit reached
        log.error("consent marker after %d ms not written: %s", end, err)
        return None
    log.info("consent marker chunk %d [%d, %d) ms: optedOut %s", spec.index, end,
             end + FRAME_MS, [o.user_id for o in now])
    if uploader.create_marker(spec, deadline) or uploader.store_marker_spec(spec, deadline):
        chunker.next_index += 1
        return spec.end_ms, now
    return None
