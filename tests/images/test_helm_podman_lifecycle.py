"""The chart's whole life on the podman cluster (issue 15): the default install (the SQLite
database on the chart's PersistentVolumeClaim) in a namespace enforcing Pod Security
`restricted`; `helm test` (the operator image's
`voicetrack check`); a `files` session recording while the operator pod is deleted, the
Deployment's next pod carrying on, every acknowledged chunk in SQL and promoted afterwards;
`helm uninstall` leaving only the claim and the S3 objects.

The claim binds to a hostPath PV made here, reserved for it with `claimRef`, whose directory
belongs to the pods' UID 10001: a kubelet applies no fsGroup to hostPath volumes, so a
hostPath PV's owner is its administrator's to set (as `static_pv` does)."""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import session_yaml, wav_bytes
from tests.images.test_helm_podman import CHART, Kubectl, wait_for
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.build import ensure_helm
from voicetrack_local.cluster import STORAGE_CLASS, LocalCluster
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.images

USER = "400000000000000031"
AUDIO_MS = 16_000  # four 5 s chunks: the operator is deleted after the first
RELEASE = "vtl"
FULLNAME = f"{RELEASE}-voicetrack"


def static_pv(pk: Kubectl, directory: Path, namespace: str, claim: str) -> str:
    """A hostPath PV for `namespace/claim` (claimRef) on `directory`, which is made here
    and given to UID/GID 10001 (the images' user). Returns the PV's name."""
    directory.mkdir(parents=True)
    os.chown(directory, 10001, 10001)
    name = f"vt-img-{secrets.token_hex(4)}"
    pk("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": STORAGE_CLASS,
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}}}))  # fmt: skip
    return name


def helm_test(helm: Callable[..., subprocess.CompletedProcess[str]], release: str = RELEASE
              ) -> str:  # fmt: skip
    """`helm test` of `release`: the test pod's phase (Succeeded or Failed)."""
    proc = helm("test", release, "--timeout", "180s", check=False)
    phases = re.findall(r"Phase:\s+(\w+)", proc.stdout + proc.stderr)
    if proc.returncode == 0:
        assert phases and set(phases) == {"Succeeded"}, proc.stdout
        return "Succeeded"
    assert "Failed" in phases or "failed" in proc.stderr, proc.stdout + proc.stderr
    return "Failed"


def restricted_namespace(pk: Kubectl, prefix: str) -> str:
    """A new namespace `<prefix>-<hex>` enforcing the `restricted` Pod Security level."""
    ns = f"{prefix}-{secrets.token_hex(3)}"
    pk("create", "namespace", ns)
    pk("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
       "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    return ns


def helm_runner(pcluster: LocalCluster, ns: str, default_timeout: float = 300
                ) -> Callable[..., subprocess.CompletedProcess[str]]:  # fmt: skip
    """`helm(*args, check=True, timeout=default_timeout)`: helm against `pcluster` in
    namespace `ns`; with `check`, asserts it succeeded (its output in the message)."""
    helm_exe = str(ensure_helm())
    env = {"KUBECONFIG": str(pcluster.kubeconfig), "PATH": "/usr/bin:/bin",
           "HOME": str(pcluster.state_dir)}  # fmt: skip

    def helm(*args: str, check: bool = True, timeout: float = default_timeout
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run([helm_exe, *args, "--namespace", ns], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip
        if check:
            assert proc.returncode == 0, f"helm {args[0]}: {proc.stdout}\n{proc.stderr}"
        return proc

    return helm


def _json(pk: Kubectl, *args: str) -> Any:
    res = pk(*args, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _items(pk: Kubectl, *args: str) -> list[dict[str, Any]]:
    return list((_json(pk, "get", *args) or {}).get("items", []))


def _ready_operator(pk: Kubectl, ns: str, not_uid: str = "") -> dict[str, Any] | None:
    for pod in _items(pk, "-n", ns, "pods", "-l", "app.kubernetes.io/component=operator"):
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
        if ready and pod["metadata"]["uid"] != not_uid and not pod["metadata"].get(
                "deletionTimestamp"):  # fmt: skip
            return pod
    return None


def _query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def _leftovers(pk: Kubectl, ns: str) -> dict[str, list[str]]:
    """What is left in `ns` and cluster-wide that the release or its sessions made."""
    left: dict[str, list[str]] = {}
    for kind in ("deployments", "statefulsets", "pods", "jobs", "services", "secrets",
                 "configmaps", "serviceaccounts", "roles", "rolebindings", "networkpolicies",
                 "recordingsessions", "recordingchunks"):  # fmt: skip
        names = [o["metadata"]["name"] for o in _items(pk, "-n", ns, kind)
                 if not (kind == "serviceaccounts" and o["metadata"]["name"] == "default")
                 and not (kind == "configmaps" and o["metadata"]["name"] == "kube-root-ca.crt")]
        if names:
            left[kind] = names
    for kind in ("clusterroles", "clusterrolebindings", "validatingadmissionpolicies",
                 "validatingadmissionpolicybindings"):  # fmt: skip
        names = [o["metadata"]["name"] for o in _items(pk, kind)
                 if o["metadata"]["name"].startswith(FULLNAME)]
        if names:
            left[kind] = names
    return left


def test_helm_lifecycle_operator_restart_helm_test_and_uninstall(
    pcluster: LocalCluster, pk: Kubectl, s3_server: S3Settings, tmp_path: Path,
) -> None:  # fmt: skip
    store = ObjectStore(s3_server)
    s3 = store.settings
    ns = restricted_namespace(pk, "vt-life")
    helm = helm_runner(pcluster, ns)
    health, metrics = free_port(), free_port()
    pv_name = static_pv(pk, tmp_path / "pv", ns, f"{FULLNAME}-data")
    db = tmp_path / "pv" / "voicetrack.db"
    try:
        helm("install", RELEASE, str(CHART), "--wait", "--timeout", "240s",
             "--set", f"s3.endpoint={s3.endpoint}", "--set", f"s3.accessKey={s3.access_key}",
             "--set", f"s3.secretKey={s3.secret_key}", "--set", f"s3.bucket={s3.bucket}",
             "--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
             # the pod's own address: the check pod asks the operator at its pod IP
             "--set", "operator.listenAddress=$(POD_IP)")  # fmt: skip  (the default database)
        pvc = _json(pk, "-n", ns, "get", "pvc", f"{FULLNAME}-data")
        assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == pv_name
        first = wait_for("the operator ready", lambda: _ready_operator(pk, ns), 60)

        # helm test: the check pod (operator image) finds the operator by label, asks its
        # /healthz, and lists the bucket with the chart's S3 Secret; with a wrong S3 key it
        # fails and says which check did (a failed test pod is kept for its log).
        assert helm_test(helm) == "Succeeded"
        pk("-n", ns, "patch", "secret", "voicetrack-s3", "-p",
           json.dumps({"stringData": {"secretKey": "not-the-key"}}))  # fmt: skip
        assert helm_test(helm) == "Failed"
        log = pk("-n", ns, "logs", f"{FULLNAME}-test").stdout
        assert f"ok   operator: http://{first['status']['podIP']}:{health}/healthz" in log, log
        assert first["status"]["podIP"] != "127.0.0.1"  # the pod's own loopback address
        assert "ok   database: SQLite" in log and "FAIL s3:" in log, log
        pk("-n", ns, "patch", "secret", "voicetrack-s3", "-p",
           json.dumps({"stringData": {"secretKey": s3.secret_key}}))  # fmt: skip
        assert helm_test(helm) == "Succeeded"  # and its hook objects are gone again
        assert not _json(pk, "-n", ns, "get", "pod", f"{FULLNAME}-test")

        # A files session; the operator pod is deleted once the first chunk is in.
        spk = Speaker(user_id=USER, f0=170.0, talks=[(200, 7000), (8000, 15500)])
        key = f"life-input/{ns}/{USER}.wav"
        store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
        doc = json.loads(session_yaml(ns, "life", [key] * 3))
        doc["spec"]["source"]["speakers"] = [{"userId": USER, "objectKey": key}]
        pk("apply", "-f", "-", input=json.dumps(doc))
        wait_for("the first chunk", lambda: _items(pk, "-n", ns, "recchunk"), 120)
        pk("-n", ns, "delete", "pod", first["metadata"]["name"], "--wait=false")
        second = wait_for("the Deployment's next operator pod ready",
                          lambda: _ready_operator(pk, ns, not_uid=first["metadata"]["uid"]),
                          180)  # fmt: skip
        assert second["metadata"]["name"] != first["metadata"]["name"]

        def session() -> dict[str, Any]:
            return dict(_json(pk, "-n", ns, "get", "recsess", "life") or {})

        def all_transcoded() -> bool:
            chunks = _items(pk, "-n", ns, "recchunk")
            return (session().get("status", {}).get("recordedSeconds", 0) * 1000 >= AUDIO_MS
                    and bool(chunks) and all((c.get("status") or {}).get("transcodeStatus")
                                             == "done" for c in chunks))  # fmt: skip

        wait_for("every chunk recorded and transcoded", all_transcoded, 300, 1)
        meeting = session()["status"]["meetingId"]
        chunks = _items(pk, "-n", ns, "recchunk")
        acked = sorted((c["spec"]["index"], t["userId"]) for c in chunks
                       for t in c["spec"].get("tracks") or [])  # fmt: skip
        indexes = sorted(c["spec"]["index"] for c in chunks)
        assert indexes == list(range(len(indexes))) and len(indexes) >= 3, indexes
        assert acked, chunks
        # the data written by the first pod and by the second are one database (the claim)
        rows = sorted((i, u) for i, u, st in _query(
            db, "SELECT chunk_index, user_id, transcode_status FROM temp_recordings "
            "WHERE meeting_id = ? AND user_id IS NOT NULL", meeting) if st == "done")
        assert rows == acked, (rows, acked)
        assert _query(db, "SELECT id FROM meetings WHERE id = ?", meeting) == [(meeting,)]

        pk("-n", ns, "delete", "recsess", "life", "--wait=false")
        wait_for("promotion and clean-up", lambda: not session(), 300)
        recs = _query(db, "SELECT kind, user_id, duration_in_ms, object_key FROM recordings "
                      "WHERE meeting_id = ?", meeting)  # fmt: skip
        by_user = {u: (d, k) for _, u, d, k in recs if u}
        assert set(by_user) == {USER}, recs
        assert any(u is None for _, u, _, _ in recs), recs  # the mix
        for duration, obj in [*by_user.values(), *[(d, k) for _, u, d, k in recs if not u]]:
            assert duration >= AUDIO_MS - 500, recs  # gapless: nothing lost to the restart
            assert store.exists(obj), obj

        # uninstall: only the claim (keep policy) and the S3 objects remain.
        helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
        wait_for("the release's pods gone",
                 lambda: not _items(pk, "-n", ns, "pods"), 90)  # fmt: skip
        assert _leftovers(pk, ns) == {}, _leftovers(pk, ns)
        kept = _json(pk, "-n", ns, "get", "pvc", f"{FULLNAME}-data")
        assert kept is not None and kept["status"]["phase"] == "Bound"
        assert _query(db, "SELECT id FROM meetings WHERE id = ?", meeting) == [(meeting,)]
        assert all(store.exists(k) for _, _, _, k in recs)
    finally:
        helm("uninstall", RELEASE, "--wait", "--timeout", "60s", check=False)
        pk("delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False)
        pk("delete", "pv", pv_name, "--wait=false", check=False)
