"""`stored-marker.json` in the spool root: the last marker chunk stored in S3 only.

When the API server refuses the consent marker (403 while the session's namespace
terminates) or stays away past the deadline, its spec is stored in S3
(`ChunkUploader.store_marker_spec`) and the operator's inventory rebuilds the chunk from
it. The recorder cannot list S3 (it only uploads through a POST policy), so a container
restarted in the same pod learns of that chunk from the spool (an emptyDir that survives
container restarts): `write_stored_marker` keeps its spec there, written atomically, and
`read_stored_marker` gives it back when it is this session's, meeting's and guild's
marker (no tracks); anything else (damaged, forged, another session's) is removed with a
warning, never trusted. The recorder takes it as the session's last chunk when it follows
the API server's (`restart.said_chunks`): the next chunk index follows it and the gaps it
carried are not carried again. Before, the restarted run reused its index over its window.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import ValidationError

from voicetrack.chunkspec import ChunkSpec
from voicetrack_recorder.unsaid_file import Owner, discard, sync_directory, write_atomic

log = logging.getLogger(__name__)

MARKER_FILE = "stored-marker.json"
"""The last marker chunk stored in S3 only, in the spool root (`write_stored_marker`)."""


def write_stored_marker(root: Path, owner: Owner, spec: ChunkSpec | None) -> int:
    """Keep marker chunk `spec` (stored in S3 only) as `root/stored-marker.json`, or remove
    the file when `spec` is None. The file is `{"sessionName", "meetingId", "guildId",
    "spec": <the RecordingChunk spec, camelCase>}`. Returns its size in bytes (0: none).
    Never raises: a failure is logged (a restart would reuse the marker's index) and the
    old file removed (a stale marker must not outlive a newer one), and 0 returned."""
    path = root / MARKER_FILE
    try:
        if spec is not None:
            data = json.dumps({"sessionName": owner[0], "meetingId": owner[1],
                               "guildId": owner[2], "spec": spec.to_api()},
                              separators=(",", ":")).encode()
            write_atomic(path, data)
            return len(data)
        if path.exists():
            path.unlink()
            sync_directory(root)
    except OSError as err:
        log.warning("spool %s: %s not kept (%s); a restart would not know marker chunk %s "
                    "stored in S3", root, MARKER_FILE, err,
                    spec.index if spec is not None else None)
        discard(path)
    return 0


def read_stored_marker(root: Path, owner: Owner) -> tuple[ChunkSpec | None, int]:
    """(the marker's spec, the file's size in bytes) of `root/stored-marker.json` when it
    is `owner`'s (the file's and the spec's session, meeting and guild) and the spec has
    no tracks; else (None, 0), and the file, if any, is removed (logged as a warning)."""
    path = root / MARKER_FILE
    if not path.exists():
        return None, 0
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
        theirs = (doc["sessionName"], doc["meetingId"], doc["guildId"])
        if theirs != owner:
            raise ValueError(f"of (session, meeting, guild) {theirs}, not {owner}")
        spec = ChunkSpec.model_validate(doc["spec"])
        if (spec.session_name, spec.meeting_id, spec.guild_id) != owner:
            raise ValueError(f"its spec is of (session, meeting, guild) "
                             f"{(spec.session_name, spec.meeting_id, spec.guild_id)}")
        if spec.tracks:
            raise ValueError("its spec has tracks: not a marker")
    except ValidationError as err:
        log.warning("spool %s: discarding %s left by a previous run: not a chunk spec: %s",
                    root, MARKER_FILE, err.errors()[0]["msg"])
        discard(path)
        return None, 0
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        log.warning("spool %s: discarding %s left by a previous run: %s", root,
                    MARKER_FILE, str(err)[:200])
        discard(path)
        return None, 0
    log.info("spool %s: a previous run stored marker chunk %d [%d, %d) ms in S3", root,
             spec.index, spec.start_ms, spec.end_ms)
    return spec, len(raw)
