"""`stored-marker.json` in the spool root: the marker chunks stored in S3 only.

When the API server refuses a consent marker (403 while the session's namespace
terminates) or stays away past the deadline, its spec is stored in S3
(`ChunkUploader.store_marker_spec`) and the operator's inventory rebuilds the chunk from
it. The recorder cannot list S3 (it only uploads through a POST policy), so a container
restarted in the same pod learns of that chunk from the spool (an emptyDir that survives
container restarts): `write_stored_markers` keeps the specs of every such marker the API
server does not list yet, in index order, written atomically, and `read_stored_markers`
gives them back when they are this session's, meeting's and guild's markers (no tracks,
indexes increasing); anything else (damaged, forged, another session's) is removed with
a warning, never trusted. The recorder takes the chain of them that follows the API
server's last chunk as the session's last chunks (`restart.said_chunks`): the next chunk
index follows them and the gaps they carried are not carried again. Before, the file held
the last marker only: after two runs each storing one (the API away at both ends), the
third found it not following the API server's last chunk, discarded it and reused the
first marker's index, its opt-out taken as none.

At most `MAX_STORED_MARKERS` are kept (a marker is made only at a stop or a consent
change: a few a run); past that a new one is not kept (`Spool.add_stored_marker`), and
is then handled as if the file could not be written.
"""

from __future__ import annotations

import logging
from itertools import pairwise
from pathlib import Path

from pydantic import ValidationError

from voicetrack.chunkspec import ChunkSpec
from voicetrack_recorder.unsaid_file import (
    Owner,
    discard,
    read_owned,
    remove_synced,
    write_owned,
)

log = logging.getLogger(__name__)

MARKER_FILE = "stored-marker.json"
"""The marker chunks stored in S3 only, in the spool root (`write_stored_markers`)."""

MAX_STORED_MARKERS = 64
"""The most marker chunks `stored-marker.json` holds (each about 0.5 KB)."""


def write_stored_markers(root: Path, owner: Owner, specs: list[ChunkSpec]) -> int:
    """Keep marker chunks `specs` (stored in S3 only, index order) as
    `root/stored-marker.json`, or remove the file when `specs` is empty. The file is
    `{"sessionName", "meetingId", "guildId", "specs": [<RecordingChunk spec, camelCase>]}`.
    Returns its size in bytes (0: none). Raises OSError (EIO, ENOSPC, EROFS...) when
    the file cannot be written or removed, logged; the old file is then left as it was
    (only the temporary file removed): it still says true things. The callers only ever
    append a marker or drop the ones the API server lists, so the old list is a prefix of
    the new one, or holds markers a restart drops again by index; removing it, as before,
    forgot markers still unlisted (a restart then reused their indexes)."""
    path = root / MARKER_FILE
    try:
        if specs:
            return write_owned(path, owner, {"specs": [s.to_api() for s in specs]})
        remove_synced(path)
    except OSError as err:
        log.warning("spool %s: %s not rewritten (%s), kept as it was; a restart would not "
                    "know marker chunks %s stored in S3 unless it lists them", root,
                    MARKER_FILE, err, [s.index for s in specs])
        discard(path.with_name(f"{path.name}.tmp"))
        raise
    return 0


def read_stored_markers(root: Path, owner: Owner) -> tuple[list[ChunkSpec], int]:
    """(the markers' specs, the file's size in bytes) of `root/stored-marker.json` when
    it is `owner`'s (the file's and each spec's session, meeting and guild), every spec
    has no tracks, and their indexes increase; else ([], 0), and the file, if any, is
    removed (logged as a warning). A file of the earlier form (one `spec`) is read as a
    list of that one."""
    path = root / MARKER_FILE
    if not path.exists():
        return [], 0
    try:
        doc, size = read_owned(path, owner)
        docs = doc["specs"] if "specs" in doc else [doc["spec"]]
        if not isinstance(docs, list) or not 0 < len(docs) <= MAX_STORED_MARKERS:
            raise ValueError(f"not 1 to {MAX_STORED_MARKERS} specs")
        specs = [ChunkSpec.model_validate(d) for d in docs]
        for spec in specs:
            if (spec.session_name, spec.meeting_id, spec.guild_id) != owner:
                raise ValueError(f"a spec is of (session, meeting, guild) "
                                 f"{(spec.session_name, spec.meeting_id, spec.guild_id)}")
            if spec.tracks:
                raise ValueError(f"spec {spec.index} has tracks: not a marker")
        if any(a.index >= b.index for a, b in pairwise(specs)):
            raise ValueError("indexes not increasing")
    except ValidationError as err:
        log.warning("spool %s: discarding %s left by a previous run: not a chunk spec: %s",
                    root, MARKER_FILE, err.errors()[0]["msg"])
        discard(path)
        return [], 0
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        log.warning("spool %s: discarding %s left by a previous run: %s", root,
                    MARKER_FILE, str(err)[:200])
        discard(path)
        return [], 0
    log.info("spool %s: a previous run stored marker chunks %s in S3", root,
             [(s.index, s.start_ms, s.end_ms) for s in specs])
    return specs, size
