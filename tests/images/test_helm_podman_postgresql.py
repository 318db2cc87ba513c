"""The chart's bundled PostgreSQL (`postgresql.enabled`) on the podman cluster: its
StatefulSet runs the postgresql image (non-root, read-only root) with its data on a claim;
the operator migrates and uses it; a `files` session records and promotes into it; the
PostgreSQL pod deleted, its next pod finds the same data; `helm upgrade` keeps the
generated password (`lookup`); `helm test` reaches the database with the read-only role's
URL. (The image's roles and passwords: tests/integration/test_postgresql_entrypoint.py.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import session_yaml, wav_bytes
from tests.images.test_helm_podman import CHART, Kubectl, wait_for
from tests.images.test_helm_podman_lifecycle import (
    _items,
    _json,
    helm_runner,
    helm_test,
    restricted_namespace,
    static_pv,
)
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.images

USER = "400000000000000041"
AUDIO_MS = 6_000
RELEASE = "vtpg"
FULLNAME = f"{RELEASE}-voicetrack"
PG = f"{FULLNAME}-postgresql"


def _ready(pk: Kubectl, ns: str, component: str, not_uid: str = "") -> dict[str, Any] | None:
    for pod in _items(pk, "-n", ns, "pods", "-l", f"app.kubernetes.io/component={component}"):
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])  # fmt: skip
        if ready and pod["metadata"]["uid"] != not_uid and not pod["metadata"].get(
                "deletionTimestamp"):  # fmt: skip
            return pod
    return None


def record_one_speaker(pk: Kubectl, store: ObjectStore, ns: str, name: str, f0: float,
                       user: str = USER, audio_ms: int = AUDIO_MS) -> str:
    """Record session `name` in `ns`: a `files` source of one speaker (`user`, a tone of
    `f0` Hz in two talks, `audio_ms` long, its WAV put in `store`), wait until it has
    recorded all of it, delete it and wait until it is promoted and gone. Returns its
    meeting id."""
    spk = Speaker(user_id=user, f0=f0, talks=[(300, 2500), (3500, 5600)])
    key = f"{name}-input/{ns}/{user}.wav"
    store.put_bytes(key, wav_bytes(spk.pcm(audio_ms)), "audio/wav")
    doc = json.loads(session_yaml(ns, name, [key] * 3))
    doc["spec"]["source"]["speakers"] = [{"userId": user, "objectKey": key}]
    pk("apply", "-f", "-", input=json.dumps(doc))

    def session() -> dict[str, Any]:
        return dict(_json(pk, "-n", ns, "get", "recsess", name) or {})

    wait_for("recorded", lambda: session().get("status", {}).get("recordedSeconds", 0)
             * 1000 >= audio_ms, 180)  # fmt: skip
    meeting = str(session()["status"]["meetingId"])
    pk("-n", ns, "delete", "recsess", name, "--wait=false")
    wait_for("promotion and clean-up", lambda: not session(), 240)
    return meeting


def test_bundled_postgresql_keeps_the_data_across_its_pod_and_an_upgrade(
    pcluster: LocalCluster, pk: Kubectl, s3_server: S3Settings, tmp_path: Path,
) -> None:  # fmt: skip
    store = ObjectStore(s3_server)
    s3 = store.settings
    ns = restricted_namespace(pk, "vt-pg")
    helm = helm_runner(pcluster, ns, 330)
    health, metrics, pg_port = free_port(), free_port(), free_port()
    pv = static_pv(pk, tmp_path / "pv", ns, f"data-{PG}-0")  # the volumeClaimTemplate's claim
    values = ("--set", f"s3.endpoint={s3.endpoint}", "--set", f"s3.accessKey={s3.access_key}",
              "--set", f"s3.secretKey={s3.secret_key}", "--set", f"s3.bucket={s3.bucket}",
              "--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
              "--set", "operator.listenAddress=$(POD_IP)",
              # the local node runs pods on the host network: no Service, no cluster DNS
              "--set", "postgresql.enabled=true", "--set", "postgresql.host=127.0.0.1",
              "--set", f"postgresql.port={pg_port}",
              "--set", "postgresql.listenAddress=127.0.0.1")  # fmt: skip
    try:
        helm("install", RELEASE, str(CHART), "--wait", "--timeout", "300s", *values)
        assert not _json(pk, "-n", ns, "get", "pvc", f"{FULLNAME}-data")  # no SQLite claim
        pg_pod = wait_for("PostgreSQL ready", lambda: _ready(pk, ns, "postgresql"), 60)
        (c,) = pg_pod["spec"]["containers"]
        assert c["image"] == "voicetrack/postgresql:0.1.0"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        secret = _json(pk, "-n", ns, "get", "secret", PG)
        password = base64.b64decode(secret["data"]["password"]).decode()
        assert len(password) == 32
        dsn = f"host=127.0.0.1 port={pg_port} user=voicetrack dbname=voicetrack " \
              f"password={password} connect_timeout=5"  # fmt: skip

        def sql(query: str, *params: Any) -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn) as conn:
                return conn.execute(query, params).fetchall()

        wait_for("the operator's heartbeat in PostgreSQL",
                 lambda: _try(lambda: sql("SELECT service_name FROM heartbeats")), 120)
        # voicetrack check connects with the read-only role's URL and finds the Alembic head
        assert helm_test(helm, RELEASE) == "Succeeded"

        meeting = record_one_speaker(pk, store, ns, "pgs", 200.0)
        recs = sql("SELECT user_id, object_key FROM recordings WHERE meeting_id = %s", meeting)
        assert {u for u, _ in recs} == {USER, None}, recs

        # The PostgreSQL pod deleted: the StatefulSet's next pod opens the same claim.
        pk("-n", ns, "delete", "pod", pg_pod["metadata"]["name"], "--wait=false")
        wait_for("the next PostgreSQL pod ready", lambda: _ready(
            pk, ns, "postgresql", not_uid=pg_pod["metadata"]["uid"]), 120)  # fmt: skip
        assert wait_for("the rows back", lambda: _try(lambda: sql(
            "SELECT user_id, object_key FROM recordings WHERE meeting_id = %s", meeting)), 60
        ) == recs  # fmt: skip

        # An upgrade renders the Secret again: the password is read back, not regenerated.
        helm("upgrade", RELEASE, str(CHART), "--wait", "--timeout", "300s", *values)
        again = _json(pk, "-n", ns, "get", "secret", PG)["data"]["password"]
        assert base64.b64decode(again).decode() == password
        assert sql("SELECT count(*) FROM recordings WHERE meeting_id = %s", meeting) == [
            (len(recs),)]
    finally:
        helm("uninstall", RELEASE, "--wait", "--timeout", "90s", check=False)
        pk("delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False)
        pk("delete", "pv", pv, "--wait=false", check=False)


def _try(fn: Any) -> Any:
    """fn()'s value, or None while the server is not answering yet."""
    try:
        return fn()
    except psycopg.Error:
        return None
