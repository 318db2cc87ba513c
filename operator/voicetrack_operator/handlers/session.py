"""RecordingSession handlers: parse → one service call → status."""

from __future__ import annotations

import os
from typing import Any

import kopf

from voicetrack.resources import GROUP, SESSION_PLURAL, VERSION, SessionState
from voicetrack_operator.errors import kopf_errors
from voicetrack_operator.handlers.index import observed
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import SessionView

SESSION = (GROUP, VERSION, SESSION_PLURAL)
OBSERVE_INTERVAL_S = float(os.environ.get("VOICETRACK_OBSERVE_INTERVAL_S", "2"))
"""How often each session's status is observed, coalesced and patched (seconds); read when
the handlers are registered, since kopf fixes a timer's interval there."""


@kopf.on.resume(*SESSION, id="start")
@kopf.on.create(*SESSION, id="start")
async def on_session_create(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch,
                            **_: Any) -> None:
    with kopf_errors():
        status = await SessionService(memo.ctx).ensure_session(SessionView.parse(dict(body)))
    patch.status.update(status)
    if status.get("state") == SessionState.REFUSED:
        ready = status["conditions"][-1]
        kopf.warn(body, reason=ready["reason"], message=ready["message"])
    elif "recorderPod" in status:
        kopf.info(body, reason="RecorderStarted",
                  message=f"recorder pod {status['recorderPod']} created")
    _announce_auto_stop(body, status)


@kopf.timer(*SESSION, id="observe", interval=OBSERVE_INTERVAL_S, initial_delay=1.0)
async def on_session_observe(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch,
                             **kwargs: Any) -> None:
    """Reads the watches' indexes (`handlers/index.py`, passed by kopf in `kwargs`), not
    the API."""
    seen = observed(body.metadata.namespace or "", body.metadata.name or "", kwargs)
    with kopf_errors():
        changed = await SessionService(memo.ctx).observe_session(
            SessionView.parse(dict(body)), seen)
    patch.status.update(changed)
    if "recorderFailure" in changed:
        kopf.warn(body, reason="RecorderFailed", message=changed["recorderFailure"])
    _announce_auto_stop(body, changed)


def _announce_auto_stop(body: kopf.Body, status: dict[str, Any]) -> None:
    """The event of a session the operator deleted because its recorder ended by itself
    (`services.autostop`)."""
    if "autoStop" in status:
        kopf.info(body, reason="AutoStopped", message=status["autoStop"]["message"])


@kopf.on.field(*SESSION, id="pause", field="spec.paused")
async def on_session_pause(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
    if old is None and not new:
        return
    kopf.info(body, reason="Paused" if new else "Resumed",
              message="capture paused; the interval is left out of the recording" if new
              else "capture resumed")


@kopf.on.delete(*SESSION, id="promote")
async def on_session_delete(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch,
                            **_: Any) -> None:
    """Never a PermanentError: kopf would release the finalizer unpromoted. Every attempt
    records its progress; an unfinished one is retried after the outcome's delay."""
    outcome = await DeletionService(memo.ctx).finalize(dict(body))
    patch.status.update(outcome.status)
    for reason, message in outcome.notices:
        kopf.warn(body, reason=reason, message=message)
    if outcome.failed:
        kopf.warn(body, reason="PromotionFailed", message=outcome.message)
    if not outcome.done:
        raise kopf.TemporaryError(outcome.message, delay=outcome.retry_in)
    kopf.info(body, reason="Promoted",
              message=f"{len(outcome.status.get('recordingIds', []))} recording(s) written")
