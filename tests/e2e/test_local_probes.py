"""Probes on the local node's process runtime (the default): readiness gates the pod's
Ready condition, a failing liveness probe restarts the container per restartPolicy, a
startup probe holds the others back (kubernetes.io/docs/tasks/configure-pod-container/
configure-liveness-readiness-startup-probes/).  The podman runtime's are in
tests/images/test_podman_runtime.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.ports import free_port

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def pod_json(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout))


def wait_pod(kubectl: Kubectl, ns: str, name: str, cond: Callable[[dict[str, Any]], bool],
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        pod = pod_json(kubectl, ns, name)
        if pod.get("status", {}).get("containerStatuses") and cond(pod):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name}: {json.dumps(pod.get('status'))[:3000]}")
        time.sleep(0.3)


def cstatus(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0])


def ready(pod: dict[str, Any]) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions") or []
                 if c["type"] == "Ready"), None)  # fmt: skip


def test_readiness_and_startup_probes_gate_ready(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    flag = tmp_path / "started"
    server = (f"import http.server, pathlib, time; time.sleep(4); "
              f"pathlib.Path({str(flag)!r}).touch(); "
              f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
              "http.server.SimpleHTTPRequestHandler).serve_forever()")  # fmt: skip
    ctr = {"name": "web", "image": "x", "command": [sys.executable, "-c", server],
           "ports": [{"name": "http", "containerPort": port}],
           "startupProbe": {"exec": {"command": ["test", "-f", str(flag)]},
                            "periodSeconds": 1, "failureThreshold": 30},
           "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
         "spec": {"containers": [ctr]}}))  # fmt: skip
    running = wait_pod(kubectl, namespace, "web", lambda p: "running" in cstatus(p)["state"])
    assert cstatus(running)["started"] is False and cstatus(running)["ready"] is False
    assert ready(running) == "False"
    done = wait_pod(kubectl, namespace, "web", lambda p: ready(p) == "True", timeout=40)
    assert cstatus(done)["started"] is True and cstatus(done)["ready"] is True
    assert cstatus(done)["restartCount"] == 0


def test_failing_liveness_probe_restarts_by_policy(kubectl: Kubectl, namespace: str) -> None:
    def pod(name: str, policy: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 3,
                         "containers": [{
                             "name": "c", "image": "x",
                             "command": [sys.executable, "-c", "print('up', flush=True); "
                                         "import time; time.sleep(600)"],
                             "livenessProbe": {"exec": {"command": ["false"]},
                                               "periodSeconds": 1, "failureThreshold": 2}}]}}

    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List",
         "items": [pod("always", "Always"), pod("never", "Never")]}))  # fmt: skip
    restarted = wait_pod(kubectl, namespace, "always",
                         lambda p: cstatus(p)["restartCount"] >= 1)  # fmt: skip
    assert cstatus(restarted)["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert kubectl("logs", "always", "-n", namespace, "--previous").stdout == "up\n"
    failed = wait_pod(kubectl, namespace, "never", lambda p: p["status"]["phase"] == "Failed")
    assert cstatus(failed)["restartCount"] == 0
    assert cstatus(failed)["state"]["terminated"]["exitCode"] == 143
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    msgs = {(e["involvedObject"]["name"], e["reason"]): e["message"] for e in events["items"]}
    assert msgs[("never", "Killing")] == "Container c failed liveness probe, will be restarted"
    assert msgs[("never", "Unhealthy")].startswith("Liveness probe failed: ")
