"""The local control plane and node agent on real upstream binaries (issue 3, "Shows")."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.kubectl import kubectl as run_kubectl
from voicetrack_local.ports import port_free
from voicetrack_local.procs import ProcRecord, spawn, terminate

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any] | None:
    proc = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype and c["status"] == "True":
            return dict(c)
    return None


def apply(
    kubectl: Kubectl, manifest: dict[str, Any] | str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return kubectl("apply", "-f", "-", input=text, check=check)


def job(name: str, ns: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "backoffLimit": spec.pop("backoffLimit", 0),
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3.11",
                            "command": ["python", "-c", code],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                        }
                    ],
                }
            },
        },
    }


# 1 ------------------------------------------------------------------------------------------


def test_crd_printer_columns_defaults_and_validation(kubectl: Kubectl, namespace: str) -> None:
    group = f"e2e{secrets.token_hex(3)}.voicetrack.dev"
    crd = textwrap.dedent(f"""
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {{name: gadgets.{group}}}
        spec:
          group: {group}
          scope: Namespaced
          names: {{plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gdg]}}
          versions:
          - name: v1
            served: true
            storage: true
            additionalPrinterColumns:
            - {{name: Size, type: integer, jsonPath: .spec.size}}
            - {{name: Colour, type: string, jsonPath: .spec.colour}}
            schema:
              openAPIV3Schema:
                type: object
                properties:
                  spec:
                    type: object
                    x-kubernetes-validations:
                    - rule: "self.size <= self.maxSize"
                      message: "size must not exceed maxSize"
                      fieldPath: ".size"
                    properties:
                      size: {{type: integer, minimum: 1}}
                      maxSize: {{type: integer, default: 10}}
                      colour: {{type: string, default: blue}}
        """)
    apply(kubectl, crd)
    try:
        kubectl("wait", "--for=condition=Established", f"crd/gadgets.{group}", "--timeout=30s")
        apply(
            kubectl,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Gadget",
                "metadata": {"name": "small", "namespace": namespace},
                "spec": {"size": 3},
            },
        )
        out = kubectl("get", "gdg", "-n", namespace).stdout.split("\n")
        assert out[0].split() == ["NAME", "SIZE", "COLOUR"]
        assert out[1].split() == ["small", "3", "blue"]  # the default filled in
        bad = apply(
            kubectl,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Gadget",
                "metadata": {"name": "big", "namespace": namespace},
                "spec": {"size": 11},
            },
            check=False,
        )
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr and "size must not exceed maxSize" in bad.stderr
        bad = apply(
            kubectl,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Gadget",
                "metadata": {"name": "zero", "namespace": namespace},
                "spec": {"size": 0},
            },
            check=False,
        )
        assert bad.returncode != 0 and "spec.size" in bad.stderr
    finally:
        kubectl("delete", "crd", f"gadgets.{group}", "--wait=false", check=False)


# 2 ------------------------------------------------------------------------------------------


def test_jobs_complete_fail_by_policy_and_retry(kubectl: Kubectl, namespace: str) -> None:
    ok = job("ok", namespace, "import os; print('hello from', os.environ['POD_NAME'])")
    by_policy = job(
        "exit2",
        namespace,
        "raise SystemExit(2)",
        backoffLimit=3,
        podFailurePolicy={
            "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}],
        },
    )
    retried = job("exit1", namespace, "raise SystemExit(1)", backoffLimit=1)
    for j in (ok, by_policy, retried):
        apply(kubectl, j)

    wait_for(
        "job ok Complete",
        lambda: condition(get_json(kubectl, "job", "ok", "-n", namespace), "Complete"),
    )
    logs = kubectl("logs", "job/ok", "-n", namespace).stdout
    assert logs.startswith("hello from ok-"), logs

    failed = wait_for(
        "job exit2 Failed",
        lambda: condition(get_json(kubectl, "job", "exit2", "-n", namespace), "Failed"),
    )
    assert failed["reason"] == "PodFailurePolicy", failed
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "job-name=exit2")
    assert pods is not None and len(pods["items"]) == 1  # no retry
    term = pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 2 and term["reason"] == "Error"

    failed = wait_for(
        "job exit1 Failed",
        lambda: condition(get_json(kubectl, "job", "exit1", "-n", namespace), "Failed"),
        timeout=90,
    )
    assert failed["reason"] == "BackoffLimitExceeded", failed
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "job-name=exit1")
    assert pods is not None and len(pods["items"]) == 2  # the first run and one retry
    assert all(p["status"]["phase"] == "Failed" for p in pods["items"])


# 3 ------------------------------------------------------------------------------------------


def test_deleting_owner_garbage_collects_children(kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": namespace},
        },
    )
    owner = get_json(kubectl, "configmap", "owner", "-n", namespace)
    assert owner is not None
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for i in range(2):
        apply(
            kubectl,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"child-{i}",
                    "namespace": namespace,
                    "ownerReferences": [ref],
                },
            },
        )
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "child-pod", "namespace": namespace, "ownerReferences": [ref]},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "c", "image": "x", "command": ["sleep", "300"]}],
            },
        },
    )
    wait_for(
        "child pod running",
        lambda: (
            (get_json(kubectl, "pod", "child-pod", "-n", namespace) or {})
            .get("status", {})
            .get("phase")
            == "Running"
        ),
    )
    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        "children collected",
        lambda: (
            get_json(kubectl, "configmap", "child-0", "-n", namespace) is None
            and get_json(kubectl, "configmap", "child-1", "-n", namespace) is None
            and get_json(kubectl, "pod", "child-pod", "-n", namespace) is None
        ),
        timeout=60,
    )


# 4 ------------------------------------------------------------------------------------------

TRAP = """
import os, signal, sys, time
marker = os.environ["MARKER"]
def on_term(sig, frame):
    open(marker, "a").write("SIGTERM\\n")
    sys.exit(0)
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)
open(marker, "a").write("started " + os.getcwd() + " " + os.environ["TMPDIR"] + "\\n")
while True:
    time.sleep(0.1)
"""


def _trap_pod(name: str, ns: str, marker: Path, grace: int, ignore: bool) -> dict[str, Any]:
    env = [{"name": "MARKER", "value": str(marker)}] + (
        [{"name": "IGNORE_TERM", "value": "1"}] if ignore else []
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "command": ["python", "-c", TRAP],
                    "env": env,
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                }
            ],
        },
    }


def test_deleting_a_running_pod_sends_sigterm_then_sigkill(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    polite, stubborn = tmp_path / "polite", tmp_path / "stubborn"
    apply(kubectl, _trap_pod("polite", namespace, polite, grace=60, ignore=False))
    apply(kubectl, _trap_pod("stubborn", namespace, stubborn, grace=2, ignore=True))
    def started_in(marker: Path) -> bool:
        return marker.exists() and "started" in marker.read_text()

    wait_for("both pods started", lambda: started_in(polite) and started_in(stubborn))
    started = polite.read_text().split()
    assert started[2].startswith(started[1]) and started[2].endswith("/volumes/scratch")  # TMPDIR

    t0 = time.monotonic()
    kubectl("delete", "pod", "polite", "stubborn", "-n", namespace, "--wait=false")
    wait_for("polite pod gone", lambda: get_json(kubectl, "pod", "polite", "-n", namespace) is None)
    assert polite.read_text().splitlines()[-1] == "SIGTERM"
    assert time.monotonic() - t0 < 30  # it exited on SIGTERM, long before its 60 s grace

    wait_for(
        "stubborn pod gone", lambda: get_json(kubectl, "pod", "stubborn", "-n", namespace) is None
    )
    assert time.monotonic() - t0 >= 2  # killed only once its 2 s grace was over
    assert "SIGTERM" not in stubborn.read_text()


def test_active_deadline_fails_the_pod(kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "slow", "namespace": namespace},
            "spec": {
                "activeDeadlineSeconds": 2,
                "terminationGracePeriodSeconds": 1,
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "x", "command": ["sleep", "60"]}],
            },
        },
    )
    pod = wait_for(
        "pod Failed",
        lambda: (lambda p: p if p and p["status"].get("phase") == "Failed" else None)(
            get_json(kubectl, "pod", "slow", "-n", namespace)
        ),
        timeout=30,
    )
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


RESTARTER = """
import os, sys
from pathlib import Path
runs = Path(os.environ["RUNS"])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
keys = ("PASSWORD", "COLOUR", "CFG_MODE", "SEC_TOKEN", "MY_NS", "MY_UID", "GREETING")
print(f"run {n}:", " ".join(f"{k}={os.environ.get(k)}" for k in keys))
sys.exit(1 if n == 1 else 0)
"""


def test_env_sources_and_restart_on_failure(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=pw=hunter2")
    kubectl("create", "secret", "generic", "bulk", "-n", namespace, "--from-literal=TOKEN=t0k")
    kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=colour=teal",
            "--from-literal=MODE=fast")  # fmt: skip

    def ref(kind: str, name: str, key: str) -> dict[str, Any]:
        return {kind: {"name": name, "key": key}}

    env = [
        {"name": "RUNS", "value": str(tmp_path / "runs")},
        {"name": "PASSWORD", "valueFrom": ref("secretKeyRef", "creds", "pw")},
        {"name": "COLOUR", "valueFrom": ref("configMapKeyRef", "cfg", "colour")},
        {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MY_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "GREETING", "value": "hi-$(COLOUR)"},
    ]
    env_from = [
        {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
        {"secretRef": {"name": "bulk"}, "prefix": "SEC_"},
    ]
    container = {"name": "c", "image": "x", "command": ["python", "-c", RESTARTER],
                 "env": env, "envFrom": env_from}  # fmt: skip
    apply(kubectl, {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "restarter", "namespace": namespace},
                    "spec": {"restartPolicy": "OnFailure", "containers": [container]}})  # fmt: skip

    def phase() -> str | None:
        pod = get_json(kubectl, "pod", "restarter", "-n", namespace)
        return (pod or {}).get("status", {}).get("phase")

    wait_for("restarted pod Succeeded", lambda: phase() == "Succeeded", timeout=60)
    pod = get_json(kubectl, "pod", "restarter", "-n", namespace)
    assert pod is not None
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    uid = pod["metadata"]["uid"]
    first = kubectl("logs", "restarter", "-n", namespace, "--previous").stdout
    assert first.strip() == (
        f"run 1: PASSWORD=hunter2 COLOUR=teal CFG_MODE=fast SEC_TOKEN=t0k MY_NS={namespace} "
        f"MY_UID={uid} GREETING=hi-teal"
    )
    assert kubectl("logs", "restarter", "-n", namespace).stdout.startswith("run 2: ")


# 5 ------------------------------------------------------------------------------------------

RBAC_CHECK = """
import subprocess
ok = subprocess.run(["kubectl", "get", "configmap", "settings", "-o", "jsonpath={.data.k}"],
                    capture_output=True, text=True)
no = subprocess.run(["kubectl", "get", "secret", "hidden"], capture_output=True, text=True)
print("configmap:", ok.returncode, ok.stdout)
print("secret:", no.returncode, no.stderr.strip())
raise SystemExit(0 if ok.returncode == 0 and no.returncode != 0 else 1)
"""


def test_service_account_token_allows_only_what_its_role_allows(
    kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        textwrap.dedent(f"""
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: ServiceAccount
          metadata: {{name: reader, namespace: {namespace}}}
        - apiVersion: rbac.authorization.k8s.io/v1
          kind: Role
          metadata: {{name: read-configmaps, namespace: {namespace}}}
          rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list]}}]
        - apiVersion: rbac.authorization.k8s.io/v1
          kind: RoleBinding
          metadata: {{name: reader, namespace: {namespace}}}
          roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}
          subjects: [{{kind: ServiceAccount, name: reader, namespace: {namespace}}}]
        - apiVersion: v1
          kind: ConfigMap
          metadata: {{name: settings, namespace: {namespace}}}
          data: {{k: v42}}
        - apiVersion: v1
          kind: Secret
          metadata: {{name: hidden, namespace: {namespace}}}
          stringData: {{p: x}}
        """),
    )
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "rbac", "namespace": namespace},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "containers": [
                    {"name": "c", "image": "x", "command": ["python", "-c", RBAC_CHECK]}
                ],
            },
        },
    )
    pod = wait_for(
        "pod finished",
        lambda: (
            lambda p: p if p and p["status"].get("phase") in ("Succeeded", "Failed") else None
        )(get_json(kubectl, "pod", "rbac", "-n", namespace)),
    )
    logs = kubectl("logs", "rbac", "-n", namespace).stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    assert "configmap: 0 v42" in logs
    assert f'system:serviceaccount:{namespace}:reader" cannot get resource "secrets"' in logs


# 6 ------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "voicetrack"
    return subprocess.run(
        [str(exe), "local", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


def _restart_apiserver(state: Path) -> None:
    """SIGKILL the apiserver and start it again with the same command (as a crash would),
    once its port is released (the kernel may close a killed process's sockets a few ms after
    its last thread is gone; the apiserver binds within 100 ms and exits on EADDRINUSE)."""
    path = state / "pids" / "kube-apiserver.json"
    old = ProcRecord.load(path)
    assert old is not None
    terminate([old], grace=0)
    assert not old.alive()
    port = json.loads((state / "cluster.json").read_text())["ports"]["apiserver"]
    wait_for("the killed apiserver's port released", lambda: port_free(port), 10, 0.005)
    _, new = spawn("kube-apiserver", old.cmd, state / "logs" / "kube-apiserver.log")
    new.save(path)


def test_cli_up_twice_is_one_cluster_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # pod watches that end every 2 s: the agent must re-list and keep going
    first = _cli("up", "--state-dir", str(state), env={"VOICETRACK_AGENT_WATCH_TIMEOUT": "2"})
    pids: dict[str, ProcRecord | None] = {}
    pod_pid: ProcRecord | None = None
    try:
        assert first.returncode == 0, first.stderr
        kubeconfig = Path(first.stdout.strip())
        assert kubeconfig == state / "kubeconfig" and kubeconfig.exists()
        pids = {p.stem: ProcRecord.load(p) for p in (state / "pids").glob("*.json")}
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "node-agent",
        }

        second = _cli("up", "--state-dir", str(state))
        assert second.returncode == 0 and "already running" in second.stderr, second.stderr
        assert {p.stem: ProcRecord.load(p) for p in (state / "pids").glob("*.json")} == pids
        assert _cli("status", "--state-dir", str(state)).returncode == 0

        _restart_apiserver(state)  # the agent's watch breaks; it must come back by itself
        pids["kube-apiserver"] = ProcRecord.load(state / "pids" / "kube-apiserver.json")
        status = ["status", "--state-dir", str(state)]
        try:
            wait_for("apiserver back", lambda: _cli(*status).returncode == 0)
        except AssertionError as e:
            log = (state / "logs" / "kube-apiserver.log").read_text(errors="replace")
            raise AssertionError(f"{e}\n{_cli(*status).stdout}\n{log[-3000:]}") from None
        # the node controller marks a node whose heartbeats it missed Unknown (after an outage,
        # its informers can lag the agent's lease renewals): the agent must report Ready again
        # at its next heartbeat (10 s), as the kubelet does, not at its next periodic status
        marked = run_kubectl(
            kubeconfig, "patch", "node", "voicetrack-local", "--subresource=status",
            "--type=strategic", "-p", json.dumps({"status": {"conditions": [
                {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                 "message": "Kubelet stopped posting node status."}]}}),
            "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )  # fmt: skip
        assert marked.stdout == "Unknown", marked.stdout
        wait_for("node Ready again", lambda: _cli(*status).returncode == 0, timeout=30)
        time.sleep(2.5)  # at least one more watch time-out
        run_kubectl(
            kubeconfig, "run", "sleeper", "--image=x", "--restart=Never", "--command", "--",
            "sleep", "300",
        )  # fmt: skip
        pods = state / "agent" / "pods"
        pod_pid = wait_for(
            "sleeper running",
            lambda: next((ProcRecord.load(p) for p in pods.glob("*sleeper*/pids/*.json")), None),
        )
        assert pod_pid is not None and pod_pid.alive()
        ports = json.loads((state / "cluster.json").read_text())["ports"]
    finally:
        down = _cli("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    for rec in [*pids.values(), pod_pid]:
        assert rec is not None and not rec.alive(), rec
    for name, port in ports.items():
        assert port_free(port), f"{name} port {port} still listened on"
    assert _cli("status", "--state-dir", str(state)).returncode == 3


# termination messages ------------------------------------------------------------------------

WRITER = """
import os, stat
mode = stat.S_IMODE(os.stat("volumes/creds/password").st_mode)
path = os.environ["VOICETRACK_TERMINATION_LOG"]
with open(path, "w") as fh:
    fh.write(f"bad input: chunk 7 (secret mode {mode:o})")
print("this log line is not the message")
raise SystemExit(2)
"""


def test_termination_messages_from_file_and_from_logs(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=pw=hunter2")

    def ctr(name: str, code: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "image": "x", "command": ["python", "-c", code], **extra}

    fails_loudly = "print('step 1 ok'); print('ffmpeg: Invalid data found'); raise SystemExit(3)"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "messages", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {
                    "name": "creds",
                    "secret": {
                        "secretName": "creds",
                        "defaultMode": 0o400,
                        "items": [{"key": "pw", "path": "password"}],
                    },
                }
            ],
            "containers": [
                ctr("writer", WRITER, volumeMounts=[{"name": "creds", "mountPath": "/creds"}]),
                ctr("fallback", fails_loudly, terminationMessagePolicy="FallbackToLogsOnError"),
                ctr("plain", fails_loudly),
                ctr("ok", "print('fine')", terminationMessagePolicy="FallbackToLogsOnError"),
            ],
        },
    }
    apply(kubectl, pod)

    def terminal() -> dict[str, Any] | None:
        got = get_json(kubectl, "pod", "messages", "-n", namespace)
        return got if (got or {}).get("status", {}).get("phase") == "Failed" else None

    got = wait_for("pod messages Failed", terminal, timeout=60)
    term = {s["name"]: s["state"]["terminated"] for s in got["status"]["containerStatuses"]}
    assert term["writer"]["exitCode"] == 2
    assert term["writer"]["message"] == "bad input: chunk 7 (secret mode 400)"
    assert term["fallback"]["exitCode"] == 3
    assert term["fallback"]["message"] == "step 1 ok\nffmpeg: Invalid data found\n"
    assert "message" not in term["plain"]  # policy File and an empty file: no message
    assert "message" not in term["ok"]  # the log fallback is for failures only
