"""Spool → S3 → RecordingChunk: the recorder's flush path.

A sealed chunk is first written to the spool (`voicetrack_recorder.spool`: the pod's disk,
bounded). `upload` then writes every speaker's raw track from its spool file to S3
(streamed in parts), then the chunk's spec in its folder (`chunk.json`, the spool's own
file, for a chunk without tracks too: `MeetingLayout.chunk_manifest_key`), creates the
RecordingChunk, and only then removes the files: a chunk is acknowledged once both exist.
The spec in S3 lets the operator promote a chunk whose RecordingChunk was never made: the
chunks flushed at SIGTERM while the session's namespace terminates, where the API server
refuses every create (403, `NamespaceTerminating`), and the chunks flushed after the
session's own ServiceAccount, Role or RoleBinding were collected (a deletion with
`--cascade=foreground` collects them at once, before the recorder's SIGTERM flush: 401 or
403, `ApiAccessDenied`), or the API server away at the flush of a session being deleted:
taken so only when the end is forced (`upload`). Such a refusal is not retried: the
chunk counts as uploaded with its spec in S3, so every spooled chunk gets its turn inside
the termination grace (before, the first one retried its create until the deadline and
the rest were given up).
The operator's inventory (`services.inventory`) takes it only as the chunk of the session
whose own folder holds it (the upload grant confines the recorder to that folder) and
after the same checks as a RecordingChunk's. TemporaryFailure (S3 or the API server away) is retried
with capped backoff and no count limit until the caller's deadline (so is an upload grant
S3 refuses while a newer one is awaited: `grant.GrantAwaited`); a permanent storage
failure (`faults.permanent_cause`) is raised as InvalidInputError.

A restarted recorder's spool holds what its previous run sealed but did not acknowledge
(`Spool.adopted`). `adopt` reconciles it with the session's RecordingChunks: a chunk whose
RecordingChunk exists with the same spec (the run ended between the create and the files'
removal) is done (its files removed, its index acknowledged once), and the chunks that
follow the last RecordingChunk in index and time are queued, in index order, before any
new chunk; the rest is removed with a warning. A 409 on an upload is idempotent the same
way: the existing chunk with our spec counts as created (`RecorderKube.check_existing`),
and an index is acknowledged once. The RecordingChunk is read before the raw objects are
written (`RecorderKube.chunk_exists`): the raw objects of a chunk that exists with another
spec (a second recorder of the session: a pod force-deleted on a node cut off from the API
server but not from S3) are never overwritten; before, they were, and that window's
transcode failed its sha256 check for good (silence). Two writers racing between the read
and the create can still both write; the read narrows that to one round trip. The
S3-only writes after an API failure at a forced end cannot read first (the API refuses
the recorder): there, a second writer's chunk could be overwritten, which needs a
force-deleted recorder still running at its session's deletion.

Every acknowledged index is kept (`UploadStats.acked`) and written as JSON to the ack file
after each acknowledgement ($VOICETRACK_ACK_FILE, default `$TMPDIR/voicetrack-acked.json`),
so a test can compare sent with received. A restarted recorder in the same pod (the
emptyDir survives) reads it first and keeps adding: the file holds every run's acks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.errors import (
    ApiAccessDenied,
    InvalidInputError,
    NamespaceTerminating,
    TemporaryFailure,
)
from voicetrack.uploadgrant import UploadGrant, post_object
from voicetrack_recorder.chunker import SealedChunk
from voicetrack_recorder.faults import FIRST_DELAY_S, index_ranges, next_delay, raise_if_permanent
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import SPEC_FILE, Spool, SpooledChunk, spec_json

log = logging.getLogger(__name__)

ACK_FILE_ENV = "VOICETRACK_ACK_FILE"

Deadline = Callable[[], float | None] | float | None
"""When a retry loop gives up: a monotonic time (s), None for no limit, or a callable read
before every retry (so a deadline set later, e.g. at SIGTERM, is seen)."""


@dataclass
class UploadStats:
    """Chunks acknowledged (count and indices), raw bytes written, retries, and the
    windows given up (`lost`: gaps with cause `connection-lost`, session ms)."""

    chunks: int = 0
    bytes: int = 0
    retries: int = 0
    acked: list[int] = field(default_factory=list)
    lost: list[Gap] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `acknowledged 0-11 (12 by this run, N bytes); lost [a, b) ms …`
        (the ranges include what earlier runs in this pod acknowledged)."""
        text = f"acknowledged {index_ranges(self.acked)} ({self.chunks} by this run, " \
               f"{self.bytes} bytes)"
        if self.lost:
            text += "; lost " + ", ".join(f"[{g.start_ms}, {g.end_ms}) ms {g.cause}"
                                          for g in self.lost)
        return text


def default_ack_file() -> str:
    """$VOICETRACK_ACK_FILE, else `$TMPDIR/voicetrack-acked.json`."""
    return os.environ.get(ACK_FILE_ENV) or os.path.join(tempfile.gettempdir(),
                                                         "voicetrack-acked.json")


def read_acked(path: str) -> list[int]:
    """The indices an earlier run in this pod acknowledged (`[]` when there is none or the
    file is unreadable)."""
    try:
        with open(path) as f:
            return [int(i) for i in json.load(f).get("acked", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def _kept_in_s3_only(spec: ChunkSpec, why: Exception) -> None:
    log.warning("chunk %d: %s; kept in S3 only (chunk.json: the operator's inventory "
                "promotes it)", spec.index, why)


class RawWriter(Protocol):
    """Where raw tracks go: `put_file(key, path, content_type)`, raising TemporaryFailure
    (retried) or InvalidInputError. `voicetrack.objectstore.ObjectStore` is one (S3 keys);
    `GrantWriter` is the other (the session's upload grant, no keys)."""

    def put_file(self, key: str, path: str,
                 content_type: str = "application/octet-stream") -> object: ...


@dataclass(frozen=True)
class GrantWriter:
    """Writes raw tracks with the session's upload grant (an S3 POST policy the operator
    minted for the session's chunk prefix): the recorder holds no S3 key, so it can neither
    read, list nor delete anything, nor write outside its session's prefix."""

    endpoint: str
    grant: UploadGrant

    def put_file(self, key: str, path: str,
                 content_type: str = "application/octet-stream") -> None:
        """POST `path` as `key` (`voicetrack.uploadgrant.post_object`)."""
        post_object(self.endpoint, self.grant, key, path, content_type)


class ChunkUploader:
    """Writes sealed chunks of one session: spool, raw objects, then the RecordingChunk."""

    def __init__(self, store: RawWriter, kube: RecorderKube, spool: Spool,
                 session_uid: str, ack_file: str | None = None) -> None:
        """`ack_file`: where acknowledged indices go (default `default_ack_file()`)."""
        self.store = store
        self.kube = kube
        self.spool = spool
        self.session_uid = session_uid
        self.ack_file = ack_file if ack_file is not None else default_ack_file()
        self.stats = UploadStats(acked=read_acked(self.ack_file))

    def spool_chunk(self, chunk: SealedChunk) -> SpooledChunk:
        """Encode `chunk` into the spool (chunks in index order). Raises SpoolFull, OSError
        (another disk failure) or pydantic's ValidationError (`Spool.add`)."""
        return self.spool.add(chunk)

    def adopt(self, existing: list[ChunkSpec]) -> list[SpooledChunk]:
        """The spool's adopted chunks (`Spool.adopted`, taken once) to upload before any
        new chunk, given the session's RecordingChunks `existing` (index order): those
        that continue it, i.e. each has the next index and starts (or its gap starts)
        where the previous one ends; the first also continues `existing`'s last chunk
        (with none, it is index 0). An adopted chunk whose RecordingChunk exists with the
        same spec is done: its files are removed and its index acknowledged (once). Every
        other one (the API holds another spec under its index, or it does not follow: a
        chunk before it was incomplete or corrupt) is removed with a warning; its window
        falls in the recorder's restart gap."""
        adopted, self.spool.adopted = self.spool.adopted, []
        by_index = {c.index: c for c in existing}
        last_index = existing[-1].index if existing else -1
        last_end = existing[-1].end_ms if existing else None
        queue: list[SpooledChunk] = []
        for spooled in adopted:
            spec = spooled.spec
            start = spec.gap.start_ms if spec.gap is not None else spec.start_ms
            if by_index.get(spec.index) == spec:
                log.info("chunk %d: its RecordingChunk exists already; spool files removed",
                         spec.index)
                self.spool.remove(spooled)
                if spec.index not in self.stats.acked:
                    self.stats.acked.append(spec.index)
                    self.write_ack_file()
            elif spec.index == last_index + 1 and last_end in (None, start):
                queue.append(spooled)
                last_index, last_end = spec.index, spec.end_ms
            else:
                log.warning("chunk %d [%d, %d) ms left in the spool does not follow chunk %d "
                            "ending at %s ms (or the API holds another chunk %d): discarded",
                            spec.index, start, spec.end_ms, last_index, last_end, spec.index)
                self.spool.remove(spooled)
        if queue:
            log.warning("re-adopted %d chunk(s) %s a previous run spooled but did not "
                        "upload; uploading them first", len(queue),
                        index_ranges([s.index for s in queue]))
        return queue

    def upload(self, spooled: SpooledChunk,
               deadline: Callable[[], float | None] = lambda: None,
               forced: Callable[[], bool] = lambda: False) -> ChunkSpec:
        """Write the chunk's raw objects then its RecordingChunk, unless that exists already
        (`RecorderKube.chunk_exists`, read first: as this chunk it is done; with another
        spec or owner nothing is written, so a second recorder of the session never
        replaces the raw audio, the source of truth, of a chunk the first one made).
        Retries TemporaryFailure with backoff (0.5 s doubling to 10 s, no count limit)
        until `deadline()` (monotonic seconds, or None = forever; read before every retry,
        so a stop sets one deadline for all pending uploads); then removes its spool files.
        When the end is forced (`forced()`, read once per failure: SIGTERM or the session
        deleted, so no run of this pod follows and its spool goes with it), an
        ApiAccessDenied (401 or 403: the session's recorder identity is gone, collected
        before this flush), or any TemporaryFailure of the API once the session is being
        deleted (`RecorderKube.deleted`), is not retried: the raw objects and `chunk.json`
        are written without the read and the chunk counts as uploaded, as for
        NamespaceTerminating (module doc); S3's failures are still retried until the
        deadline. Otherwise it is retried like any TemporaryFailure (the spool keeps the
        chunk): a run restarted after an error end, or the pod that replaces a drained
        one, resumes after the last RecordingChunk and would reuse the index of a chunk
        acknowledged in S3 only.
        Raises TemporaryFailure when the deadline passes first (the files stay),
        InvalidInputError for a permanent failure (a bad bucket or credentials, a refused
        RecordingChunk, one that exists with another spec or owner)."""
        spec = spooled.spec
        delay = FIRST_DELAY_S
        api_failed: TemporaryFailure | None = None  # S3 only: no API at a forced end
        written = False  # this chunk's raw objects and spec are in S3
        while True:
            in_api = True  # which side the next failure comes from
            try:
                if api_failed is None and self.kube.chunk_exists(spec, self.session_uid):
                    break  # an earlier try got through: its raw objects are written
                in_api = False
                for key, path in spooled.files.items():
                    self.store.put_file(key, path, "audio/ogg" if key.endswith(".opus")
                                        else "application/octet-stream")
                # its spec in its folder, before the object (module doc); trackless
                # chunks too: their gaps and opt-outs matter to promotion
                self.store.put_file(self.spool.layout.chunk_manifest_key(spec.index),
                                    os.path.join(spooled.directory, SPEC_FILE),
                                    "application/json")
                written = True
                if api_failed is not None:
                    _kept_in_s3_only(spec, api_failed)
                    break
                in_api = True
                self.kube.create_chunk(spec, self.session_uid)
                break
            except NamespaceTerminating as err:  # the object never will be: S3 holds it
                _kept_in_s3_only(spec, err)
                break
            except TemporaryFailure as err:
                if in_api and api_failed is None and forced() and (
                        isinstance(err, ApiAccessDenied) or self.kube.deleted.is_set()):
                    # a forced end, and the API refuses this recorder (401/403: its
                    # ServiceAccount, Role or RoleBinding collected with a session deleted
                    # with --cascade=foreground), or is away while the session is being
                    # deleted. Retrying until the deadline gave the chunk up, and the spool
                    # goes with the pod; S3 still takes it (the grant needs no API). Not
                    # for a pod deleted while its session lives (a drain): its successor
                    # would reuse the index, so that is retried and given up as before
                    api_failed = err
                    if written:  # only the create failed: S3 has it all already
                        _kept_in_s3_only(spec, err)
                        break
                    continue
                raise_if_permanent(err)
                self.stats.retries += 1
                limit = deadline()
                if limit is not None and time.monotonic() + delay > limit:
                    # the reason given up with; the spool files stay for the caller
                    log.error("chunk %d: not uploaded by the stop deadline: %s",
                              spec.index, err)
                    raise
                log.warning("chunk %d: %s; retrying in %.1fs", spec.index, err, delay)
                time.sleep(delay)
                delay = next_delay(delay)
        self.spool.remove(spooled)
        self._acknowledge(spec)
        log.info("chunk %d sealed: [%d, %d) ms, %d track(s), %d bytes", spec.index,
                 spec.start_ms, spec.end_ms, len(spec.tracks), spooled.size)
        return spec

    def create_marker(self, spec: ChunkSpec, deadline: Deadline) -> bool:
        """Create `spec`, a chunk without tracks (it needs no S3), retrying TemporaryFailure
        until `deadline` (monotonic s; a callable is read before every retry, like
        `upload`'s; None = no limit). Returns False when the deadline passed first or the
        API server refused it (logged: this runs while stopping, after the error that
        matters)."""
        delay = FIRST_DELAY_S
        while True:
            try:
                self.kube.create_chunk(spec, self.session_uid)
                self._acknowledge(spec)
                return True
            except (InvalidInputError, NamespaceTerminating) as err:
                log.error("chunk %d (gap marker) refused: %s", spec.index, err)
                return False
            except TemporaryFailure as err:
                limit = deadline() if callable(deadline) else deadline
                if limit is not None and time.monotonic() + delay > limit:
                    log.error("chunk %d (gap marker): %s; giving up", spec.index, err)
                    return False
                time.sleep(delay)
                delay = next_delay(delay)

    def store_marker_spec(self, spec: ChunkSpec, deadline: Deadline) -> bool:
        """Write marker chunk `spec` (no tracks) as `chunk.json` in its own chunk folder
        (`MeetingLayout.chunk_manifest_key`), the copy the operator's inventory rebuilds a
        chunk from when its RecordingChunk was never made: for a marker whose create was
        refused (403 while the session's namespace terminates) or given up (the API server
        away past `deadline`). Retries TemporaryFailure until `deadline` (as
        `create_marker`; at least one attempt). Returns whether it was written (a failure
        is logged: this runs while stopping). Only for a marker at a fresh index (the
        consent marker): a folder holding another spec's raw tracks must keep its own."""
        key = self.spool.layout.chunk_manifest_key(spec.index)
        delay = FIRST_DELAY_S
        with tempfile.NamedTemporaryFile(prefix="marker-", suffix=".json") as f:
            f.write(spec_json(spec))
            f.flush()
            while True:
                try:
                    try:
                        self.store.put_file(key, f.name, "application/json")
                    except TemporaryFailure as err:
                        raise_if_permanent(err)  # a bad bucket or grant: no retry
                        raise
                    log.info("chunk %d (marker): spec stored as %s", spec.index, key)
                    return True
                except InvalidInputError as err:
                    log.error("chunk %d (marker): spec not stored: %s", spec.index, err)
                    return False
                except TemporaryFailure as err:
                    limit = deadline() if callable(deadline) else deadline
                    if limit is not None and time.monotonic() + delay > limit:
                        log.error("chunk %d (marker): spec not stored: %s; giving up",
                                  spec.index, err)
                        return False
                    time.sleep(delay)
                    delay = next_delay(delay)

    def _acknowledge(self, spec: ChunkSpec) -> None:
        self.stats.chunks += 1
        self.stats.bytes += sum(t.bytes for t in spec.tracks)
        if spec.index not in self.stats.acked:  # a 409 on a chunk an earlier run made
            self.stats.acked.append(spec.index)
        self.write_ack_file()

    def write_ack_file(self) -> None:
        """Write `{"acked": [...], "lost": [...]}` to the ack file (atomically)."""
        doc = {"acked": self.stats.acked,
               "lost": [g.model_dump(by_alias=True) for g in self.stats.lost]}
        tmp = f"{self.ack_file}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.ack_file)
        except OSError as err:
            log.warning("ack file %s: %s", self.ack_file, err)
