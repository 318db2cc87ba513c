"""A session whose recorder ended by itself is deleted, so that it is promoted (issue 12:
"the session stops and is promoted by itself").

The recorder ends by itself when nobody but it has been in the voice channel for
`limits.emptyChannelSeconds` (end reason `channel-empty`), or at `limits.maxDurationSeconds`
(`max-duration`) or `limits.maxBytes` (`max-bytes`). It exits 0 only after its spooled
chunks are uploaded (`voicetrack_recorder.ending`: a run that ended by itself drains its
spool without a deadline), so its pod Succeeds and the session shows Stopped. A Succeeded
pod is never restarted: left alone, the session would stay Stopped, its audio never
promoted and its guild busy for good. Promotion runs in the deletion path
(`services.deletion`: it waits for the last transcodes, promotes, records the meeting's end
in SQL and collects), so the operator deletes the session, once, with the session's uid as
a precondition: a namesake made meanwhile is never deleted. The meeting's row outlives the
object (`voicetrack recordings list`).

Never for a Failed session (a human must see why; deleting it still promotes what it
recorded), a Refused one, a Paused or recording one, one already being deleted, nor when
`limits.deleteWhenStopped` is false (tools that re-create deleted objects, e.g. GitOps).

The recorder's end reason is the first word of its termination message (`<reason>:
acknowledged …`, `voicetrack_recorder.main`), which the kubelet puts in the pod's
`status.containerStatuses[].state.terminated.message`.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from voicetrack.names import controller_uid
from voicetrack.resources import SessionSpec, SessionState
from voicetrack_operator.context import Context
from voicetrack_operator.services.failures import termination_message
from voicetrack_operator.services.sessionview import SessionView

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
"""`status.autoStop.reason` when the recorder's pod carries no termination message."""
_REASON = re.compile(r"^([a-z][a-z-]*)(?=[:( ]|$)")


def end_reason(pod: dict[str, Any] | None) -> str:
    """The end reason a Succeeded recorder pod reports (`channel-empty`, `max-duration`,
    `max-bytes`…: the first word of its termination message), `UNKNOWN` without one."""
    found = _REASON.match(termination_message(pod or {}))
    return found.group(1) if found else UNKNOWN


def describe(reason: str, spec: SessionSpec) -> str:
    """`reason` in words, naming the spec field that set it and its value."""
    limits = spec.limits
    if reason == "channel-empty":
        return (f"channel-empty: nobody but the recorder in the voice channel for "
                f"limits.emptyChannelSeconds ({limits.empty_channel_seconds} s)")
    if reason == "max-duration":
        return f"limit: maxDurationSeconds ({limits.max_duration_seconds} s) reached"
    if reason == "max-bytes":
        return f"limit: maxBytes ({limits.max_bytes} bytes) reached"
    if reason == UNKNOWN:
        return "its pod Succeeded without a reason"
    return reason


def recorder_end(pod: dict[str, Any] | None, spec: SessionSpec) -> str | None:
    """Why the session's recorder ended by itself, in words (`describe`), when its pod
    Succeeded; None otherwise."""
    if ((pod or {}).get("status") or {}).get("phase") != "Succeeded":
        return None
    return describe(end_reason(pod), spec)


def stopped_by_itself(s: SessionView, state: str | None, pod: dict[str, Any] | None
                      ) -> bool:
    """Whether the operator deletes session `s` now: its status `state` (as just built) is
    Stopped, `pod` is its own recorder pod (the session's uid controls it: not an earlier
    namesake's), Succeeded and not being deleted, the session is not being deleted nor
    deleted by the operator before (`status.autoStop`), and `limits.deleteWhenStopped`."""
    return (state == SessionState.STOPPED.value and s.spec.limits.delete_when_stopped
            and not s.deletion and not s.status.get("autoStop")
            and pod is not None and controller_uid(pod) == s.ref.uid
            and (pod.get("status") or {}).get("phase") == "Succeeded"
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


async def delete_stopped(ctx: Context, s: SessionView, pod: dict[str, Any] | None
                         ) -> dict[str, Any]:
    """Delete session `s`, whose recorder `pod` ended by itself, with its uid as a
    precondition. Returns the status patch `{"autoStop": {reason, message, deletedAt}}`
    when the API server accepted the deletion, `{}` when the session is gone or its name
    is another's now (nothing to do). Raises TemporaryFailure while the API is away."""
    reason = end_reason(pod)
    message = (f"the recorder ended by itself ({describe(reason, s.spec)}): the session is "
               "deleted, which promotes what it recorded (limits.deleteWhenStopped)")
    if not await ctx.kube.delete_session(s.ref.namespace, s.ref.name, s.ref.uid):
        return {}
    log.info("session %s/%s: %s", s.ref.namespace, s.ref.name, message)
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"autoStop": {"reason": reason, "message": message, "deletedAt": at}}
