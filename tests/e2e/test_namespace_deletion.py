"""Deleting the namespace of a session short of promotion promotes it and lets the namespace
go. The namespace controller deletes the session's Jobs, chunks and Secrets and the API
server refuses every create in the namespace (403), so the promotion Job runs in the
operator's namespace (labelled with the session's uid, no owner) from the plan and the raw
chunks in S3, and is deleted once verified.

Before, the promote step tried to create its Job in the terminating namespace for ever:
the namespace stayed Terminating and nothing was promoted."""

from __future__ import annotations

import json

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_auto_promote import LIMIT_S, session
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import OPERATOR_NAMESPACE, Stack
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.resources import SessionSpec
from voicetrack_operator.jobs import LABEL_SESSION_UID

pytestmark = pytest.mark.e2e

GUILD = "300000000000000081"
LIVE_GUILD = "300000000000000082"
USERS = ["400000000000000071", "400000000000000072"]  # test_auto_promote.session's speakers
AUDIO_MS = 7_000
LONG_AUDIO_MS = 60_000  # still playing when the namespace is deleted
NAMESPACE_GONE_S = 150


def test_deleting_the_namespace_of_a_stopped_session_promotes_it(
        stack: Stack, e2e_namespace: str) -> None:
    ns = e2e_namespace
    keys = []
    for s in (Speaker(USERS[0], 170.0, talks=[(300, 3000)], markers=[]),
              Speaker(USERS[1], 260.0, talks=[(3500, 6500)], markers=[])):
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    # stopped by its limit and kept (deleteWhenStopped: false): its chunks transcoded, the
    # session short of promotion
    stack.kubectl("apply", "-f", "-", input=session(ns, "held", GUILD, keys,
                                                    deleteWhenStopped=False))

    def stopped_and_done() -> dict | None:
        status = (get(stack, ns, "recsess", "held") or {}).get("status") or {}
        chunks = status.get("chunks") or {}
        return status if status.get("state") == "Stopped" and chunks.get("total") \
            and chunks.get("done") == chunks["total"] else None

    status = wait_for("the session Stopped with its chunks done", stopped_and_done,
                      LIMIT_S + 50, every_s=1)
    meeting = status["meetingId"]
    uid = get(stack, ns, "recsess", "held")["metadata"]["uid"]  # type: ignore[index]

    stack.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for("the namespace gone", lambda: stack.kubectl(
        "get", "namespace", ns, check=False).returncode != 0, 150, every_s=2)

    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == sorted(
        [("speaker", u) for u in USERS] + [("mixed", None)])
    row = stack.db(lambda s: s.meeting_record(meeting))
    assert row.status == "completed" and row.ended_at is not None
    # the promotion Job in the operator's namespace was collected once verified
    left = json.loads(stack.kubectl("-n", OPERATOR_NAMESPACE, "get", "jobs", "-o", "json",
                                    "-l", f"{LABEL_SESSION_UID}={uid}").stdout)["items"]
    assert left == []


def test_deleting_the_namespace_of_a_recording_session_promotes_its_last_chunk(
        stack: Stack, e2e_namespace: str) -> None:
    """The stack's operator serves namespace patterns (`e2e-*`). Deleting the namespace of a
    session still recording: the namespace goes in bounded time and the recordings hold the
    chunk the recorder flushed at SIGTERM, whose RecordingChunk the terminating namespace
    refused (403).

    Before: kopf stopped watching the namespace once it showed deletion conditions none of
    them True, so the session's deletion was never seen and its finalizer kept the
    namespace Terminating for ever; and the last chunk's raw audio stayed in S3 unpromoted."""
    ns = e2e_namespace
    keys = []
    for s in (Speaker(USERS[0], 170.0, talks=[(300, LONG_AUDIO_MS - 500)], markers=[]),
              Speaker(USERS[1], 260.0, talks=[(500, LONG_AUDIO_MS - 500)], markers=[])):
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(LONG_AUDIO_MS)), "audio/wav")
        keys.append(key)
    stack.kubectl("apply", "-f", "-", input=session(ns, "live", LIVE_GUILD, keys,
                                                    maxDurationSeconds=300))

    def two_chunks() -> list[dict] | None:
        items = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout
                           )["items"]
        return items if len(items) >= 2 else None

    chunks = wait_for("two chunks recorded", two_chunks, 90, every_s=0.5)
    body = get(stack, ns, "recsess", "live") or {}
    assert (body.get("status") or {}).get("state") == "Recording"
    meeting = body["status"]["meetingId"]
    layout = MeetingLayout(SessionSpec.model_validate(body["spec"]).storage.prefix, LIVE_GUILD,
                           meeting)

    stack.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for("the namespace gone", lambda: stack.kubectl(
        "get", "namespace", ns, check=False).returncode != 0, NAMESPACE_GONE_S, every_s=2)

    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == sorted(
        [("speaker", u) for u in USERS] + [("mixed", None)])
    final = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    # more audio than the chunks whose objects were made before the deletion hold: the
    # chunk flushed at SIGTERM (its object refused) is in the recordings
    made = sum(int(c["spec"]["endMs"]) - int(c["spec"]["startMs"]) for c in chunks)
    assert final.recorded_ms > made, (final.recorded_ms, made)
    # every raw chunk was promoted, so every chunk folder was collected: none left behind
    assert stack.store.list_keys(layout.chunks_root) == []
    assert stack.store.list_keys(layout.outputs_root) == []
