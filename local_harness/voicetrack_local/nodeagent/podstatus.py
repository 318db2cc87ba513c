"""Pure pod-status logic, following the kubelet (``pkg/kubelet/kubelet_pods.go`` getPhase,
``pkg/kubelet/kuberuntime`` termination messages): the phase from container states, the
restart decision and back-off, the terminated state of an exited container with its
termination message, and the ``status`` dict the agent patches onto the pod.

No clock, no API, no disk: times and file contents come in as arguments.
"""

from __future__ import annotations

from typing import Any

from voicetrack_local.nodeagent.container import BACKOFF_MAX, BACKOFF_START, Container
from voicetrack_local.nodeagent.podspec import NODE_IP

#: the kubelet's limits: the message file's last 4 KiB; log fallback 80 lines, 2 KiB
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
#: a container that ran this long (s) before exiting restarts without back-off growth
BACKOFF_RESET_SECONDS = 600


def termination_message(
    spec: dict[str, Any], exit_code: int, reason: str, file_data: bytes | None, log: bytes
) -> str:
    """The message of a terminated container: what it wrote to its termination-message file
    (the last 4 KiB), else, with ``terminationMessagePolicy: FallbackToLogsOnError`` and a
    failure (exit code not 0; not a ``StartError``, which has no logs), the tail of its log
    (the last 80 lines, at most 2 KiB of them); else "".

    Args:
        spec: the container's pod-spec dict.
        file_data: the termination-message file's contents, None when it does not exist.
        log: the log of this run."""
    fallback = (
        spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        and exit_code != 0
        and reason != "StartError"
    )
    data = file_data[-MAX_MESSAGE_BYTES:] if file_data else b""
    if not data and fallback:
        lines = log.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
        data = b"".join(lines)[:FALLBACK_LOG_BYTES]
    return data.decode(errors="replace")


def exited_state(code: int, started: str, finished: str, pid: int, message: str) -> dict[str, Any]:
    """``{"terminated": …}`` of a process that exited with ``code`` (reason ``Completed``
    for 0, else ``Error``); ``message`` is left out when empty."""
    term: dict[str, Any] = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
        "containerID": f"voicetrack://{pid}",
    }
    if message:
        term["message"] = message
    return {"terminated": term}


def should_restart(init: bool, policy: str, code: int) -> bool:
    """Whether a container that exited with ``code`` runs again under the pod's
    ``restartPolicy`` (an init container restarts only after a failure, never under
    ``Never``)."""
    if init:
        return code != 0 and policy != "Never"
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def after_exit(c: Container, code: int, policy: str, now: float, pod_ref: str) -> bool:
    """Update ``c`` after its process exited with ``code`` (``c.state`` already terminated):
    either done, or waiting in ``CrashLoopBackOff`` until ``now + backoff`` with
    ``restartCount`` up, the terminated state moved to ``lastState`` and the back-off doubled
    (reset to 10 s after a run of 10 min).  Returns True when it will restart.

    Args:
        now: monotonic seconds.
        pod_ref: ``<name>_<ns>(<uid>)``, for the waiting message."""
    if not should_restart(c.init, policy, code):
        c.done = True
        return False
    if now - c.started_mono > BACKOFF_RESET_SECONDS:  # ran long enough: back-off resets
        c.backoff = BACKOFF_START
    c.next_start = now + c.backoff
    c.last_state = c.state
    c.state = {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {c.backoff:.0f}s restarting failed container={c.name} "
            f"pod={pod_ref}",
        }
    }
    c.backoff = min(c.backoff * 2, BACKOFF_MAX)
    c.restart_count += 1
    return True


def pod_phase(inits: list[Container], ctrs: list[Container], policy: str) -> str:
    """Phase from container states (kubelet ``getPhase``): Pending while an init container
    has not succeeded (Failed when it failed for good under ``Never``); then Running while a
    container runs or is between restarts, Succeeded / Failed once all are done, else
    Pending."""
    pending_init = next((c for c in inits if not c.succeeded or c.proc is not None), None)
    if pending_init is not None:
        return "Failed" if pending_init.done and policy == "Never" else "Pending"
    if any(c.running for c in ctrs):
        return "Running"
    if all(c.done for c in ctrs):
        return "Succeeded" if all(c.succeeded for c in ctrs) else "Failed"
    if any(c.restart_count > 0 or "terminated" in c.state for c in ctrs):
        return "Running"  # between restarts
    return "Pending"


def adopt_terminal(status: dict[str, Any], ctrs: list[Container]) -> bool:
    """For a pod whose API ``status`` is already terminal (Succeeded / Failed, e.g. seen
    again after an agent restart): copy each container's reported state, lastState and
    restartCount into ``ctrs`` and mark them done.  Returns False (nothing changed) for a
    pod that is not terminal."""
    if status.get("phase") not in ("Succeeded", "Failed"):
        return False
    reported = (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
    by_name = {s["name"]: s for s in reported}
    for c in ctrs:
        s = by_name.get(c.name, {})
        c.state = s.get("state") or {"terminated": {"exitCode": 0, "reason": "Completed"}}
        c.last_state = s.get("lastState") or {}
        c.restart_count = int(s.get("restartCount") or 0)
        c.done = True
    return True


def _without_id(state: dict[str, Any]) -> dict[str, Any]:
    if "terminated" in state:
        return {"terminated": {k: v for k, v in state["terminated"].items() if k != "containerID"}}
    return dict(state)


def container_status(c: Container) -> dict[str, Any]:
    """The API's ContainerStatus of ``c`` (``containerID`` moved out of the states)."""
    out: dict[str, Any] = {
        "name": c.name,
        "image": c.spec.get("image") or "none",
        "imageID": "",
        "ready": c.ready,
        "restartCount": c.restart_count,
        "started": c.started,
        "state": _without_id(c.state),
        "lastState": _without_id(c.last_state),
    }
    if c.pid is not None:
        out["containerID"] = c.runtime_id
    elif "terminated" in c.state and c.state["terminated"].get("containerID"):
        out["containerID"] = c.state["terminated"]["containerID"]
    return out


def pod_conditions(
    old: list[dict[str, Any]],
    *,
    phase: str,
    prepared: bool,
    inits: list[Container],
    ctrs: list[Container],
    now: str,
) -> list[dict[str, Any]]:
    """PodReadyToStartContainers, Initialized, ContainersReady and Ready (every container
    :attr:`~.container.Container.ready`: started and past its readiness probe), keeping
    ``lastTransitionTime`` of a condition whose status did not change, and any other
    condition in ``old`` as is."""
    old_by_type = {c["type"]: c for c in old}
    ready = phase == "Running" and all(c.ready for c in ctrs)
    terminal = phase in ("Succeeded", "Failed")
    mine = {
        "PodReadyToStartContainers": prepared and not terminal,
        "Initialized": all(c.succeeded for c in inits),
        "ContainersReady": ready,
        "Ready": ready,
    }
    conds = [c for t, c in old_by_type.items() if t not in mine]
    for t, val in mine.items():
        s = "True" if val else "False"
        prev = old_by_type.get(t)
        keep = prev and prev.get("status") == s and prev.get("lastTransitionTime")
        cond: dict[str, Any] = {
            "type": t,
            "status": s,
            "lastTransitionTime": prev["lastTransitionTime"] if prev and keep else now,
            "lastProbeTime": None,
        }
        if not val and t in ("ContainersReady", "Ready"):
            cond["reason"] = "PodCompleted" if terminal else "ContainersNotReady"
        if not val and t == "Initialized" and not terminal:
            cond["reason"] = "ContainersNotInitialized"
        conds.append(cond)
    return conds


def pod_status(
    phase: str,
    inits: list[Container],
    ctrs: list[Container],
    *,
    old_conditions: list[dict[str, Any]],
    prepared: bool,
    start_time: str | None,
    reason: str | None,
    message: str | None,
    now: str,
    ip: str,
) -> dict[str, Any]:
    """The pod's ``status`` as the agent reports it (the host's address is 127.0.0.1).

    Args:
        ip: the pod's IP (``podspec.pod_ip``).
        old_conditions: the conditions the API holds now.
        prepared: the pod's sandbox (directory, volumes, token) is set up.
        now: Kubernetes ``Time`` for new transitions."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": pod_conditions(
            old_conditions, phase=phase, prepared=prepared, inits=inits, ctrs=ctrs, now=now
        ),
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start_time,
        "containerStatuses": [container_status(c) for c in ctrs],
        "reason": reason,
        "message": message,
    }
    if inits:
        status["initContainerStatuses"] = [container_status(c) for c in inits]
    return status


def comparable(st: dict[str, Any]) -> dict[str, Any]:
    """``st`` without the conditions' ``lastTransitionTime``: what decides whether a status
    changed since it was last sent."""
    conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st["conditions"]]
    return {**st, "conditions": conds}
