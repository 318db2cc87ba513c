"""The chart's bundled SeaweedFS (`seaweedfs.enabled`, with the bundled PostgreSQL: the
one-box install) on the podman cluster, in a namespace enforcing Pod Security `restricted`:
its StatefulSet runs the seaweedfs image (`weed mini`, non-root, read-only root) with its
data on a claim and S3 keys the chart generated; the operator, the recorder and transcoder
pods and `helm test` use it with no `s3.*` value given; a `files` session records and
promotes its final tracks into it; the SeaweedFS pod deleted, its next pod serves the same
objects; `helm upgrade` keeps the generated keys (`lookup`)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.images.test_helm_podman import CHART, Kubectl, wait_for
from tests.images.test_helm_podman_lifecycle import (
    _json,
    helm_runner,
    helm_test,
    restricted_namespace,
    static_pv,
)
from tests.images.test_helm_podman_postgresql import _ready, record_one_speaker
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.images

USER = "400000000000000051"
AUDIO_MS = 6_000
RELEASE = "vtsw"
FULLNAME = f"{RELEASE}-voicetrack"
SW = f"{FULLNAME}-seaweedfs"
PG = f"{FULLNAME}-postgresql"
SW_PORTS = ("s3", "s3Grpc", "master", "masterGrpc", "volume", "volumeGrpc", "filer",
            "filerGrpc", "admin", "adminGrpc")  # fmt: skip


def _free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (the node runs pods on the host network)."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def test_bundled_seaweedfs_keeps_the_tracks_across_its_pod_and_an_upgrade(
    pcluster: LocalCluster, pk: Kubectl, tmp_path: Path,
) -> None:  # fmt: skip
    ns = restricted_namespace(pk, "vt-sw")
    helm = helm_runner(pcluster, ns, 330)
    health, metrics, pg_port, *sw_ports = _free_ports(3 + len(SW_PORTS))
    ports = dict(zip(SW_PORTS, sw_ports, strict=True))
    pvs = [static_pv(pk, tmp_path / "sw", ns, f"data-{SW}-0"),  # volumeClaimTemplates' claims
           static_pv(pk, tmp_path / "pg", ns, f"data-{PG}-0")]  # fmt: skip
    values = ["--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
              "--set", "operator.listenAddress=$(POD_IP)",
              # the local node runs pods on the host network: no Service, no cluster DNS
              "--set", "seaweedfs.enabled=true", "--set", "seaweedfs.host=127.0.0.1",
              "--set", "seaweedfs.bindAddress=127.0.0.1",
              "--set", "postgresql.enabled=true", "--set", "postgresql.host=127.0.0.1",
              "--set", f"postgresql.port={pg_port}",
              "--set", "postgresql.listenAddress=127.0.0.1"]  # fmt: skip
    for name, port in ports.items():
        values += ["--set", f"seaweedfs.ports.{name}={port}"]
    try:
        helm("install", RELEASE, str(CHART), "--wait", "--timeout", "300s", *values)
        sw_pod = wait_for("SeaweedFS ready", lambda: _ready(pk, ns, "seaweedfs"), 60)
        (c,) = sw_pod["spec"]["containers"]
        assert c["image"] == "voicetrack/seaweedfs:0.1.0"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert sw_pod["spec"]["securityContext"]["runAsUser"] == 10001
        keys = {k: base64.b64decode(v).decode()
                for k, v in _json(pk, "-n", ns, "get", "secret", "voicetrack-s3")["data"].items()}
        assert len(keys["secretKey"]) == 40, keys.keys()
        s3 = S3Settings(endpoint=f"http://127.0.0.1:{ports['s3']}", access_key=keys["accessKey"],
                        secret_key=keys["secretKey"], bucket="voicetrack")  # fmt: skip
        store = ObjectStore(s3)
        # The bucket exists (made on start) and the keys are enforced.
        wait_for("S3 answering", lambda: _s3(lambda: store.list_keys("") is not None), 60)
        intruder = ObjectStore(S3Settings(endpoint=s3.endpoint, access_key=keys["accessKey"],
                                          secret_key="wrong", bucket="voicetrack"))  # fmt: skip
        with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccess"):
            intruder.list_keys("")
        operator = _json(pk, "-n", ns, "get", "deployment", FULLNAME)
        (oc,) = operator["spec"]["template"]["spec"]["containers"]
        env_of = {e["name"]: e.get("value") for e in oc["env"]}
        assert env_of["VOICETRACK_S3_ENDPOINT"] == s3.endpoint
        assert env_of["VOICETRACK_POD_S3_ENDPOINT"] == s3.endpoint
        # voicetrack check lists the bucket with the chart's keys at the SeaweedFS endpoint
        assert helm_test(helm, RELEASE) == "Succeeded"

        meeting = record_one_speaker(pk, store, ns, "sws", 190.0, USER, AUDIO_MS)
        password = base64.b64decode(
            _json(pk, "-n", ns, "get", "secret", PG)["data"]["password"]).decode()
        dsn = f"host=127.0.0.1 port={pg_port} user=voicetrack dbname=voicetrack " \
              f"password={password} connect_timeout=5"  # fmt: skip
        with psycopg.connect(dsn) as conn:
            recs = conn.execute("SELECT user_id, object_key FROM recordings WHERE meeting_id = %s",
                                (meeting,)).fetchall()  # fmt: skip
        assert {u for u, _ in recs} == {USER, None}, recs
        tracks = {k: store.digest(k) for _, k in recs}
        assert all(size > 0 for size, _ in tracks.values()), tracks

        # The SeaweedFS pod deleted: the StatefulSet's next pod opens the same claim.
        pk("-n", ns, "delete", "pod", sw_pod["metadata"]["name"], "--wait=false")
        wait_for("the next SeaweedFS pod ready", lambda: _ready(
            pk, ns, "seaweedfs", not_uid=sw_pod["metadata"]["uid"]), 120)  # fmt: skip
        assert wait_for("the tracks back", lambda: _s3(
            lambda: {k: store.digest(k) for k in tracks}), 60) == tracks  # fmt: skip

        # An upgrade renders the Secret again: the keys are read back, not regenerated.
        helm("upgrade", RELEASE, str(CHART), "--wait", "--timeout", "300s", *values)
        again = _json(pk, "-n", ns, "get", "secret", "voicetrack-s3")["data"]
        assert {k: base64.b64decode(v).decode() for k, v in again.items()} == keys
        assert {k: store.digest(k) for k in tracks} == tracks
        assert helm_test(helm, RELEASE) == "Succeeded"
    finally:
        helm("uninstall", RELEASE, "--wait", "--timeout", "90s", check=False)
        pk("delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False)
        for pv in pvs:
            pk("delete", "pv", pv, "--wait=false", check=False)


def _s3(fn: Any) -> Any:
    """fn()'s value, or None while S3 is not answering (refused, 5xx, no volume yet)."""
    try:
        return fn()
    except Exception:  # botocore's connection and client errors alike
        return None
