"""``kubectl exec`` on the local node's process runtime: the API server (v1.36) proxies
kubectl's WebSocket (``v5.channel.k8s.io``) to the node agent, which declares
``ExtendWebSocketsToKubelet``; stdout, stderr, stdin and the exit code come through.  The
podman runtime's is in tests/images/test_podman_runtime.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
SLEEP = "import time; time.sleep(600)"


def test_kubectl_exec_streams_and_returns_the_exit_code(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
           "spec": {"containers": [{"name": "c", "image": "x",
                                    "command": [sys.executable, "-c", SLEEP],
                                    "env": [{"name": "WHO", "value": "target-env"}]}]}}  # fmt: skip
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 60
    while kubectl("get", "pod", "target", "-n", namespace, "-o",
                  "jsonpath={.status.phase}").stdout != "Running":  # fmt: skip
        assert time.monotonic() < deadline, "pod never ran"
        time.sleep(0.3)
    out = kubectl("exec", "target", "-n", namespace, "--", "sh", "-c",
                  "echo $WHO; echo to-stderr >&2; exit 7", check=False)  # fmt: skip
    assert out.returncode == 7, out.stderr
    assert out.stdout == "target-env\n"  # the container's environment
    assert "to-stderr" in out.stderr
    assert "command terminated with exit code 7" in out.stderr
    echoed = kubectl("exec", "-i", "target", "-n", namespace, "--", "tr", "a-z", "A-Z",
                     input="hello exec\n")  # fmt: skip
    assert echoed.stdout == "HELLO EXEC\n"
