"""The chart's default install keeps its data (issue 11 item 3): `helm install --wait` with
the default values on the local cluster puts the operator's SQLite database on a
PersistentVolumeClaim; the data survives the operator pod's deletion and `helm uninstall`.

The chart's PersistentVolume is static and made here: a hostPath PV of the local cluster's
default StorageClass under this test's tmp directory, reserved for the chart's claim with
``claimRef`` (so no other claim on the shared cluster takes it); the scheduler and
kube-controller-manager's PV controller bind the claim to it, the node agent gives the
operator's process that directory at ``/var/lib/voicetrack`` (a bind mount in the process's
own mount namespace).  A second test uses the static PVs `voicetrack local up` makes.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_main_job import wait_for
from tests.fixtures.stack import Stack
from voicetrack_local.build import ensure_helm
from voicetrack_local.cluster import STATIC_VOLUMES, STORAGE_CLASS
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "helm" / "voicetrack"
RELEASE = "vtpv"
CLAIM = f"{RELEASE}-voicetrack-data"  # <fullname>-data
MIGRATED = "database migrated to revision"
MARKER = "pvmarker00000001"  # a meetings row written while the first pod runs
# (checked by id: the chart's operator serves the whole cluster and may also write rows for
# other tests' sessions into the same database)

Helm = Callable[..., subprocess.CompletedProcess[str]]


def _helm(kubeconfig: Path) -> Helm:
    exe = ensure_helm()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=180,
                              check=False, env=env)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def _json(stack: Stack, *args: str) -> Any:
    res = stack.kubectl(*args, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def _beats(db: Path) -> list[tuple[Any, ...]]:
    """The heartbeat rows; none while the file or its schema is still being made."""
    if not db.exists():
        return []
    try:
        return _query(db, "SELECT service_name, last_beat FROM heartbeats")
    except sqlite3.OperationalError:  # no such table yet: the migration is running
        return []


def _running_pod(stack: Stack, ns: str, not_uid: str | None = None) -> dict[str, Any] | None:
    pods = (_json(stack, "-n", ns, "get", "pods") or {}).get("items", [])
    for pod in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
        if ready and pod["metadata"]["uid"] != not_uid and not pod["metadata"].get(
            "deletionTimestamp"
        ):
            return dict(pod)
    return None


def _operator_log(stack: Stack, ns: str, pod: dict[str, Any]) -> str:
    return str(stack.kubectl("-n", ns, "logs", pod["metadata"]["name"], "-c", "operator",
                             check=False).stdout)  # fmt: skip


def test_the_default_install_keeps_its_database_across_operator_restarts_and_uninstall(
    stack: Stack, tmp_path: Path
) -> None:
    ns = f"vt-pv-{secrets.token_hex(3)}"
    pv_name = f"vt-pv-{secrets.token_hex(4)}"
    pv_dir = tmp_path / "pv"  # created by the node agent (DirectoryOrCreate)
    db = pv_dir / "voicetrack.db"
    helm = _helm(stack.kubeconfig)
    health, metrics = free_port(), free_port()
    install = (
        "install", RELEASE, str(CHART), "--namespace", ns, "--wait", "--timeout", "120s",
        "--set", f"s3.endpoint={stack.s3.endpoint}",
        "--set", f"s3.accessKey={stack.s3.access_key}",
        "--set", f"s3.secretKey={stack.s3.secret_key}",
        "--set", f"s3.bucket={stack.s3.bucket}",
        "--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
        # the local node agent runs pods on the host: keep them on the pod's own loopback
        "--set", "operator.listenAddress=$(POD_IP)",
    )  # fmt: skip  (no database.url, no persistence values: the defaults)
    stack.kubectl("create", "namespace", ns)
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": STORAGE_CLASS,
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(pv_dir), "type": "DirectoryOrCreate"},
                 "claimRef": {"namespace": ns, "name": CLAIM}}}))  # fmt: skip
    try:
        out = helm(*install)
        assert f'PersistentVolumeClaim\n"{CLAIM}" mounted at /var/lib/voicetrack' in out.stdout
        assert "WARNING" not in out.stdout, out.stdout
        pvc = _json(stack, "-n", ns, "get", "pvc", CLAIM)
        assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == pv_name
        assert pvc["spec"]["storageClassName"] == STORAGE_CLASS  # the cluster's default
        first = wait_for("the operator pod ready", lambda: _running_pod(stack, ns), 60)
        vols = {v["name"]: v for v in first["spec"]["volumes"]}
        assert vols["data"]["persistentVolumeClaim"] == {"claimName": CLAIM}

        # The first pod migrated a new SQLite file on the volume and beats into it.
        wait_for("the heartbeat row", lambda: _beats(db), 60)
        (head,) = _query(db, "SELECT version_num FROM alembic_version")
        assert MIGRATED in _operator_log(stack, ns, first)
        _query(db, "INSERT INTO meetings (id, guild_id, channel_id, started_at, status) "
               "VALUES (?, '1', '2', '2026-01-01 00:00:00.000000', 'ended')", MARKER)
        (beat,) = _query(db, "SELECT last_beat FROM heartbeats")

        # Delete the operator pod: the Deployment's next pod mounts the same claim.
        stack.kubectl("-n", ns, "delete", "pod", first["metadata"]["name"], "--wait=false")
        uid = first["metadata"]["uid"]
        second = wait_for("a new operator pod ready",
                          lambda: _running_pod(stack, ns, not_uid=uid), 90)  # fmt: skip
        wait_for("the new pod's heartbeat",
                 lambda: _query(db, "SELECT last_beat FROM heartbeats")[0] > beat, 60)
        log = _operator_log(stack, ns, second)
        assert MIGRATED not in log, log[-2000:]  # it found the schema already at its head
        assert _query(db, "SELECT version_num FROM alembic_version") == [head]
        assert _query(db, "SELECT id FROM meetings WHERE id = ?", MARKER) == [(MARKER,)]

        # `helm uninstall` keeps the claim (helm.sh/resource-policy: keep) and so the data;
        # installing the release again adopts that claim and finds the data.
        helm("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "60s")
        wait_for("the operator pods gone", lambda: not (
            _json(stack, "-n", ns, "get", "pods") or {}).get("items"), 60)  # fmt: skip
        kept = _json(stack, "-n", ns, "get", "pvc", CLAIM)
        assert kept is not None and kept["status"]["phase"] == "Bound"
        assert _query(db, "SELECT id FROM meetings WHERE id = ?", MARKER) == [(MARKER,)]
        (beat,) = _query(db, "SELECT last_beat FROM heartbeats")
        helm(*install)
        third = wait_for("the reinstalled operator ready", lambda: _running_pod(stack, ns), 60)
        wait_for("its heartbeat",
                 lambda: _query(db, "SELECT last_beat FROM heartbeats")[0] > beat, 60)
        assert MIGRATED not in _operator_log(stack, ns, third)
        assert _query(db, "SELECT id FROM meetings WHERE id = ?", MARKER) == [(MARKER,)]
    finally:
        helm("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "60s", check=False)
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        stack.kubectl("delete", "pv", pv_name, "--wait=false", check=False)


def test_local_up_provides_static_volumes_a_claim_binds_to(stack: Stack, tmp_path: Path) -> None:
    """`voicetrack local up` makes a default StorageClass (no provisioner,
    WaitForFirstConsumer) and hostPath PVs: a pod's claim binds to one when the pod is
    scheduled, and what the pod writes at its mountPath lands in that PV's directory. The
    PV is made Available again afterwards (its reclaim policy is Retain)."""
    sc = _json(stack, "get", "storageclass", STORAGE_CLASS)
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    pvs = _json(stack, "get", "pv", "-l", "voicetrack.dev/local=true")["items"]
    assert len(pvs) == STATIC_VOLUMES
    ns = f"vt-pvc-{secrets.token_hex(3)}"
    at = tmp_path / "mnt" / "data"  # the mountPath: nothing left outside tmp_path
    stack.kubectl("create", "namespace", ns)
    stack.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
             "spec": {"restartPolicy": "Never",
                      "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}],
                      "containers": [{"name": "w", "image": "busybox", "command": [
                          "sh", "-c", f'echo {ns} > "{at}/written"'],
                          "volumeMounts": [{"name": "d", "mountPath": str(at)}]}]}}]}))
    pv_name = None
    try:
        # Pending until the pod is scheduled (WaitForFirstConsumer), then bound.
        wait_for("the pod succeeded", lambda: (_json(stack, "-n", ns, "get", "pod", "w") or {})
                 .get("status", {}).get("phase") == "Succeeded", 60)  # fmt: skip
        pvc = _json(stack, "-n", ns, "get", "pvc", "c")
        assert pvc["status"]["phase"] == "Bound"
        pv_name = pvc["spec"]["volumeName"]
        pv = _json(stack, "get", "pv", pv_name)
        assert pv["metadata"]["labels"]["voicetrack.dev/local"] == "true"
        assert (Path(pv["spec"]["hostPath"]["path"]) / "written").read_text() == f"{ns}\n"
    finally:
        stack.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=60s", check=False)
        if pv_name:  # Released (Retain): clear the claim so the PV is Available again
            stack.kubectl("patch", "pv", pv_name, "--type=json", "-p",
                          '[{"op": "remove", "path": "/spec/claimRef"}]', check=False)
