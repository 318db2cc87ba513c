"""Pure builders of the operator: manifests, status, promotion plan, child names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from voicetrack.chunkspec import ChunkSpec, ChunkTrack, Gap
from voicetrack.layout import MeetingLayout
from voicetrack.names import child_name, transcode_job_name
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import (
    PodSettings,
    SessionRef,
    build_recorder_pod,
    build_recorder_rbac,
    build_session_recorder_rbac,
    build_upload_grant_secret,
    recorder_service_account,
)
from voicetrack_operator.jobs import (
    build_detached_promote_job,
    build_promote_job,
    build_transcode_job,
)
from voicetrack_operator.plan import build_promotion_plan
from voicetrack_operator.status import ChunkView, Observation, build_status, status_changed

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OWNER = SessionRef(name="standup", namespace="team", uid="0b6c-uid")
SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})
SHA = "ab" * 32


def chunk(index: int, start: int, end: int, users: tuple[str, ...] = ("111111111111111111",),
          gap: Gap | None = None) -> ChunkSpec:
    return ChunkSpec(session_name="standup", meeting_id="m" * 16, guild_id=SPEC.guild_id,
                     index=index, start_ms=start, end_ms=end, gap=gap,
                     tracks=[ChunkTrack(user_id=u, key=MeetingLayout("k", SPEC.guild_id, "m" * 16
                                                         ).raw_key(index, u, "ogg-opus"),
                                        frames=10,
                                        first_ms=start, last_ms=end - 20, bytes=100,
                                        sha256=SHA) for u in users])


def test_recorder_pod_manifest() -> None:
    pod = build_recorder_pod(OWNER, SPEC, "m" * 16, 1_700_000_000_000, PodSettings())
    assert pod["metadata"]["name"] == "standup-rec"
    assert pod["metadata"]["ownerReferences"][0] == {
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "name": "standup", "uid": "0b6c-uid", "controller": True, "blockOwnerDeletion": True}
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert c["command"] == ["voicetrack-recorder", "run"]
    assert env["VOICETRACK_SESSION_STARTED_AT_MS"]["value"] == "1700000000000"
    # no S3 key: only the session's upload grant (its chunk prefix, write only)
    assert "VOICETRACK_S3_SECRET_KEY" not in env and "VOICETRACK_S3_ACCESS_KEY" not in env
    assert env["VOICETRACK_S3_UPLOAD_GRANT"]["valueFrom"]["secretKeyRef"] == {
        "name": "voicetrack-recorder.0b6c-uid.standup", "key": "uploadGrant"}
    files = SessionSpec.model_validate({**SPEC.to_api(), "source": {
        "type": "files", "speakers": [{"userId": "111111111111111111", "objectKey": "in.wav"}]}})
    files_env = {e["name"]: e for e in build_recorder_pod(
        OWNER, files, "m" * 16, 0, PodSettings())["spec"]["containers"][0]["env"]}
    assert files_env["VOICETRACK_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "voicetrack-s3", "key": "secretKey"}  # it reads its speakers' inputs
    assert "VOICETRACK_S3_UPLOAD_GRANT" in files_env
    assert env["VOICETRACK_DISCORD_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_transcode_job_fails_at_once_on_exit_2_and_passes_the_chunk() -> None:
    ch = chunk(7, 140_000, 150_000)
    job = build_transcode_job(OWNER, ch, SPEC, PodSettings(backoff_limit=4))
    assert job["metadata"]["name"] == "standup-tx-000007"
    assert job["spec"]["backoffLimit"] == 4
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "chunk"
    assert ChunkSpec.model_validate(json.loads(args[args.index("--chunk-json") + 1])) == ch
    assert args[args.index("--formats") + 1] == "mp3"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["metadata"]["labels"]["voicetrack.dev/chunk-index"] == "7"
    assert build_transcode_job(OWNER, ch, SPEC, PodSettings(backoff_limit=4)) == job  # pure


def test_a_disrupted_transcoder_pod_is_replaced_without_counting() -> None:
    """Fails before the DisruptionTarget rule: a pod evicted, preempted or drained off its
    node counted against `backoffLimit` like a failed transcode, so a node drain during a
    long session used up a chunk's retries. The exit-2 rule stays first (the transcoder's
    own verdict on its input stands, disrupted or not)."""
    job = build_transcode_job(OWNER, chunk(7, 140_000, 150_000), SPEC, PodSettings())
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore"]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [
        {"type": "DisruptionTarget", "status": "True"}]}


def test_promote_job_and_rbac() -> None:
    job = build_promote_job(OWNER, "recordings/g/m/promotion.json", SPEC, PodSettings())
    assert job["metadata"]["name"] == "standup-promote"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "promote", "--plan-key", "recordings/g/m/promotion.json"]
    assert [(m["kind"], m["metadata"]["name"]) for m in build_recorder_rbac("team")] == [
        ("ServiceAccount", "voicetrack-transcoder")]  # no namespace-wide recorder account


def test_detached_promote_job_runs_elsewhere_without_owner() -> None:
    """A session whose namespace is being deleted: its promotion Job in the operator's
    namespace, named and labelled by the session's uid, owned by nothing."""
    job = build_detached_promote_job(OWNER, "recordings/g/m/promotion.json", SPEC,
                                     PodSettings(), "voicetrack")
    meta = job["metadata"]
    assert (meta["namespace"], meta["name"]) == ("voicetrack", f"voicetrack-promote-{OWNER.uid}")
    assert "ownerReferences" not in meta
    for labels in (meta["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["voicetrack.dev/session-uid"] == OWNER.uid
        assert labels["voicetrack.dev/session-namespace"] == "team"
    same = build_promote_job(OWNER, "recordings/g/m/promotion.json", SPEC, PodSettings())
    assert job["spec"]["template"]["spec"] == same["spec"]["template"]["spec"]
    assert "ownerReferences" in same["metadata"]  # the original is left as it was


def test_each_session_has_its_own_recorder_identity() -> None:
    sa_name = f"voicetrack-recorder.{OWNER.uid}.{OWNER.name}"
    assert recorder_service_account(OWNER) == sa_name
    manifests = build_session_recorder_rbac(OWNER)
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ServiceAccount", sa_name), ("Role", sa_name), ("RoleBinding", sa_name)]
    for m in manifests:  # collected with the session
        assert m["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    rules = {r["resources"][0]: r for r in manifests[1]["rules"]}
    assert rules["recordingsessions"]["resourceNames"] == [OWNER.name]
    assert rules["recordingsessions/finalizers"]["resourceNames"] == [OWNER.name]
    assert "delete" not in rules["recordingchunks"]["verbs"]
    # its own upload grant Secret, to read renewed grants: get, by name, nothing else
    assert rules["secrets"] == {"apiGroups": [""], "resources": ["secrets"],
                                "resourceNames": [sa_name], "verbs": ["get"]}
    assert manifests[2]["subjects"] == [{"kind": "ServiceAccount", "name": sa_name,
                                         "namespace": OWNER.namespace}]
    pod = build_recorder_pod(OWNER, SPEC, "m" * 16, 0, PodSettings())
    assert pod["spec"]["serviceAccountName"] == sa_name
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["VOICETRACK_S3_UPLOAD_GRANT_SECRET"] == {
        "name": "VOICETRACK_S3_UPLOAD_GRANT_SECRET", "value": sa_name}
    secret = build_upload_grant_secret(OWNER, '{"grant": 1}')
    assert secret["metadata"]["name"] == sa_name and secret["stringData"] == {
        "uploadGrant": '{"grant": 1}'}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_child_names_are_deterministic_and_fit_a_label() -> None:
    long = "a" * 70
    name = transcode_job_name(long, 12)
    assert len(name) <= 63 and name.endswith("-tx-000012")
    assert name == transcode_job_name(long, 12)
    assert transcode_job_name("a" * 69 + "b", 12) != name
    assert child_name("short", "rec") == "short-rec"


def test_status_counts_conditions_and_coalesced_patch() -> None:
    chunks = [ChunkView(0, 0, 10_000, ["a"], "done", 10),
              ChunkView(1, 10_000, 20_000, ["a", "b"], "in_progress", 20),
              ChunkView(2, 20_000, 25_000, ["b"], "failed", 5)]
    obs = Observation(generation=3, paused=False, recorder_phase="Running", chunks=chunks)
    st = build_status(obs, None, "2026-01-01T00:00:00Z")
    assert st["state"] == "Recording"
    assert st["chunks"] == {"total": 3, "queued": 0, "inProgress": 1, "done": 1, "failed": 1}
    assert st["recordedSeconds"] == 25 and st["duration"] == "25s"
    assert st["speakers"] == ["a", "b"] and st["bytesBuffered"] == 20
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["TranscodesComplete"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    again = build_status(obs, st["conditions"], "2026-01-01T00:05:00Z")
    assert status_changed(st, again) == {}  # nothing moved: nothing to patch
    paused = build_status(Observation(generation=4, paused=True, recorder_phase="Running",
                                      chunks=chunks), st["conditions"], "2026-01-01T00:06:00Z")
    pc = {c["type"]: c for c in paused["conditions"]}
    assert paused["state"] == "Paused" and pc["Paused"]["status"] == "True"
    assert pc["Paused"]["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert pc["TranscodesComplete"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    refused = build_status(Observation(generation=1, paused=False, recorder_phase=None,
                                       refused="busy"), None, "t")
    assert refused["state"] == "Refused"
    assert {c["type"]: c for c in refused["conditions"]}["Ready"]["reason"] == "GuildBusy"


def test_promotion_plan_rebases_and_names_every_gap() -> None:
    chunks = [
        (chunk(0, 4_000, 14_000), "done"),
        (chunk(1, 14_000, 20_000), "done"),
        (chunk(2, 26_000, 36_000, gap=Gap(start_ms=20_000, end_ms=26_000, cause="paused")),
         "done"),
        (chunk(3, 36_000, 46_000, ("222222222222222222",)), "failed"),
        (chunk(4, 50_000, 60_000, gap=Gap(start_ms=46_000, end_ms=50_000,
                                          cause="recorder-restart")), "done"),
    ]
    plan = build_promotion_plan(SPEC, "m" * 16, chunks)
    assert plan is not None
    assert plan.session_end_ms == 56_000
    assert [(c.index, c.start_ms, c.end_ms) for c in plan.chunks] == [
        (0, 0, 10_000), (1, 10_000, 16_000), (2, 22_000, 32_000), (4, 46_000, 56_000)]
    assert [(g.start_ms, g.end_ms, g.cause) for g in plan.gaps] == [
        (16_000, 22_000, "paused"), (32_000, 42_000, "chunk-failed"),
        (42_000, 46_000, "recorder-restart")]
    assert plan.speakers == ["111111111111111111"]
    assert build_promotion_plan(SPEC, "m" * 16, [(chunk(0, 0, 20), "failed")]) is None
    overlapped = build_promotion_plan(SPEC, "m" * 16, [(chunk(0, 0, 10_000), "done"),
                                                       (chunk(1, 5_000, 15_000), "done")])
    assert overlapped is not None and [c.index for c in overlapped.chunks] == [0]


def test_crd_defaults_match_the_model() -> None:
    crd = yaml.safe_load((ROOT / "crds/recordingsessions.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]
    model = SessionSpec.model_validate({"guildId": "1" * 18, "channelId": "2" * 18})
    assert props["chunkSeconds"]["default"] == model.chunk_seconds
    assert (props["chunkSeconds"]["minimum"], props["chunkSeconds"]["maximum"]) == (5, 300)
    out = props["output"]["properties"]
    assert out["mp3Bitrate"]["default"] == model.output.mp3_bitrate
    assert out["tracks"]["default"] == model.output.tracks
    assert props["transcodeTimeoutSeconds"]["default"] == model.transcode_timeout_seconds
    assert props["storage"]["properties"]["rawFormat"]["default"] == model.storage.raw_format
    assert props["limits"]["properties"]["maxBytes"]["default"] == model.limits.max_bytes
