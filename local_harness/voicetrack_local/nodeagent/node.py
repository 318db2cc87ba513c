"""The Node object and its heartbeat: registration (Ready, capacity, addresses, the
kubelet endpoint), the Lease in ``kube-node-lease`` renewed every ``RENEW_SECONDS`` (the
node controller marks a node Unknown after ``--node-monitor-grace-period``, 50 s, without a
renewal it saw), and the node status re-posted at once when the API's copy is not Ready (as
the kubelet does every ``nodeStatusUpdateFrequency``), else every ``STATUS_REPORT_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from voicetrack_local.nodeagent.execstream import NODE_FEATURE
from voicetrack_local.nodeagent.kube import Kube, now_iso, now_micro

log = logging.getLogger("voicetrack.nodeagent")

LEASE_SECONDS = 40
RENEW_SECONDS = 10
#: node status is re-posted at least this often, and at once when the API's copy is not Ready
STATUS_REPORT_SECONDS = 60
#: after a failed heartbeat, retry after 0.5 s doubling up to this (the kubelet's lease
#: controller retries from 200 ms up to 7 s: pkg/kubelet/nodelease)
HEARTBEAT_RETRY_MAX = 4.0
K8S_VERSION = "v1.36.3"


class NodeRegistration:
    """Node ``node`` in the API: :meth:`register` once, then :meth:`heartbeat_loop`.

    Args:
        kube: API access (admin kubeconfig).
        port: the kubelet endpoint's port (the log server).
        capacity: capacity and allocatable (``cpu``, ``memory``, ``pods``,
            ``ephemeral-storage``) as quantity strings."""

    def __init__(self, kube: Kube, node: str, port: int, capacity: dict[str, str]) -> None:
        self.kube = kube
        self.node = node
        self.port = port
        self.capacity = capacity
        self._since = now_iso()

    def _node_status(self) -> dict[str, Any]:
        t = now_iso()
        conds = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": ty,
                    "status": s,
                    "reason": r,
                    "message": "voicetrack node agent",
                    "lastHeartbeatTime": t,
                    "lastTransitionTime": self._since,
                }
                for ty, s, r in conds
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            # the API server then proxies WebSocket exec to us as is (:mod:`.execstream`)
            "declaredFeatures": [NODE_FEATURE],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "voicetrack local node agent",
                "containerRuntimeVersion": "voicetrack://0.1",
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        """Create the Node (or keep the existing one) and patch its status to Ready."""
        self._since = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "voicetrack-local",
                },
            },
        }
        code, resp = self.kube.request("POST", "/api/v1/nodes", body=body)
        if code >= 300 and code != 409:
            raise RuntimeError(f"register node: HTTP {code}: {(resp or {}).get('message')}")
        self._patch_node_status()

    def _patch_node_status(self) -> None:
        code, resp = self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            body={"status": self._node_status()},
            content_type="application/strategic-merge-patch+json",
        )
        if code >= 300:
            raise RuntimeError(f"node status: HTTP {code}: {(resp or {}).get('message')}")

    def renew_lease(self) -> None:
        """Renew the node's Lease in ``kube-node-lease`` (create it, owned by the Node, when
        missing).

        Raises:
            RuntimeError: the API refused the renewal or the creation."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        code, resp = self.kube.request(
            "PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json"
        )
        if code >= 300 and code != 404:
            raise RuntimeError(f"lease renewal: HTTP {code}: {(resp or {}).get('message')}")
        if code == 404:
            node = self.kube.get(f"/api/v1/nodes/{self.node}")
            owner = (
                [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node,
                        "uid": node["metadata"]["uid"],
                    }
                ]
                if node
                else []
            )
            code, resp = self.kube.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node,
                        "namespace": "kube-node-lease",
                        "ownerReferences": owner,
                    },
                    "spec": spec,
                },
            )
            if code >= 300:
                raise RuntimeError(f"lease create: HTTP {code}: {(resp or {}).get('message')}")

    def _node_ready_in_api(self) -> bool:
        """True when the API's copy of our Node has condition Ready=True.  The node lifecycle
        controller sets it Unknown when it saw no heartbeat for its grace period (its
        informers can lag our renewals after an apiserver restart); only we set it back.

        Raises:
            RuntimeError: the Node no longer exists, or the API answered with an error."""
        node = self.kube.get(f"/api/v1/nodes/{self.node}")
        if node is None:
            raise RuntimeError(f"node {self.node} not found")
        conds = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def heartbeat(self, last_status: float) -> float:
        """One heartbeat: renew the Lease; re-post node status when the API does not show
        the node Ready or ``STATUS_REPORT_SECONDS`` passed since ``last_status`` (monotonic
        s).  Returns the new ``last_status``.  Raises whatever the API calls raise."""
        self.renew_lease()
        due = time.monotonic() - last_status >= STATUS_REPORT_SECONDS
        if not due and self._node_ready_in_api():
            return last_status
        if not due:
            log.info("node %s is not Ready in the API; reporting its status again", self.node)
            self._since = now_iso()  # a transition back to Ready
        self._patch_node_status()
        return time.monotonic()

    def heartbeat_loop(self, stop: threading.Event) -> None:
        """Renew the Lease every ``RENEW_SECONDS`` (see :meth:`heartbeat`) until ``stop`` is
        set; after a failure retry within 0.5 s doubling up to ``HEARTBEAT_RETRY_MAX``."""
        last_status = time.monotonic()
        wait = float(RENEW_SECONDS)
        retry = 0.5
        while not stop.wait(wait):
            try:
                last_status = self.heartbeat(last_status)
                wait, retry = float(RENEW_SECONDS), 0.5
            except Exception as e:  # keep beating through apiserver hiccups, retrying soon
                log.warning("heartbeat (retry in %.1f s): %s", retry, e)
                wait, retry = retry, min(retry * 2, HEARTBEAT_RETRY_MAX)
