"""A recording outlives its upload grants (issue 15, "Grants under IRSA are not renewed"):
with VOICETRACK_UPLOAD_GRANT_SECONDS at its minimum (60 s), a files-source session records
past two grant expiries, the operator renews the grant Secret before each, the recorder
pod reads each renewed grant through the API as its own ServiceAccount, and every chunk is
uploaded and transcoded: none failed, none lost (no gap between chunks).

Before the renewal the variable did not exist and a grant was minted once; with 60 s grants
the recorder would have lost every chunk after the first minute. Real everything: the
operator as its own process, upstream kube-apiserver/controller-manager/scheduler with the
node agent running the recorder and transcoder pods, SeaweedFS, PostgreSQL, ffmpeg.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_live_audio import LiveStack
from tests.e2e.test_main_job import wait_for, wav_bytes
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.uploadgrant import UploadGrant
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.stack import OperatorProcess, install_crds, prepare_namespace

pytestmark = pytest.mark.e2e

GRANT_S = 60
CHUNK_S = 10
GUILD = "300000000000000077"
USER = "400000000000000077"
RECORD_MS = 130_000
"""Audio long enough for the whole recording: every chunk holds a track (an upload)."""


@pytest.fixture(scope="module")
def grant_stack(cluster: Any, s3_server: S3Settings, postgres_server: PostgresServer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """An operator of its own with 60 s upload grants, watching `grant-*` namespaces only
    (the shared e2e operator watches `e2e-*`)."""
    install_crds(cluster.kubeconfig)
    db_url = postgres_server.create_database(f"vt_grant_{secrets.token_hex(4)}")
    log = tmp_path_factory.mktemp("grant-operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, s3_server, db_url, log,
                         extra_env={"VOICETRACK_LOG_LEVEL": "INFO",
                                    "VOICETRACK_NAMESPACES": "grant-*",
                                    "VOICETRACK_LIVE_INTERVAL_SECONDS": "0",
                                    "VOICETRACK_UPLOAD_GRANT_SECONDS": str(GRANT_S)})
    op.start()
    try:
        store = ObjectStore(s3_server)
        store.ensure_bucket()
        yield LiveStack(cluster.kubeconfig, s3_server, store, db_url)
    finally:
        op.stop()
        print(f"operator log: {log}\n{op.tail(40)}")


@pytest.fixture
def grant_namespace(grant_stack: LiveStack) -> Iterator[str]:
    ns = f"grant-{secrets.token_hex(3)}"
    prepare_namespace(grant_stack.kubeconfig, ns, grant_stack.s3)
    yield ns
    grant_stack.kubectl("-n", ns, "delete", "recsess", "--all", "--timeout=180s", check=False)
    grant_stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def grant_secret(stack: LiveStack, ns: str, session: str) -> tuple[str, UploadGrant] | None:
    """(resourceVersion, grant) of the session's grant Secret, None before it exists."""
    res = stack.kubectl("-n", ns, "get", "secret", "-l",
                        f"voicetrack.dev/session={session},voicetrack.dev/component=recorder",
                        "-o", "json", check=False)
    items = json.loads(res.stdout)["items"] if res.returncode == 0 else []
    if not items:
        return None
    secret = items[0]
    grant = UploadGrant.model_validate_json(base64.b64decode(secret["data"]["uploadGrant"]))
    return secret["metadata"]["resourceVersion"], grant


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def lifetime(grant: UploadGrant) -> timedelta:
    """From its signing (`x-amz-date`, SigV4) to its `expiresAt`."""
    signed = datetime.strptime(grant.fields["x-amz-date"], "%Y%m%dT%H%M%SZ")
    return grant.expires_at - signed.replace(tzinfo=UTC)


def test_a_session_records_past_two_grant_expiries_and_loses_nothing(
        grant_stack: LiveStack, grant_namespace: str) -> None:
    stack, ns = grant_stack, grant_namespace
    speaker = Speaker(user_id=USER, f0=180.0, talks=[(0, RECORD_MS)])
    key = f"grant-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(speaker.pcm(RECORD_MS), 1), "audio/wav")
    doc = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
           "metadata": {"name": "long", "namespace": ns},
           "spec": {"guildId": GUILD, "channelId": "300000000000000078",
                    "chunkSeconds": CHUNK_S, "source": {"type": "files", "speakers": [
                        {"userId": USER, "objectKey": key}]}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    first = wait_for("the grant Secret", lambda: grant_secret(stack, ns, "long"), 60)
    assert abs(lifetime(first[1]) - timedelta(seconds=GRANT_S)) <= timedelta(seconds=2), \
        f"the grant lasts {lifetime(first[1])}, not {GRANT_S} s"

    # Record until two grants have expired, watching the Secret and the chunks.
    seen: dict[str, UploadGrant] = {first[0]: first[1]}

    def past_two_expiries() -> bool:
        now = grant_secret(stack, ns, "long")
        if now is not None:
            seen.setdefault(*now)
        expired = [g for g in seen.values() if g.expires_at < datetime.now(UTC)]
        st = (stack.get(ns, "recsess", "long") or {}).get("status") or {}
        assert st.get("state") != "Failed", st
        return len(expired) >= 2 and st.get("recordedSeconds", 0) * 1000 >= \
            (GRANT_S + 45) * 1000

    wait_for("two grant expiries while recording", past_two_expiries, 200, every_s=1)
    expiries = sorted(g.expires_at for g in seen.values())
    t_second_expiry = expiries[1]
    # Chunks made after the second expiry were written under a grant read from the Secret.
    wait_for("a chunk after the second expiry", lambda: any(
        parse_time(c["metadata"]["creationTimestamp"]) > t_second_expiry + timedelta(
            seconds=1) for c in chunks(stack, ns)), 3 * CHUNK_S + 10)
    stack.kubectl("-n", ns, "patch", "recsess", "long", "--type=merge",
                  "-p", '{"spec":{"paused":true}}')

    def all_done() -> dict[str, Any] | None:
        st = (stack.get(ns, "recsess", "long") or {}).get("status") or {}
        counts = st.get("chunks") or {}
        return st if st.get("state") == "Paused" and counts.get("total") and \
            counts.get("done") == counts.get("total") else None

    status = wait_for("every chunk transcoded", all_done, 120)
    items = chunks(stack, ns)
    indices = [int(c["spec"]["index"]) for c in items]
    windows = [(c["spec"]["startMs"], c["spec"]["endMs"]) for c in items]
    print(f"grants seen: {len(seen)} (resourceVersions {sorted(seen)}); lifetimes "
          f"{[lifetime(g).total_seconds() for g in seen.values()]} s; "
          f"chunks {len(items)}: {status['chunks']}")
    assert status["chunks"]["failed"] == 0
    assert indices == list(range(len(items)))  # none missing
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert start == end, windows  # no gap: nothing lost between chunks
    assert all(not c["spec"].get("gap") for c in items), [c["spec"].get("gap") for c in items]
    with_tracks = [c for c in items if c["spec"].get("tracks")]
    assert len(with_tracks) == len(items)  # every chunk was an upload
    assert len(seen) >= 3  # the Secret was renewed at least twice (resourceVersion moved)
    created = max(parse_time(c["metadata"]["creationTimestamp"]) for c in with_tracks)
    assert created > t_second_expiry

    stack.kubectl("-n", ns, "delete", "recsess", "long", "--wait=false")
    wait_for("the session promoted and gone", lambda: stack.get(ns, "recsess", "long")
             is None, 180, every_s=1)


def chunks(stack: LiveStack, ns: str) -> list[dict[str, Any]]:
    res = stack.kubectl("-n", ns, "get", "recchunk", "-o", "json")
    return sorted(json.loads(res.stdout)["items"], key=lambda c: int(c["spec"]["index"]))
