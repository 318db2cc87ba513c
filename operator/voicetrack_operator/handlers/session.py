"""RecordingSession handlers: parse → one service call → status."""

from __future__ import annotations

import os
from typing import Any

import kopf

from voicetrack.errors import InvalidInputError
from voicetrack.resources import GROUP, SESSION_PLURAL, VERSION
from voicetrack_operator.errors import kopf_errors
from voicetrack_operator.services.sessions import SessionService, SessionView

SESSION = (GROUP, VERSION, SESSION_PLURAL)
OBSERVE_INTERVAL_S = float(os.environ.get("VOICETRACK_OBSERVE_INTERVAL_S", "2"))
"""How often each session's status is observed, coalesced and patched (seconds); read when
the handlers are registered, since kopf fixes a timer's interval there."""
PROMOTION_RETRY_S = 300
"""A deletion that cannot complete (promotion failed, outputs do not match, an input the
API refuses) is tried again this often (seconds); deleting a failed promotion Job makes the
next try run it anew."""


@kopf.on.resume(*SESSION, id="start")
@kopf.on.create(*SESSION, id="start")
async def on_session_create(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch,
                            **_: Any) -> None:
    with kopf_errors():
        status = await SessionService(memo.ctx).ensure_session(SessionView.parse(dict(body)))
    patch.status.update(status)
    if status.get("state") == "Refused":
        kopf.warn(body, reason="GuildBusy", message=status["conditions"][-1]["message"])
    elif "recorderPod" in status:
        kopf.info(body, reason="RecorderStarted",
                  message=f"recorder pod {status['recorderPod']} created")


@kopf.timer(*SESSION, id="observe", interval=OBSERVE_INTERVAL_S, initial_delay=1.0)
async def on_session_observe(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch,
                             **_: Any) -> None:
    with kopf_errors():
        changed = await SessionService(memo.ctx).observe_session(SessionView.parse(dict(body)))
    patch.status.update(changed)


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
    try:
        with kopf_errors():
            try:
                status = await SessionService(memo.ctx).finalize_session(
                    SessionView.parse(dict(body)))
            except InvalidInputError as err:
                # Never a PermanentError here: kopf would release the finalizer and the
                # session would go unpromoted. Keep everything; try again until fixed.
                patch.status["state"] = "PromotionFailed"
                patch.status["phaseMessage"] = str(err)
                kopf.exception(body, reason="PromotionFailed", message=str(err))
                raise kopf.TemporaryError(str(err), delay=PROMOTION_RETRY_S) from err
    except kopf.TemporaryError as err:
        if not isinstance(err.__cause__, InvalidInputError):
            patch.status["state"] = getattr(err.__cause__, "state", "Stopping")
            patch.status["phaseMessage"] = str(err)
        raise
    patch.status.update(status)
    kopf.info(body, reason="Promoted",
              message=f"{len(status.get('recordingIds', []))} recording(s) written")
