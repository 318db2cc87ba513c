"""A chunk's SQL mirror: its `temp_recordings` rows (one per track), written from its
RecordingChunk status after each status patch (`mirror`), compared with that status once
per session after start-up or a takeover (`audit_mirror`), and replayed for a whole
session when a write failed earlier (`resync_chunks`). The rows are idempotent,
forward-only upserts, so any of these may run again. A write that fails (the database
away, the meeting row gone, another session's meeting) marks the session unsynced
(`Context.unsynced`) instead of raising: `SessionService.resync` catches up.
"""

from __future__ import annotations

import logging
from typing import Any

from voicetrack.db.meetings import MeetingIdInUse
from voicetrack.errors import NotFoundError, TemporaryFailure
from voicetrack_operator.context import Context
from voicetrack_operator.services.chunkstate import ChunkRef, mirrorable, parsed

log = logging.getLogger(__name__)


async def mirror(ctx: Context, chunk: ChunkRef) -> bool:
    """Write the chunk's typed status into `temp_recordings` (one row per track: its
    primary output's key, sha256 and duration). Returns False (and counts it) when the
    database is unavailable; the resync catches up. Idempotent (upserts, forward-only)."""
    st = chunk.status
    try:
        for track in chunk.spec.tracks:
            out = st.primary_output(track.user_id)
            await ctx.db.upsert_chunk_status(
                chunk.session_uid, chunk.spec.index, track.user_id, chunk.spec.meeting_id,
                chunk.spec.guild_id, track.key, chunk.spec.raw_format,
                st.transcode_status.value, job_name=st.job_name,
                mp3_path=out.key if out else None, sha256=out.sha256 if out else None,
                duration_ms=out.duration_ms if out else None, error=st.error)
    except TemporaryFailure as err:
        ctx.metrics.db_errors.inc()
        ctx.unsynced[(chunk.namespace, chunk.spec.session_name)] = str(err)
        log.warning("SQL mirror of %s deferred: %s", chunk.name, err)
        return False
    except NotFoundError as err:  # the meeting row is gone: the session's observe
        # rebuilds it from the cluster and replays the chunks (`resync`)
        ctx.unsynced[(chunk.namespace, chunk.spec.session_name)] = str(err)
        log.warning("SQL mirror of %s deferred: %s", chunk.name, err)
        return False
    except MeetingIdInUse as err:  # another session's meeting: never written; the
        # session's observe fails it (`SessionService.repair_meeting`)
        ctx.unsynced[(chunk.namespace, chunk.spec.session_name)] = str(err)
        log.error("SQL mirror of %s refused: %s", chunk.name, err)
        return False
    return True


async def audit_mirror(ctx: Context, objs: list[dict[str, Any]], meeting_id: str) -> bool:
    """Compare the chunks `objs` (one session's, meeting `meeting_id`) with their
    `temp_recordings` rows in one read and mirror each chunk whose rows are missing or
    behind: what a replica killed between a chunk's status patch and its SQL write left
    (run once per session after start-up or a takeover). Only `mirrorable` chunks.
    True when the mirror is whole; False (counted, the session marked unsynced) while
    the database is away or the meeting row is gone."""
    mirrored = [c for c in map(parsed, objs) if c is not None and mirrorable(c, meeting_id)]
    if not mirrored:
        return True
    first = mirrored[0]
    try:
        rows = await ctx.db.get_temp_recordings_for_meeting(meeting_id)
    except (TemporaryFailure, NotFoundError) as err:  # NotFound: the meeting row is
        # gone; the session's resync makes it again and replays every chunk
        ctx.metrics.db_errors.inc()
        ctx.unsynced[(first.namespace, first.spec.session_name)] = str(err)
        return False
    stored = {(r.session_uid, r.chunk_index, r.user_id): str(r.transcode_status)
              for r in rows}
    ok = True
    for c in mirrored:
        want = c.status.transcode_status.value
        if any(stored.get((c.session_uid, c.spec.index, t.user_id)) != want
               for t in c.spec.tracks):
            ok = await mirror(ctx, c) and ok
    return ok


async def resync_chunks(ctx: Context, namespace: str, session: str, uid: str,
                        meeting_id: str) -> bool:
    """Replay every `mirrorable` chunk's status of session `uid` (meeting
    `meeting_id`) into SQL (idempotent). True when all writes landed."""
    ok = True
    for obj in await ctx.kube.list_chunks(namespace, session, uid):
        chunk = parsed(obj)
        if chunk is not None and mirrorable(chunk, meeting_id):
            ok = await mirror(ctx, chunk) and ok
    return ok
