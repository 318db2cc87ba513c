"""Pods a deletion stops waiting for: a recorder or transcoder pod on a node that is gone
or NotReady, or one still there `STUCK_AFTER_S` seconds past its `deletionTimestamp`.

Only a kubelet confirms a graceful pod deletion; on a dead node none does, so the pod
stays Terminating (or Running) in the API for ever and a deletion that waits for it never
ends. A node is NotReady only after it missed its heartbeats for the node monitor's grace
period (about 40 s), so its kubelet does not learn of a deletion either. Such a pod is
deleted with grace 0 (removed from the API at once) and the deletion goes on; the caller
says so in an Event. `stuck_reason` decides, pure; `force_stuck` does the I/O.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from voicetrack_operator.context import Context
from voicetrack_operator.services.sessionview import parse_time

log = logging.getLogger(__name__)

STUCK_AFTER_S = 60.0
"""A pod still in the API this many seconds past its `deletionTimestamp` (the end of its
grace period) is force-deleted whatever its node says."""


def node_ready(node: dict[str, Any]) -> bool:
    """True when the Node's `Ready` condition is `True` (absent or Unknown: not ready)."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def stuck_reason(pod: dict[str, Any], node: dict[str, Any] | None, now: datetime
                 ) -> str | None:
    """Why `pod` will never finish by itself, or None: its node (`spec.nodeName`; `node`
    the Node object, None when it does not exist) is gone or not Ready, or `now` (aware)
    is `STUCK_AFTER_S` past its `deletionTimestamp`. A pod bound to no node is never
    stuck (the API server deletes it at once). Pure."""
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name and node is None:
        return f"its node {node_name} is gone"
    if node_name and node is not None and not node_ready(node):
        return f"its node {node_name} is NotReady"
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    if deleting and now - parse_time(deleting) > timedelta(seconds=STUCK_AFTER_S):
        return f"still there {STUCK_AFTER_S:.0f} s after its grace period ended"
    return None


async def force_stuck(ctx: Context, pods: list[dict[str, Any]], now: datetime
                      ) -> dict[str, str]:
    """Force-delete (grace 0) those of `pods` that are stuck (`stuck_reason`), reading
    each node once. Returns {pod name: reason} of those deleted. Raises TemporaryFailure
    when the API server cannot be reached."""
    nodes: dict[str, dict[str, Any] | None] = {}
    forced: dict[str, str] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and node_name not in nodes:
            nodes[node_name] = await ctx.kube.get_node(node_name)
        why = stuck_reason(pod, nodes.get(node_name) if node_name else None, now)
        if why is None:
            continue
        meta = pod["metadata"]
        log.warning("pod %s/%s force-deleted: %s", meta["namespace"], meta["name"], why)
        await ctx.kube.delete_pod(meta["namespace"], meta["name"], grace_s=0)
        forced[str(meta["name"])] = why
    return forced
