"""Why a Job's pod failed, in the tool's own words.

The transcoder, promotion and recorder containers run with `terminationMessagePolicy:
FallbackToLogsOnError`, so the kubelet puts the container's termination message (or, when it
wrote none, the tail of its log) into `status.containerStatuses[].state.terminated.message`
(`lastState` after a restart). That message is the reason; the log is read only when no pod
carries one (a node agent that does not fill it).
"""

from __future__ import annotations

from typing import Any, Protocol


class PodReader(Protocol):
    """What `failure_detail` needs of the Kubernetes adapter."""

    async def job_pods(self, ns: str, job: str) -> list[dict[str, Any]]: ...

    async def pod_log_tail(self, ns: str, name: str, lines: int = 20) -> str: ...


def reason_line(text: str) -> str:
    """The one line that says why: the last `error: …` line of `text`, else its last
    non-empty line, else ''."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else ""


def termination_message(pod: dict[str, Any]) -> str:
    """The reason line of a pod's terminated container (current state first, then the last
    state), '' when no container has terminated with a message."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for where in ("state", "lastState"):
            terminated = (cs.get(where) or {}).get("terminated") or {}
            line = reason_line(str(terminated.get("message") or ""))
            if line:
                return line
    return ""


async def failure_detail(kube: PodReader, ns: str, job_name: str) -> str:
    """The failure reason of Job `job_name`: its newest pod's termination message, else the
    `error:` line of a pod's log tail (fallback), else ''."""
    pods = sorted(await kube.job_pods(ns, job_name),
                  key=lambda p: str(p["metadata"].get("creationTimestamp") or ""),
                  reverse=True)
    for pod in pods:
        message = termination_message(pod)
        if message:
            return message
    for pod in pods:
        text = await kube.pod_log_tail(ns, pod["metadata"]["name"], 10)
        lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
        if lines:
            return lines[-1]
    return ""
