"""Ending a pod's containers: the active deadline, graceful deletion (SIGTERM, SIGKILL
after the grace period, then the final delete) and the agent's own shutdown. Functions of
the pod's :class:`~.worker.PodWorker`, called on its thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from voicetrack_local.nodeagent.container import (
    kill_progress,
    mark_unknown,
    shutdown_containers,
    stop_containers,
)
from voicetrack_local.nodeagent.kube import now_iso, parse_time
from voicetrack_local.nodeagent.runs import poll_exits

if TYPE_CHECKING:
    from voicetrack_local.nodeagent.worker import PodWorker


def check_deadline(w: PodWorker, pod: dict[str, Any]) -> None:
    """Start killing the pod (reason DeadlineExceeded, with the pod's termination grace)
    once it has been active longer than its ``spec.activeDeadlineSeconds``."""
    ads = pod["spec"].get("activeDeadlineSeconds")
    if ads is None or w.phase in ("Succeeded", "Failed") or w.kill_deadline is not None:
        return
    started = parse_time(w.start_time)
    if started is not None and time.time() - started >= float(ads):
        w.reason = "DeadlineExceeded"
        w.message = "Pod was active on the node longer than the specified deadline"
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        begin_kill(w, float(grace))


def begin_kill(w: PodWorker, grace: float) -> None:
    """SIGTERM every running container of ``w`` (an Event each); :func:`drive_kill` sends
    SIGKILL once ``grace`` seconds have passed."""
    w.kill_deadline = time.monotonic() + grace
    for c in stop_containers(w.inits + w.ctrs):
        w.event("Killing", f"Stopping container {c.name}", c)


def drive_kill(w: PodWorker) -> bool:
    """Drive a kill started by :func:`begin_kill`; True once nothing runs."""
    poll_exits(w)
    overdue = w.kill_deadline is not None and time.monotonic() >= w.kill_deadline
    return kill_progress(w.inits + w.ctrs, overdue)


def finish_if_terminal(w: PodWorker) -> None:
    """A deadline kill that has ended makes the pod Failed."""
    deadline_kill = w.kill_deadline is not None and w.reason == "DeadlineExceeded"
    if deadline_kill and drive_kill(w):
        w.phase = "Failed"


def terminate_for_deletion(w: PodWorker, pod: dict[str, Any]) -> bool:
    """Graceful deletion, one step per call; True once the final delete was sent."""
    if w.final_deleted:
        return True  # wait for the DELETED event (finalizers may hold the object)
    if w.kill_deadline is None:
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        begin_kill(w, float(grace))
    if not drive_kill(w):
        return False
    mark_unknown(w.inits + w.ctrs, now_iso())
    if w.phase not in ("Succeeded", "Failed"):
        w.phase = "Succeeded" if all(c.succeeded for c in w.ctrs) else "Failed"
    w.report()
    try:
        code, body = w.agent.kube.delete_pod_now(w.ns, w.pod_name, w.uid)
    except Exception as e:  # apiserver away for a moment: the next tick retries
        code, body = 0, {"message": str(e)}
    if code == 0 or (code >= 300 and code not in (404, 409)):
        w.api_failed("final delete", code, body)
        return False
    w.final_deleted = True
    return True


def kill_all(w: PodWorker, sig: int) -> None:
    """Send ``sig`` to every container of ``w`` at once (no grace)."""
    for c in w.inits + w.ctrs:
        c.kill(sig)


def shutdown_kill(w: PodWorker) -> None:
    """Agent shutdown: SIGTERM every container, SIGKILL after 5 s."""
    shutdown_containers(w.inits + w.ctrs, grace=5)
