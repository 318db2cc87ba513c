"""Session status, built in one place: condition-shaped (type, status, reason, message,
lastTransitionTime) with observedGeneration, from what the operator observes. Pure.

The conditions of CONDITION_TYPES are always present. `ConsentDegraded` is present only
once a chunk of the session says the recorder's consent ran degraded
(`ChunkSpec.consentDegraded`, issue 12): True, with that chunk's reason and message,
while the newest chunk says so; False (reason `NotDegraded`) when a later chunk no longer
does (e.g. a restarted recorder was granted the intent). A normal session has none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from voicetrack.resources import SessionState, TranscodeStatus

CONDITION_TYPES = ("Recording", "Paused", "TranscodesComplete", "Promoted",
                   "DatabaseSynced", "Ready")
CONSENT_DEGRADED = "ConsentDegraded"
"""The condition type of a session recorded with degraded consent (present only then).
A positive-polarity name as `DiskPressure`/`MemoryPressure` (an abnormal state, True
when it holds), since it is absent, not False, for every session that never had it."""


@dataclass
class ChunkView:
    """What the status needs of one RecordingChunk."""

    index: int
    start_ms: int
    end_ms: int
    speakers: list[str]
    transcode_status: TranscodeStatus = TranscodeStatus.QUEUED
    bytes: int = 0
    consent_degraded: tuple[str, str] | None = None
    """(reason, message) of the chunk's `spec.consentDegraded`; None when absent."""
    refused: bool = False
    """The operator refused the chunk as not its session's (`status.refused`)."""

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ChunkView:
        """From a RecordingChunk object (API dict; the CRD validated its spec)."""
        spec = obj.get("spec", {})
        tracks = spec.get("tracks", [])
        degraded = spec.get("consentDegraded") or None
        return cls(index=int(spec.get("index", 0)), start_ms=int(spec.get("startMs", 0)),
                   end_ms=int(spec.get("endMs", 0)),
                   speakers=[t["userId"] for t in tracks],
                   transcode_status=TranscodeStatus(
                       (obj.get("status") or {}).get("transcodeStatus",
                                                     TranscodeStatus.QUEUED)),
                   bytes=sum(int(t.get("bytes", 0)) for t in tracks),
                   consent_degraded=(str(degraded.get("reason", "")),
                                     str(degraded.get("message", "")))
                   if degraded else None,
                   refused=bool((obj.get("status") or {}).get("refused")))


@dataclass
class Observation:
    """The observed state a session's status is computed from."""

    generation: int
    paused: bool
    recorder_phase: str | None
    """The recorder pod's phase, None when there is no pod."""
    chunks: list[ChunkView] = field(default_factory=list)
    refused: str | None = None
    """Why the session was refused, if it was."""
    refused_reason: str = "GuildBusy"
    """The Ready condition's reason when refused: GuildBusy, MeetingIdInUse."""
    promoted: bool = False
    recorder_failure: str | None = None
    """Why the recorder cannot record (`services.failures.recorder_failure`), if so."""
    recorder_end: str | None = None
    """Why a recorder that ended by itself did (`services.autostop.recorder_end`: its end
    reason in words), None when unknown or still running."""
    database_synced: bool = True
    database_message: str = ""


def chunk_counts(chunks: Iterable[ChunkView]) -> dict[str, int]:
    """`{total, queued, inProgress, done, failed}`."""
    counts = {"total": 0, "queued": 0, "inProgress": 0, "done": 0, "failed": 0}
    key = {TranscodeStatus.QUEUED: "queued", TranscodeStatus.IN_PROGRESS: "inProgress",
           TranscodeStatus.DONE: "done", TranscodeStatus.FAILED: "failed"}
    for c in chunks:
        counts["total"] += 1
        counts[key[TranscodeStatus(c.transcode_status)]] += 1
    return counts


def human_duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `12s`."""
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def _state(o: Observation) -> tuple[SessionState, str]:
    if o.refused:
        return SessionState.REFUSED, o.refused
    if o.promoted:
        return SessionState.PROMOTED, "recordings promoted"
    if o.recorder_phase == "Succeeded":
        return SessionState.STOPPED, (f"recorder ended by itself: {o.recorder_end}"
                                      if o.recorder_end else
                                      "recorder finished (a limit, or nobody left in the "
                                      "channel)")
    if o.recorder_failure:
        return SessionState.FAILED, o.recorder_failure
    if o.recorder_phase == "Failed":
        return SessionState.FAILED, "recorder pod failed"
    if o.paused:
        return SessionState.PAUSED, "capture paused"
    if o.recorder_phase == "Running":
        return SessionState.RECORDING, "recorder running"
    return SessionState.PENDING, "waiting for the recorder pod"


def consent_degraded(chunks: Iterable[ChunkView]
                     ) -> tuple[bool, str, str] | None:
    """(status, reason, message) of the `ConsentDegraded` condition from a session's
    chunks: None when no chunk says consent ran degraded; else True with the newest
    chunk's (highest index) reason and message when that chunk says so, or False,
    `NotDegraded`, naming the last degraded chunk, when a later one does not. Refused
    chunks (not the session's) say nothing, nor do chunks without tracks and without a
    mark (no audio to consent to: e.g. windows a restarted recorder sealed before its
    gateway login finished)."""
    ordered = sorted((c for c in chunks if not c.refused
                      and (c.speakers or c.consent_degraded)), key=lambda c: c.index)
    last = next((c for c in reversed(ordered) if c.consent_degraded), None)
    if last is None or last.consent_degraded is None:
        return None
    reason, message = last.consent_degraded
    if last is ordered[-1]:
        return True, reason, message
    return (False, "NotDegraded", f"the last chunk recorded with degraded consent is "
            f"{last.index} ({reason}: {message}); later chunks record consent as asked")


def _cond(ctype: str, ok: bool, reason: str, message: str, previous: dict[str, Any],
          now: str, generation: int) -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = previous.get(ctype)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def build_status(o: Observation, previous_conditions: list[dict[str, Any]] | None, now: str
                 ) -> dict[str, Any]:
    """The session's status fields (not `meetingId`/`startedAt`, which are set once).

    `now` is an RFC 3339 timestamp used as lastTransitionTime of changed conditions."""
    prev = {c["type"]: c for c in previous_conditions or []}
    counts = chunk_counts(o.chunks)
    recorded_ms = sum(c.end_ms - c.start_ms for c in o.chunks)
    speakers = sorted({s for c in o.chunks for s in c.speakers})
    state, state_message = _state(o)
    pending = counts["queued"] + counts["inProgress"]
    g = o.generation
    recording = state is SessionState.RECORDING
    reason = "RecorderFailed" if o.recorder_failure and not o.promoted else state.value
    conditions = [
        _cond("Recording", recording, reason if not recording else "RecorderRunning",
              state_message, prev, now, g),
        _cond("Paused", o.paused and not o.refused, "PausedBySpec" if o.paused else "NotPaused",
              "spec.paused is true" if o.paused else "", prev, now, g),
        _cond("TranscodesComplete", pending == 0,
              "AllChunksTranscoded" if pending == 0 else "TranscodesPending",
              f"{counts['done']} done, {counts['failed']} failed, {pending} pending",
              prev, now, g),
        _cond("Promoted", o.promoted, "Promoted" if o.promoted else "NotPromoted",
              "recordings written" if o.promoted else "promotion runs when deleted",
              prev, now, g),
        _cond("DatabaseSynced", o.database_synced,
              "Synced" if o.database_synced else "DatabaseUnavailable",
              o.database_message, prev, now, g),
        _cond("Ready", not o.refused and state is not SessionState.FAILED,
              o.refused_reason if o.refused else reason, state_message, prev, now, g),
    ]
    degraded = consent_degraded(o.chunks)
    if degraded is not None:
        conditions.append(_cond(CONSENT_DEGRADED, *degraded, prev, now, g))
    out: dict[str, Any] = {"recorderFailure": o.recorder_failure} if o.recorder_failure else {}
    return {
        **out,
        "state": state.value,
        "observedGeneration": g,
        "conditions": conditions,
        "chunks": counts,
        "recordedSeconds": recorded_ms // 1000,
        "duration": human_duration(recorded_ms / 1000),
        "speakers": speakers,
        "bytesBuffered": sum(c.bytes for c in o.chunks
                             if not TranscodeStatus(c.transcode_status).terminal),
    }


def status_changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The subset of `new` that differs from `old` (a patch; empty when nothing moved)."""
    return {k: v for k, v in new.items() if old.get(k) != v}


def live_status(chunks: int, duration_ms: int, updated_at: str) -> dict[str, Any]:
    """`status.live`: the audio so far (`live/manifest.json`) covers chunks `0..chunks-1`,
    `durationMs` of output (ms), assembled by the live Job that completed at `updatedAt`
    (RFC 3339)."""
    return {"chunks": chunks, "durationMs": duration_ms, "updatedAt": updated_at}
