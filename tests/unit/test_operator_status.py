"""A recorder that cannot record, read from its pod's status, and the session status built
from it: pure functions, no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicetrack.resources import SessionState
from voicetrack_operator.services.failures import recorder_failure
from voicetrack_operator.status import Observation, build_status

pytestmark = pytest.mark.unit

NOW = "2026-01-01T00:00:00Z"
LATER = datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC)


def pod(state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0,
        phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": "s-rec", "creationTimestamp": NOW},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "recorder", "state": state, "lastState": last or {},
                 "restartCount": restarts}]}}


def terminated(code: int, message: str = "") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "message": message}}


WAITING = {"waiting": {"reason": "CrashLoopBackOff"}}


@pytest.mark.parametrize(("p", "expected"), [
    (pod(terminated(2, "invalid input: storage: AccessDenied\n")),
     "invalid input: storage: AccessDenied"),
    (pod(WAITING, terminated(2, "invalid input: VOICETRACK_DISCORD_TOKEN is empty"), 1),
     "invalid input: VOICETRACK_DISCORD_TOKEN is empty"),
    (pod(WAITING, terminated(2), 1), "recorder exited with code 2 (bad input)"),
    (pod({"waiting": {"reason": "CreateContainerConfigError",
                      "message": 'secret "voicetrack-discord" not found'}}, phase="Pending"),
     'recorder cannot start: CreateContainerConfigError: secret "voicetrack-discord" not '
     "found"),
    (pod(WAITING, terminated(1, "error: boom"), 3),
     "recorder restarted 3 times; last exit: error: boom"),
])
def test_a_recorder_that_cannot_record_is_a_failure_with_its_reason(
        p: dict[str, Any], expected: str) -> None:
    assert recorder_failure(p, LATER) == expected


@pytest.mark.parametrize("p", [
    None,
    pod({"running": {}}),
    pod({"running": {}}, terminated(1, "error: S3 down"), 2),  # restarts, not yet a loop
    pod({"waiting": {"reason": "ContainerCreating"}}, phase="Pending"),
    pod(terminated(0), phase="Succeeded"),
])
def test_a_recorder_that_may_still_record_is_not_a_failure(p: dict[str, Any] | None) -> None:
    assert recorder_failure(p, LATER) is None


def test_a_configuration_error_counts_after_its_grace() -> None:
    """A Secret applied just after the session still starts the recorder."""
    p = pod({"waiting": {"reason": "CreateContainerConfigError", "message": "no secret"}},
            phase="Pending")
    assert recorder_failure(p, LATER - timedelta(seconds=10)) is None
    assert recorder_failure(p, LATER) is not None


def test_a_failed_recorder_makes_the_session_failed_with_its_reason() -> None:
    """Item 6: before, a crash-looping recorder (pod phase Running) showed `Recording`."""
    why = "invalid input: storage: AccessDenied"
    status = build_status(Observation(generation=1, paused=False, recorder_phase=None,
                                      recorder_failure=why), None, NOW)
    assert status["state"] == SessionState.FAILED
    assert status["recorderFailure"] == why
    conds = {c["type"]: c for c in status["conditions"]}
    for kind in ("Ready", "Recording"):
        assert conds[kind]["status"] == "False"
        assert conds[kind]["reason"] == "RecorderFailed"
        assert conds[kind]["message"] == why
    running = build_status(Observation(generation=1, paused=False, recorder_phase="Running"),
                           None, NOW)
    assert running["state"] == SessionState.RECORDING and "recorderFailure" not in running
