"""The local node's podman runtime (`voicetrack local up --runtime podman`): pods bound to
the node run in their images, with their security context, volumes, the ServiceAccount
token at its standard path (in-cluster configuration unchanged), exit codes, termination
messages, logs, image pull policies and probes.

The cluster and namespace fixtures are in tests/images/conftest.py."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.nodeagent.podman import Podman, PodmanContainer
from voicetrack_local.nodeagent.podmanargs import AGENT_LABEL
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.images

TAG = os.environ.get("VOICETRACK_IMAGE_TAG", "0.1.0")
OPERATOR = f"voicetrack/operator:{TAG}"  # resolved to localhost/… by the node agent
BASE = "localhost/voicetrack-base:bookworm"  # its user is root

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def apply(pk: Kubectl, ns: str, *docs: dict[str, Any]) -> None:
    pk("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                       "items": list(docs)}))  # fmt: skip


def get_pod(pk: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return dict(json.loads(pk("get", "pod", name, "-n", ns, "-o", "json").stdout))


def wait_pod(pk: Kubectl, ns: str, name: str, cond: Callable[[dict[str, Any]], bool],
             timeout: float = 90) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        pod = get_pod(pk, ns, name)
        if cond(pod):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name}: condition not met; status "
                                 f"{json.dumps(pod.get('status'), indent=1)[:3000]}")  # fmt: skip
        time.sleep(0.5)


def ctr_status(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["status"]["containerStatuses"][0])


def condition(pod: dict[str, Any], typ: str) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions") or []
                 if c["type"] == typ), None)  # fmt: skip


PROBE_SCRIPT = r"""
import os, pathlib, kubernetes
ns = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text()
status = pathlib.Path("/proc/self/status").read_text()
print("uid", os.getuid(), "gid", os.getgid())
print("capeff", re.search(r"CapEff:\s*(\w+)", status).group(1))
print("nnp", re.search(r"NoNewPrivs:\s*(\d)", status).group(1))
print("env", os.environ["PW"], os.environ["GR"], os.environ["ME"])
print("files", open("/etc/s/password").read(), open("/etc/c/greeting").read())
for path in ("/x", "/etc/s/new"):
    try:
        open(path, "w")
        print("writable", path)
    except OSError as e:
        print("refused", path, e.errno)
open("/scratch/ok", "w").write("scratch")
st = os.statvfs("/scratch")
print("scratch-bytes", st.f_blocks * st.f_frsize)
print("memlimit", open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read().strip())
kubernetes.config.load_incluster_config()
me = kubernetes.client.CoreV1Api().read_namespaced_pod(os.environ["ME"], ns)
print("self", me.metadata.name, me.metadata.namespace)
open("/dev/termination-log", "w").write("finished: " + me.metadata.name)
raise SystemExit(3)
"""


def test_pod_runs_in_its_image_restricted_with_volumes_and_in_cluster_config(
    pk: Kubectl, ns: str
) -> None:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "read-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "read-pods"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "read-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"},
              "stringData": {"password": "hunter2"}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"},
          "data": {"greeting": "hello"}}
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "restricted"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": OPERATOR, "imagePullPolicy": "Never",
                "command": ["python3", "-c"], "args": ["import re\n" + PROBE_SCRIPT],
                "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s1",
                                                                  "key": "password"}}},
                    {"name": "GR", "valueFrom": {"configMapKeyRef": {"name": "c1",
                                                                     "key": "greeting"}}},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"limits": {"memory": "256Mi", "cpu": "1"}},
                "volumeMounts": [{"name": "s", "mountPath": "/etc/s"},
                                 {"name": "c", "mountPath": "/etc/c"},
                                 {"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "s", "secret": {"secretName": "s1"}},
                        {"name": "c", "configMap": {"name": "c1"}},
                        {"name": "scratch", "emptyDir": {"sizeLimit": "10Mi"}}],
        },
    }  # fmt: skip
    apply(pk, ns, role, binding, secret, cm, pod)
    done = wait_pod(pk, ns, "restricted", lambda p: p["status"].get("phase") == "Failed")
    term = ctr_status(done)["state"]["terminated"]
    logs = pk("logs", "restricted", "-n", ns).stdout
    assert term["exitCode"] == 3, logs
    assert term["message"] == "finished: restricted", logs
    assert term["reason"] == "Error"
    assert ctr_status(done)["containerID"].startswith("podman://k8s_main_restricted_")
    lines = dict(line.split(" ", 1) for line in logs.splitlines() if " " in line)
    assert lines["uid"] == "10001 gid 10001"
    assert lines["capeff"] == "0000000000000000"  # every capability dropped
    assert lines["nnp"] == "1"  # allowPrivilegeEscalation: false
    assert lines["env"] == "hunter2 hello restricted"
    assert lines["files"] == "hunter2 hello"
    assert "refused /x 30" in logs  # EROFS: read-only root file system
    assert "refused /etc/s/new 30" in logs  # secret volumes are mounted read-only
    assert lines["scratch-bytes"] == str(10 * 1024 * 1024)  # the emptyDir's sizeLimit
    assert lines["memlimit"] == str(256 * 1024 * 1024)
    assert lines["self"] == f"restricted {ns}"  # in-cluster config, the pod's own token


def test_root_images_refused_missing_images_wait_missing_commands_fail_to_start(
    pk: Kubectl, ns: str
) -> None:
    def pod(name: str, image: str, policy: str, sc: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "securityContext": sc,
                         "containers": [{"name": "c", "image": image, "imagePullPolicy": policy,
                                         "command": ["true"]}]}}  # fmt: skip

    no_cmd = pod("no-such-command", OPERATOR, "Never", {})
    no_cmd["spec"]["containers"][0]["command"] = ["no-such-command"]
    apply(pk, ns, no_cmd,
          pod("root-image", BASE, "Never", {"runAsNonRoot": True}),
          pod("root-user", OPERATOR, "Never", {"runAsNonRoot": True, "runAsUser": 0}),
          pod("missing", "voicetrack/absent:9.9.9", "Never", {}),
          pod("unpullable", "registry.invalid/voicetrack/absent:9.9.9", "IfNotPresent", {}))

    def waiting(p: dict[str, Any]) -> dict[str, Any]:
        st = (p.get("status") or {}).get("containerStatuses") or [{}]
        return dict((st[0].get("state") or {}).get("waiting") or {})

    def reason_in(*reasons: str) -> Callable[[dict[str, Any]], bool]:
        return lambda p: waiting(p).get("reason") in reasons

    w = waiting(wait_pod(pk, ns, "root-image", reason_in("CreateContainerConfigError")))
    assert w["message"].startswith("container has runAsNonRoot and image will run as root")
    w = waiting(wait_pod(pk, ns, "root-user", reason_in("CreateContainerConfigError")))
    assert "runAsUser breaks non-root policy" in w["message"]
    w = waiting(wait_pod(pk, ns, "missing", reason_in("ErrImageNeverPull")))
    assert w["message"] == ('Container image "voicetrack/absent:9.9.9" is not present with '
                            "pull policy of Never")  # fmt: skip
    wait_pod(pk, ns, "unpullable", reason_in("ErrImagePull", "ImagePullBackOff"), timeout=180)
    failed = wait_pod(pk, ns, "no-such-command", lambda p: p["status"].get("phase") == "Failed")
    term = ctr_status(failed)["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError"), term  # the kubelet's
    assert 'exec: "no-such-command": executable file not found' in term["message"]
    for name in ("root-image", "root-user", "missing", "unpullable"):
        assert get_pod(pk, ns, name)["status"]["phase"] == "Pending"


def test_readiness_gates_ready_and_failing_liveness_restarts(pk: Kubectl, ns: str) -> None:
    port = free_port()
    ready = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "slow-server"},
             "spec": {"containers": [{
                 "name": "web", "image": OPERATOR, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", f"sleep 6; exec python3 -m http.server {port}"],
                 "ports": [{"name": "http", "containerPort": port}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                    "periodSeconds": 1, "timeoutSeconds": 3},
                 "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 2,
                                   "timeoutSeconds": 10},
             }]}}  # fmt: skip
    dying = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unhealthy"},
             "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
                 "name": "c", "image": OPERATOR,
                 "command": ["sh", "-c", "echo run; exec sleep 600"],
                 "livenessProbe": {"tcpSocket": {"port": free_port()}, "periodSeconds": 1,
                                   "failureThreshold": 2},
             }]}}  # fmt: skip
    apply(pk, ns, ready, dying)
    running = wait_pod(pk, ns, "slow-server", lambda p: ctr_status(p).get("started") is True
                       if p["status"].get("containerStatuses") else False)  # fmt: skip
    assert condition(running, "Ready") == "False"  # running, but the server is not up yet
    assert ctr_status(running)["ready"] is False
    t0 = time.monotonic()
    up_ = wait_pod(pk, ns, "slow-server", lambda p: condition(p, "Ready") == "True")
    assert ctr_status(up_)["ready"] is True
    assert ctr_status(up_)["restartCount"] == 0  # the exec liveness probe passes
    assert time.monotonic() - t0 < 30
    # kubectl exec runs inside the container (podman exec), exit codes come through
    out = pk("exec", "slow-server", "-n", ns, "--", "sh", "-c", "id -u; exit 6", check=False)
    assert (out.returncode, out.stdout) == (6, "10001\n"), out.stderr
    typed = pk("exec", "-i", "slow-server", "-n", ns, "--", "cat", input="through stdin")
    assert typed.stdout == "through stdin"

    restarted = wait_pod(pk, ns, "unhealthy", lambda p: bool(p["status"].get(
        "containerStatuses")) and ctr_status(p)["restartCount"] >= 1, timeout=120)  # fmt: skip
    last = ctr_status(restarted)["lastState"]["terminated"]
    assert last["exitCode"] in (137, 143), last  # SIGTERM (sh ignores it: SIGKILL after 2 s)
    events = pk("get", "events", "-n", ns, "--field-selector",
                "involvedObject.name=unhealthy", "-o", "json").stdout  # fmt: skip
    reasons = {e["reason"]: e["message"] for e in json.loads(events)["items"]}
    assert "Liveness probe failed" in reasons["Unhealthy"]
    assert reasons["Killing"] == "Container c failed liveness probe, will be restarted"
    assert "run" in pk("logs", "unhealthy", "-n", ns, "--previous").stdout


@pytest.mark.parametrize("term_after_s", [0.05, 0.2, 1.5])
def test_a_container_killed_after_its_grace_period_exits_137_however_early_it_was_stopped(
        images: str, tmp_path: Path, term_after_s: float) -> None:
    """A liveness failure stops a container with SIGTERM, then SIGKILL (``podman rm
    --force``) once the grace period passes. When the SIGTERM came before ``podman run``
    had its signal proxy (within ~0.2 s of its start, as under load in CI), ``podman run``
    exited 0 after the removal and the pod showed the killed container as ``Completed``."""
    agent = f"test-{secrets.token_hex(4)}"
    podman = Podman(agent)
    c = PodmanContainer("c", {"name": "c"}, False, podman=podman, cname=f"{agent}-c")
    argv = [podman.exe, "run", "--name", c.cname or "", "--network", "none", "--label",
            f"{AGENT_LABEL}={agent}", "--entrypoint", "sh", f"localhost/{OPERATOR}",
            "-c", "echo run; exec sleep 600"]  # fmt: skip
    try:
        c.launch(argv, tmp_path, podman.env, tmp_path / "log", tmp_path / "pid", agent)
        time.sleep(term_after_s)
        assert c.terminate()
        time.sleep(2.5)  # the grace period: sleep, PID 1 in the container, ignores SIGTERM
        assert c.poll() is None
        c.signal_group(signal.SIGKILL)
        assert c.proc is not None
        c.proc.wait(timeout=30)
        assert c.poll() == 137
    finally:
        podman.remove_all()
