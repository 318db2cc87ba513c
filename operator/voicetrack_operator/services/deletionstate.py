"""A deletion's progress and outcome, as the session's status carries them: the steps in
order (`DeletionStep`) and the state users see while each runs (`STEP_STATE`), the
progress record a retry resumes from (`status.deletion`, `DeletionProgress`), a step that
waits (`Wait`), and what one attempt reached (`DeletionOutcome`). Plain data, no I/O; the
steps themselves are `services.deletion`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from voicetrack.resources import SessionState


class DeletionStep(enum.StrEnum):
    """`status.deletion.step`: the next step to run."""

    STOP = "stop"
    TRANSCODES = "transcodes"
    PROMOTE = "promote"
    RECORD = "record"
    COLLECT = "collect"
    DONE = "done"


STEP_STATE = {
    DeletionStep.STOP: SessionState.STOPPING,
    DeletionStep.TRANSCODES: SessionState.TRANSCODING,
    DeletionStep.PROMOTE: SessionState.PROMOTING,
    DeletionStep.RECORD: SessionState.PROMOTING,
    DeletionStep.COLLECT: SessionState.PROMOTING,
    DeletionStep.DONE: SessionState.PROMOTED,
}
"""The state users see (bot, README) while a step runs or waits."""


@dataclass(frozen=True)
class DeletionProgress:
    """`status.deletion`: `{step, promoted?, recordingIds?, leftOut?}`. `promoted` is known
    after the promote step (False: no chunk was done, nothing to promote); `recording_ids`
    after the record step; `left_out` (`leftOut: [{index, reason}]`) the chunks the
    promote step left out, their raw input bad (`services.leftout`)."""

    step: DeletionStep = DeletionStep.STOP
    promoted: bool | None = None
    recording_ids: list[str] | None = None
    left_out: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> DeletionProgress:
        """The progress in a session's status; a missing or unreadable one starts over
        (safe: every step is idempotent)."""
        raw = status.get("deletion") or {}
        try:
            step = DeletionStep(raw.get("step", DeletionStep.STOP))
        except ValueError:
            return cls()
        ids = raw.get("recordingIds")
        left = {int(e["index"]): str(e.get("reason") or "") for e in raw.get("leftOut") or []
                if isinstance(e, dict) and isinstance(e.get("index"), int)}
        return cls(step=step, promoted=raw.get("promoted"), left_out=left,
                   recording_ids=[str(i) for i in ids] if isinstance(ids, list) else None)

    def to_api(self) -> dict[str, Any]:
        """`status.deletion` as the API takes it (camelCase; absent fields left out)."""
        out: dict[str, Any] = {"step": self.step.value}
        if self.promoted is not None:
            out["promoted"] = self.promoted
        if self.recording_ids is not None:
            out["recordingIds"] = self.recording_ids
        if self.left_out:
            out["leftOut"] = [{"index": i, "reason": r} for i, r in sorted(self.left_out.items())]
        return out


@dataclass(frozen=True)
class Wait:
    """A step is under way: come back in `delay` seconds, showing `state`."""

    message: str
    state: SessionState
    delay: float = 2.0


@dataclass
class DeletionOutcome:
    """What one deletion attempt reached. `retry_in` is None once done; `failed` marks a
    PromotionFailed (kept and retried). `status` is the status patch to apply either way."""

    progress: DeletionProgress
    state: SessionState
    message: str
    retry_in: float | None = None
    failed: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    notices: list[tuple[str, str]] = field(default_factory=list)
    """Warnings (reason, message) for Events on the session: what this attempt did that
    someone should know of (a recorder pod force-deleted on a dead node)."""

    @property
    def done(self) -> bool:
        """True once the deletion is complete (nothing to retry)."""
        return self.retry_in is None
