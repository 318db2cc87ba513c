"""What a RecordingChunk and its transcoder Job say, parsed: `ChunkRef` (the chunk's
spec and typed status), `job_state` (a Job's status as a transcode status) and `ran_for`.
Pure: no I/O; `services.chunks` decides with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from voicetrack.chunkspec import ChunkSpec, ChunkStatus
from voicetrack.errors import InvalidInputError
from voicetrack.names import controller_uid
from voicetrack.resources import LABEL_SESSION, TranscodeStatus
from voicetrack_operator.services.isolation import ChunkClaim


@dataclass
class ChunkRef:
    """A RecordingChunk by namespace and name, with its parsed spec and typed status.

    `ensured` is False while the chunk has no `status.transcodeStatus` yet (its rows and
    Job are not made); `status` then holds the defaults (queued, no outputs)."""

    namespace: str
    name: str
    spec: ChunkSpec
    status: ChunkStatus
    session_uid: str
    ensured: bool = True
    created: datetime | None = None
    resource_version: str | None = None
    owner_uid: str | None = None
    """The controlling RecordingSession ownerReference's uid, None when there is none."""
    label_session: str | None = None
    """The `voicetrack.dev/session` label (how the operator lists a session's chunks)."""

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ChunkRef:
        """Parse a RecordingChunk. Raises InvalidInputError naming the bad field."""
        meta = obj["metadata"]
        raw_status = dict(obj.get("status") or {})
        try:
            spec = ChunkSpec.model_validate(obj.get("spec", {}))
            status = ChunkStatus.model_validate(raw_status)
        except ValueError as err:
            raise InvalidInputError(f"RecordingChunk {meta['name']}: invalid spec or "
                                    f"status: {err}") from err
        created = meta.get("creationTimestamp")
        return cls(namespace=meta["namespace"], name=meta["name"], spec=spec, status=status,
                   session_uid=controller_uid(obj) or meta.get("uid", ""),
                   owner_uid=controller_uid(obj),
                   label_session=(meta.get("labels") or {}).get(LABEL_SESSION),
                   ensured="transcodeStatus" in raw_status,
                   resource_version=meta.get("resourceVersion"),
                   created=datetime.fromisoformat(created.replace("Z", "+00:00"))
                   if isinstance(created, str) else created)

    @property
    def transcode_status(self) -> TranscodeStatus:
        return self.status.transcode_status

    @property
    def claim(self) -> ChunkClaim:
        """What the chunk claims about itself, for `isolation.chunk_refusal`."""
        return ChunkClaim(name=self.name, label_session=self.label_session,
                          owner_uid=self.owner_uid, spec=self.spec, created=self.created)


def job_state(job: dict[str, Any]) -> tuple[TranscodeStatus, str | None]:
    """(transcode status, failure reason) of a transcoder or promotion Job from its
    status."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return TranscodeStatus.DONE, None
        if cond.get("type") == "Failed":
            return (TranscodeStatus.FAILED,
                    f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}")
    if (status.get("active") or 0) > 0 or (status.get("ready") or 0) > 0 \
            or (status.get("failed") or 0) > 0:
        return TranscodeStatus.IN_PROGRESS, None
    return TranscodeStatus.QUEUED, None


IN_PROGRESS_AFTER_S = 5.0
"""A running transcoder Job's chunk is marked `in_progress` once the Job has run this long
(seconds): most finish sooner, and one write per chunk is saved (issue 16)."""


def ran_for(job: dict[str, Any], seconds: float) -> bool:
    """True when the Job's `status.startTime` is at least `seconds` ago."""
    started = (job.get("status") or {}).get("startTime")
    if not isinstance(started, str):
        return False
    since = datetime.now(UTC) - datetime.fromisoformat(started.replace("Z", "+00:00"))
    return since.total_seconds() >= seconds


def mirrorable(chunk: ChunkRef, meeting_id: str) -> bool:
    """Whether `chunk`'s state belongs in SQL: ensured (its spec checked against the
    session by `ChunkService.ensure_chunk`), not refused, of the session's meeting
    `meeting_id`, with tracks. A chunk not ensured yet is the create handler's: a forged
    one must never reach another meeting's rows before it is refused."""
    return (chunk.ensured and chunk.status.refused is None and bool(chunk.spec.tracks)
            and chunk.spec.meeting_id == meeting_id)


def parsed(obj: dict[str, Any]) -> ChunkRef | None:
    """`ChunkRef.from_object(obj)`, or None for a chunk whose spec or status does not
    parse (its create handler refuses it; a sweep over all chunks must not stop there)."""
    try:
        return ChunkRef.from_object(obj)
    except InvalidInputError:
        return None
