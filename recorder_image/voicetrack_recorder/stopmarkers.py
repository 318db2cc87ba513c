"""The chunks a recorder writes at stop besides its audio: markers without tracks.

- **The lost window's marker** (`give_up`): what could not be uploaded by the stop deadline
  (the spooled chunks left, a window dropped while the spool was full) becomes one
  `connection-lost` gap carried by a marker chunk on the window's last 20 ms slot, so
  nothing disappears without a cause.
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
from voicetrack_recorder.spool import SpooledChunk
from voicetrack_recorder.uploader import ChunkUploader, Deadline

log = logging.getLogger(__name__)

LastWord = tuple[int, list[OptOut] | None]
"""(endMs, optedOut) of the session's last chunk, spooled or found at start; optedOut None
when that chunk was a lost window's marker never made (its list unsaid)."""


def give_up(pending: deque[SpooledChunk], lost: Gap | None, chunker: Chunker,
            consent: Consent, uploader: ChunkUploader, deadline: Deadline) -> LastWord | None:
    """Record what could not be uploaded (the chunks left in `pending`, a window `lost`
    while the spool was full) as one `connection-lost` gap carried by a marker chunk
    without tracks on the window's last 20 ms slot, created until `deadline`
    (`uploader.Deadline`: monotonic s, None = no limit, or read before every retry); then
    drop the spool files and empty `pending`. Returns the session's new last word, None
    when nothing was lost. Runs in a thread."""
    left = list(pending)
    if not left and lost is None:
        return None
    first = left[0].spec if left else None
    if first is not None:
        start = first.gap.start_ms if first.gap is not None else first.start_ms
    else:
        assert lost is not None
        start = lost.start_ms
    end = lost.end_ms if lost is not None else left[-1].spec.end_ms
    index = first.index if first is not None else chunker.next_index
    for spooled in left:
        uploader.spool.remove(spooled)
    pending.clear()
    uploader.stats.lost.append(Gap(start_ms=start, end_ms=end, cause="connection-lost"))
    log.error("chunks %s not uploaded: [%d, %d) ms lost (connection-lost)",
              [s.index for s in left], start, end)
    marker_start = end - FRAME_MS
    spec = uploader.spool.marker_spec(
        index, marker_start, end, consent.opted_out(),  # the last word on consent
        consent.degraded, Gap(start_ms=start, end_ms=marker_start,
                              cause="connection-lost") if marker_start > start else None)
    made = uploader.create_marker(spec, deadline)
    if made:  # a lost window's marker takes the index the chunker would give next
        chunker.next_index = max(chunker.next_index, index + 1)
    uploader.write_ack_file()
    return end, list(spec.opted_out) if made else None


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
