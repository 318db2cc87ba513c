"""Faults seen by the real operator on the local stack (issue 11): a recorder that cannot
record, a meeting id reused by a second session.

Each test polls the session's status as a user would (`kubectl get`), never sleeps a
fixed time, and checks what ends in SQL and S3.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.audio_helpers import Speaker, decode_file, find_click, session_to_output_ms
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.errors import NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest

pytestmark = pytest.mark.e2e

USER = "400000000000000031"


def snowflake() -> str:
    """A random 18-digit id: each test has its own guild, so no session is busy."""
    return str(10**17 + secrets.randbelow(8 * 10**17))


def apply_session(stack: Stack, ns: str, name: str, **spec: Any) -> None:
    doc = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"guildId": snowflake(), "channelId": snowflake(), "chunkSeconds": 5,
                    **spec}}
    res = stack.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert res.returncode == 0, res.stderr


def status_of(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return dict((get(stack, ns, "recsess", name) or {}).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def meeting_status(stack: Stack, meeting_id: str) -> str | None:
    async def go(svc: Any) -> str | None:
        try:
            return str((await svc.get_meeting(meeting_id)).status)
        except NotFoundError:
            return None
    return stack.db(go)


@pytest.mark.parametrize("fault", ["missing-token-secret", "bad-s3-secret"])
def test_a_recorder_that_cannot_record_fails_the_session_and_deletion_completes(
        fault: str, stack: Stack, e2e_namespace: str) -> None:
    """Item 6. A discord session in a namespace without the bot token Secret (the
    container cannot start: CreateContainerConfigError), and a files session whose S3
    Secret holds a wrong key (S3 refuses it: the recorder exits 2 with its reason):
    within 60 s the session is `Failed` with the recorder's reason on Ready and Recording,
    the recorder is stopped, and deleting the session completes with 0 recordings and the
    meeting `failed`.
    (Before: the session showed Pending/Recording for ever while the pod looped, and the
    meeting ended `cancelled`.)"""
    ns, name = e2e_namespace, f"broken-{fault.split('-')[1]}"
    spec: dict[str, Any] = {
        "missing-token-secret": {"source": {"type": "discord"}},
        "bad-s3-secret": {"source": {
            "type": "files", "speakers": [{"userId": USER, "objectKey": "none.wav"}]}},
    }[fault]
    expected = {"missing-token-secret": 'secret "voicetrack-discord" not found',
                "bad-s3-secret": "storage: "}[fault]
    if fault == "bad-s3-secret":
        stack.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "voicetrack-s3", "namespace": ns},
            "stringData": {"accessKey": stack.s3.access_key, "secretKey": "not-the-secret"}}))
    began = time.monotonic()
    apply_session(stack, ns, name, **spec)

    st = wait_for("the session Failed", lambda: (lambda s: s if s.get("state") == "Failed"
                                                  else None)(status_of(stack, ns, name)), 60)
    assert time.monotonic() - began < 60
    for kind in ("Ready", "Recording"):
        cond = condition(st, kind)
        assert cond["status"] == "False" and cond["reason"] == "RecorderFailed", cond
        assert expected in cond["message"], cond
    wait_for("the recorder pod stopped", lambda: get(stack, ns, "pod", f"{name}-rec") is None,
             45)
    time.sleep(3)  # a later observation keeps it Failed (the pod is gone on purpose)
    assert status_of(stack, ns, name)["state"] == "Failed"
    meeting = st["meetingId"]

    stack.kubectl("-n", ns, "delete", "recsess", name, "--wait=false")
    wait_for("the session deleted", lambda: get(stack, ns, "recsess", name) is None, 60)
    assert meeting_status(stack, meeting) == "failed"
    assert stack.db(lambda svc: svc.get_recordings_for_meeting(meeting)) == []


def final_objects(stack: Stack, prefix: str) -> dict[str, int]:
    return {o.object_name: int(o.size or 0)
            for o in stack.store.client.list_objects(stack.s3.bucket, prefix, recursive=True)}


def test_a_meeting_id_belongs_to_one_session(stack: Stack, e2e_namespace: str) -> None:
    """Item 2. A meeting id is owned by the session that first used it: a second session
    asking for it, while the first records (another guild) or after the first was promoted
    and deleted (same guild and channel), is Refused with reason MeetingIdInUse, starts no
    recorder, and its deletion leaves the first one's meeting row, recordings and final
    objects as they were. (Before: the live case was a permanent error with an empty
    status; the later one recorded into the first one's meeting, skipped its own promotion
    because recordings existed, and collected its own chunks: its audio was lost.)"""
    ns = e2e_namespace
    meeting = secrets.token_hex(8)
    spk = Speaker(user_id=USER, f0=190.0, talks=[(200, 2500)], markers=[3000])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(6000)), "audio/wav")
    files = {"type": "files", "speakers": [{"userId": USER, "objectKey": key}]}
    guild, channel = snowflake(), snowflake()
    apply_session(stack, ns, "first", guildId=guild, channelId=channel, meetingId=meeting,
                  source=files)
    wait_for("the first session started", lambda: status_of(stack, ns, "first").get(
        "recorderPod"), 30)

    def refused(name: str) -> dict[str, Any] | None:
        st = status_of(stack, ns, name)
        return st if st.get("state") == "Refused" else None

    apply_session(stack, ns, "rival", meetingId=meeting, source=files)  # another guild
    st = wait_for("the rival refused", lambda: refused("rival"), 30)
    ready = condition(st, "Ready")
    assert ready["reason"] == "MeetingIdInUse" and f"{ns}/first" in ready["message"], ready
    assert get(stack, ns, "pod", "rival-rec") is None

    wait_for("the first session's audio transcoded", lambda: status_of(stack, ns, "first").get(
        "chunks", {}).get("done", 0) >= 1, 90)
    stack.kubectl("-n", ns, "delete", "recsess", "first", "rival", "--wait=false")
    wait_for("the first session promoted and gone",
             lambda: get(stack, ns, "recsess", "first") is None, 120)
    recordings = stack.db(lambda svc: svc.get_recordings_for_meeting(meeting))
    assert recordings
    row = stack.db(lambda svc: svc.get_meeting(meeting))
    layout = MeetingLayout("recordings", guild, meeting)
    finals = final_objects(stack, layout.root + "/")
    assert finals and all("/final/" in k for k in finals), finals

    apply_session(stack, ns, "second", guildId=guild, channelId=channel, meetingId=meeting,
                  source=files)
    st = wait_for("the second session refused", lambda: refused("second"), 30)
    ready = condition(st, "Ready")
    assert ready["reason"] == "MeetingIdInUse" and meeting in ready["message"], ready
    assert get(stack, ns, "pod", "second-rec") is None
    stack.kubectl("-n", ns, "delete", "recsess", "second", "--wait=false")
    wait_for("the second session gone", lambda: get(stack, ns, "recsess", "second") is None,
             60)

    again = stack.db(lambda svc: svc.get_meeting(meeting))
    assert (again.status, again.ended_at, again.session_uid) == (
        row.status, row.ended_at, row.session_uid) and row.status == "completed"
    assert [r.id for r in stack.db(lambda svc: svc.get_recordings_for_meeting(meeting))] == [
        r.id for r in recordings]
    assert final_objects(stack, layout.root + "/") == finals


def crd_age_s(stack: Stack) -> float:
    crd = json.loads(stack.kubectl("get", "crd", "recordingchunks.voicetrack.dev", "-o",
                                   "json").stdout)
    created = datetime.fromisoformat(crd["metadata"]["creationTimestamp"].replace("Z",
                                                                                 "+00:00"))
    return (datetime.now(UTC) - created).total_seconds()


@pytest.mark.parametrize("how", ["chunk-deleted-by-hand", "cascade-foreground"])
def test_chunks_whose_objects_are_gone_are_still_promoted(how: str, stack: Stack,
                                                          e2e_namespace: str) -> None:
    """Item 1. The RecordingChunk objects are not the only index of the raw audio: one
    chunk deleted by hand, or every chunk deleted by the garbage collector while the
    finalizer runs (`--cascade=foreground`), is rebuilt from the `chunk.json` the operator
    stored, and promoted: the final track keeps its timeline (no gap, every click marker
    where it was said) and no chunk folder is collected unpromoted. (Before: the missing
    window became a made-up `recorder-restart` gap of silence, or no recording at all, and
    the raw audio was deleted. With the cascade, the last chunk, flushed at SIGTERM after
    the GC had deleted the recorder's ServiceAccount, was given up as a lost window:
    `test_recorder_identity_gone` pins that down without the race.)"""
    ns, name = e2e_namespace, "indexed"
    audio_ms = 16_000
    talks = [(500, 2500), (8000, 10_000)]
    spk = Speaker(user_id=USER, f0=170.0, talks=talks,
                  markers=[t for t in range(300, audio_ms - 300, 700)
                           if all(not (a - 60 <= t <= b + 60) for a, b in talks)])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(audio_ms)), "audio/wav")
    guild = snowflake()
    apply_session(stack, ns, name, guildId=guild, source={
        "type": "files", "speakers": [{"userId": USER, "objectKey": key}]})

    def chunks() -> list[dict[str, Any]]:
        return list(json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json")
                               .stdout)["items"])

    wait_for("the audio recorded and transcoded", lambda: sum(
        (c.get("status") or {}).get("transcodeStatus") == "done"
        for c in chunks()) >= 4, 120, every_s=1)
    meeting = status_of(stack, ns, name)["meetingId"]
    layout = MeetingLayout("recordings", guild, meeting)
    if how == "chunk-deleted-by-hand":
        stack.kubectl("-n", ns, "delete", "recchunk", f"{name}-chunk-000001")
        stack.kubectl("-n", ns, "delete", "recsess", name, "--wait=false")
    else:  # the garbage collector must know the CRD (its discovery re-syncs every 30 s)
        wait_for("the GC to know RecordingChunks", lambda: crd_age_s(stack) > 35, 40)
        stack.kubectl("-n", ns, "delete", "recsess", name, "--cascade=foreground",
                      "--wait=false")
        wait_for("the GC to delete the chunks", lambda: not chunks(), 60)
    wait_for("promotion", lambda: get(stack, ns, "recsess", name) is None, 150, every_s=1)

    manifest = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    assert manifest.gaps == [], manifest.gaps
    assert manifest.duration_ms >= audio_ms - 1000, manifest.duration_ms
    track = decode_file(stack.store.get_bytes(
        next(t.key for t in manifest.tracks if t.user_id == USER and t.format == "mp3")))
    checked = 0
    for at in spk.markers:
        if at < manifest.duration_ms - 100:
            expected = session_to_output_ms(at, [])
            assert abs(find_click(track, expected) - expected) <= 20, (at, expected)
            checked += 1
    assert checked >= 10, checked
    assert stack.db(lambda svc: svc.get_recordings_for_meeting(meeting))
    assert final_objects(stack, layout.chunks_root) == {}  # all promoted, then collected
    assert final_objects(stack, layout.outputs_root) == {}
