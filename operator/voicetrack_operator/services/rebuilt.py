"""The transcode state of a chunk rebuilt from S3 (`services.inventory`: its RecordingChunk is
gone, or was never made), which its status can no longer say.

Raw tracks that are present are not enough to call it `done`: a chunk whose transcode
failed on its input (a sha256 mismatch, packets libopus refuses) would come back as `done`
once the garbage collector deleted its object, and so would a forged `chunk.json` naming a
sha256 its raw track does not have. Each such chunk then failed a whole promotion run
before being left out, and past `leftout.LEAVE_OUT_MAX` the session's promotion failed for
good. So, in this order:

1. a raw track it names is missing → `failed` (the missing keys);
2. its Job's `result.json` is there and is this chunk's (`chunkresult.read_result`) →
   `done`: the Job verified the raw tracks and stored the frozen copies promotion reads;
3. the SQL mirror (`temp_recordings`, this session's rows of that index) recorded it
   `failed` → `failed`, with the error recorded there;
4. otherwise (never transcoded: the chunk flushed at SIGTERM, or the Job had not finished)
   each raw track's size (its window's bound, then the object's metadata) and sha256
   (streamed) are checked against the spec → `done`, or `failed` naming the first
   mismatch. Only these chunks cost a read of their raw bytes, at most their window's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from voicetrack.audio import PCM_BYTES_PER_SAMPLE, SAMPLES_PER_MS
from voicetrack.chunkspec import ChunkSpec, ChunkStatus, TranscodeStatus
from voicetrack.db.schema import TempRecording
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack_operator.adapters.objects import AsyncObjectStore
from voicetrack_operator.services.chunkresult import read_result

RAW_SLACK_BYTES = 64 * 1024
"""What a raw track may hold beyond its window's PCM (container pages, headers)."""


def raw_bytes_bound(spec: ChunkSpec) -> int:
    """The most bytes (int) one raw track of `spec` can hold: its window as 48 kHz stereo
    s16le PCM, the largest raw format (Ogg Opus is far smaller), plus RAW_SLACK_BYTES. A
    rebuilt chunk whose `chunk.json` claims more is failed unread: a recorder's grant
    lets it upload gigabytes, which the operator would otherwise stream to digest."""
    return (spec.end_ms - spec.start_ms) * SAMPLES_PER_MS * PCM_BYTES_PER_SAMPLE \
        + RAW_SLACK_BYTES


FailedRows = Callable[[], Awaitable[dict[int, str]]]
"""The session's chunk indexes the SQL mirror recorded `failed`, with their errors (read
once, when first needed)."""


def failed_indexes(rows: Collection[TempRecording], session_uid: str) -> dict[int, str]:
    """Index → error of the temp rows of session `session_uid` that are `failed`."""
    return {r.chunk_index: r.error or "transcode failed (SQL mirror)" for r in rows
            if r.session_uid == session_uid and r.chunk_index is not None
            and r.transcode_status == TranscodeStatus.FAILED}


async def rebuilt_status(store: AsyncObjectStore, layout: MeetingLayout, spec: ChunkSpec,
                         keys: Collection[str], failed_rows: FailedRows) -> ChunkStatus:
    """The status of chunk `spec`, rebuilt from S3 with the objects `keys` in its folder
    (module doc for the order). Raises TemporaryFailure (S3 or the database away)."""
    def failed(error: str) -> ChunkStatus:
        return ChunkStatus(transcode_status=TranscodeStatus.FAILED,
                           track_count=len(spec.tracks), error=error[:1000])

    done = ChunkStatus(transcode_status=TranscodeStatus.DONE, track_count=len(spec.tracks))
    missing = [t.key for t in spec.tracks if t.key not in keys]
    if missing:
        return failed(f"RecordingChunk gone and raw tracks missing: {', '.join(missing)}")
    if not spec.tracks:
        return done
    try:
        await read_result(store, layout, spec)
        return done
    except InvalidInputError:  # none, or not this chunk's: its Job did not vouch for it
        pass
    recorded = (await failed_rows()).get(spec.index)
    if recorded is not None:
        return failed(f"RecordingChunk gone; its transcode had failed: {recorded}")
    bound = raw_bytes_bound(spec)
    for track in spec.tracks:
        if track.bytes > bound:
            return failed(f"RecordingChunk gone and its chunk.json says raw track "
                          f"{track.key} has {track.bytes} bytes, more than its "
                          f"{spec.end_ms - spec.start_ms} ms window can hold ({bound})")
        try:
            size = await store.size(track.key)
            if size != track.bytes:  # judged from the metadata: nothing to read
                return failed(f"RecordingChunk gone and raw track {track.key} is not the "
                              f"one its chunk.json names: {size} bytes, not {track.bytes}")
            size, digest = await store.digest(track.key)
        except NotFoundError:
            return failed(f"RecordingChunk gone and raw track {track.key} missing")
        if size != track.bytes or digest != track.sha256:
            return failed(f"RecordingChunk gone and raw track {track.key} is not the one "
                          f"its chunk.json names: {size} bytes sha256 {digest[:12]}…, "
                          f"not {track.bytes} bytes sha256 {track.sha256[:12]}…")
    return done
