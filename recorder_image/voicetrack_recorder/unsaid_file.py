"""`unsaid.json` in the spool root, and the spool's atomic file writes (adapters: disk I/O).

The gaps not carried by a chunk yet (`gaps.unsaid`, the recorder's `_unsaid`, and the
pause a resumed window holds until it is spooled) are kept in the spool root as
`unsaid.json`, so a restarted container carries them with their causes (`Spool.unsaid`,
`gaps.follow`). The file is `{"sessionName", "meetingId", "guildId", "gaps": [Gap, …]}`
(camelCase), written atomically (`write_atomic`). A file read back is trusted only when it
is this session's, meeting's and guild's and its gaps have the shape the recorder writes
(`check_shape`); anything else (damaged, forged, nested past the parser's recursion
limit) is removed with a warning, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from itertools import pairwise
from pathlib import Path
from typing import Any

from voicetrack.chunkspec import Gap

log = logging.getLogger(__name__)

UNSAID_FILE = "unsaid.json"
"""The gaps not carried by a chunk yet, in the spool root (`write_unsaid`)."""

Owner = tuple[str, str, str]
"""(sessionName, meetingId, guildId) of the spool's session."""


def check_shape(gaps: list[Gap]) -> None:
    """Raise ValueError unless `gaps` have the shape `gaps.unsaid` gives them, which
    `gaps.carry`, `gaps.follow` and `stopmarkers.give_up` assume: at least one, each
    starting where the previous one ends, no two adjacent ones of one cause."""
    if not gaps:
        raise ValueError("it holds no gap")
    for a, b in pairwise(gaps):
        if a.end_ms != b.start_ms:
            raise ValueError("its gaps are not contiguous")
        if a.cause == b.cause:
            raise ValueError(f"two adjacent gaps of cause {a.cause}")


def write_unsaid(root: Path, owner: Owner, gaps: list[Gap]) -> tuple[int, bool]:
    """Keep `gaps` (shaped as `check_shape` wants) as `root/unsaid.json`, or remove the
    file when `gaps` is empty. Returns (the file's size in bytes now, 0: none; whether it
    now holds `gaps`). On a failure (logged) the old file is kept as it was, since what it
    says is still true up to where it ends (the gaps only ever grow at the end or are
    carried by chunks spooled, which `gaps.follow` trims them at on restart), and removing
    it made a restart forget them (a lost window then cut as paused by a pause that came
    after it: review rev-rec); anything else at that path (a directory) is removed. Never
    raises."""
    path = root / UNSAID_FILE
    try:
        if gaps:
            return write_owned(path, owner, {
                "gaps": [g.model_dump(by_alias=True) for g in gaps]}), True
        remove_synced(path)
        return 0, True
    except OSError as err:
        log.warning("spool %s: %s not rewritten (%s), kept as it was; a restart would not "
                    "know the gaps %s", root, UNSAID_FILE, err, [g.model_dump() for g in gaps])
        if path.exists() and not path.is_file():
            discard(path)
    try:
        return path.stat().st_size, False
    except OSError:  # none (or unreadable: then a restart discards it)
        return 0, False


def read_unsaid(root: Path, owner: Owner) -> tuple[list[Gap], int]:
    """(the gaps, the file's size in bytes) of `root/unsaid.json` when it is `owner`'s and
    its gaps pass `check_shape`; else ([], 0), and the file, if any, is removed (logged as
    a warning)."""
    path = root / UNSAID_FILE
    if not path.exists():
        return [], 0
    try:
        doc, size = read_owned(path, owner)
        gaps = [Gap.model_validate(g) for g in doc["gaps"]]
        check_shape(gaps)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        log.warning("spool %s: discarding %s left by a previous run: %s", root,
                    UNSAID_FILE, str(err)[:200])
        discard(path)
        return [], 0
    log.info("spool %s: a previous run left unsaid gaps %s", root,
             [g.model_dump() for g in gaps])
    return gaps, size


def write_owned(path: Path, owner: Owner, body: dict[str, Any]) -> int:
    """Write `{"sessionName", "meetingId", "guildId", **body}` (owner's, compact JSON) to
    `path` atomically (`write_atomic`); returns its size in bytes. Raises OSError."""
    data = json.dumps({"sessionName": owner[0], "meetingId": owner[1],
                       "guildId": owner[2], **body}, separators=(",", ":")).encode()
    write_atomic(path, data)
    return len(data)


def read_owned(path: Path, owner: Owner) -> tuple[dict[str, Any], int]:
    """(the JSON object, its size in bytes) of a file `write_owned` wrote for `owner`.
    Raises OSError (unreadable), ValueError (not JSON, or another owner's), KeyError /
    TypeError (not such an object), RecursionError (nested past the parser's limit): the
    caller discards the file."""
    raw = path.read_bytes()
    doc = json.loads(raw)
    theirs = (doc["sessionName"], doc["meetingId"], doc["guildId"])
    if theirs != owner:
        raise ValueError(f"of (session, meeting, guild) {theirs}, not {owner}")
    return doc, len(raw)


def remove_synced(path: Path) -> None:
    """Remove file `path` if it exists, and fsync its directory. Raises OSError."""
    if path.exists():
        path.unlink()
        sync_directory(path.parent)


def discard(path: Path) -> None:
    """Remove `path`, a file or a directory, if it can be (errors are ignored)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file next to it, fsynced, then
    `os.replace`, then the directory fsynced. Raises OSError."""
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync `directory` (a rename or unlink in it is then on disk). Raises OSError."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
