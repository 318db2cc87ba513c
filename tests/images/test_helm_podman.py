"""`helm install` of the chart on a local cluster whose node runs pods in their images
(`--runtime podman`), in a namespace enforcing Pod Security `restricted`: the operator runs
in its image, records a short `files`-source session with the recorder and transcoder pods
in theirs, and promotes it on delete.  S3 (SeaweedFS) and PostgreSQL run on this host; the
pods reach them on 127.0.0.1 (host network)."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import session_yaml, wav_bytes
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.build import ensure_helm
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import PostgresServer

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "voicetrack"
USER = "400000000000000021"
AUDIO_MS = 6_000

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_for(what: str, fn: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def test_helm_install_records_a_session_with_every_pod_in_its_image(
    pcluster: LocalCluster, pk: Kubectl, s3_server: S3Settings,
    postgres_server: PostgresServer,
) -> None:  # fmt: skip
    # the server's default bucket: a session without spec.storage records there
    object_store = ObjectStore(s3_server)
    helm = str(ensure_helm())
    ns = f"vt-img-{secrets.token_hex(3)}"
    release = "vti"
    env = {"KUBECONFIG": str(pcluster.kubeconfig), "PATH": "/usr/bin:/bin",
           "HOME": str(pcluster.state_dir)}  # fmt: skip
    s3 = object_store.settings
    pk("create", "namespace", ns)
    pk("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
       "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    db_url = postgres_server.create_database(f"vt_img_{secrets.token_hex(4)}")
    health, metrics = free_port(), free_port()
    try:
        install = subprocess.run(
            [helm, "install", release, str(CHART), "--namespace", ns, "--wait",
             "--timeout", "180s",
             "--set", f"s3.endpoint={s3.endpoint}", "--set", f"s3.accessKey={s3.access_key}",
             "--set", f"s3.secretKey={s3.secret_key}", "--set", f"s3.bucket={s3.bucket}",
             "--set", f"database.url={db_url}",
             "--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
             "--set", "operator.listenAddress=$(POD_IP)"],
            env=env, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
        pods = json.loads(pk("-n", ns, "get", "pods", "-o", "json").stdout)["items"]
        assert install.returncode == 0, install.stderr + json.dumps(
            [p.get("status") for p in pods])[:3000]
        (op,) = pods
        st = op["status"]["containerStatuses"][0]
        assert st["ready"] is True  # its readiness probe (httpGet /healthz) passed
        assert st["containerID"].startswith("podman://k8s_operator_")
        ps = subprocess.run(["podman", "ps", "--format", "{{.Image}} {{.Names}}"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"localhost/voicetrack/operator:0.1.0 k8s_operator_{op['metadata']['name']}" in ps

        spk = Speaker(user_id=USER, f0=180.0, talks=[(300, 2500), (3500, 5600)])
        key = f"img-input/{ns}/{USER}.wav"
        object_store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
        doc = json.loads(session_yaml(ns, "imgs", [key] * 3))
        doc["spec"]["source"]["speakers"] = [{"userId": USER, "objectKey": key}]
        pk("apply", "-f", "-", input=json.dumps(doc))

        def session() -> dict[str, Any]:
            res = pk("-n", ns, "get", "recsess", "imgs", "-o", "json", check=False)
            return dict(json.loads(res.stdout)) if res.returncode == 0 else {}

        images: set[str] = set()  # of the pods seen running (transcoder pods come and go)
        rec_log: list[str] = []

        def transcoded() -> bool:
            for p in json.loads(pk("-n", ns, "get", "pods", "-o", "json").stdout)["items"]:
                images.update(c["image"] for c in p["spec"]["containers"]
                              if p.get("status", {}).get("phase") in ("Running", "Succeeded"))
            res = pk("-n", ns, "logs", "imgs-rec", "--tail", "40", check=False)
            if res.returncode == 0:
                rec_log[:] = [res.stdout]
            stt = session().get("status", {})
            chunks = json.loads(pk("-n", ns, "get", "recchunk", "-o", "json").stdout)["items"]
            return stt.get("recordedSeconds", 0) * 1000 >= AUDIO_MS and bool(chunks) and all(
                (c.get("status") or {}).get("transcodeStatus") == "done" for c in chunks)

        wait_for("the audio recorded and transcoded in the images", transcoded, 240, 0.3)
        chunks = json.loads(pk("-n", ns, "get", "recchunk", "-o", "json").stdout)["items"]
        print("recorder log:", *rec_log)
        assert sum(len(c["spec"].get("tracks") or []) for c in chunks) >= 1, rec_log
        assert {"voicetrack/recorder:0.1.0", "voicetrack/transcoder:0.1.0"} <= images
        meeting = session()["status"]["meetingId"]
        pk("-n", ns, "delete", "recsess", "imgs", "--wait=false")
        wait_for("promotion and clean-up", lambda: not session(), 240)
        finals = [k for k in object_store.list_keys("") if f"/{meeting}/final/" in k]
        assert any(k.endswith(f"/final/{USER}.mp3") for k in finals), finals
        assert any(k.endswith("/final/mix.mp3") for k in finals), finals
    finally:
        subprocess.run([helm, "uninstall", release, "--namespace", ns, "--wait", "--timeout",
                        "60s"], env=env, capture_output=True, check=False)  # fmt: skip
        pk("delete", "namespace", ns, "--wait=false", check=False)
