"""A session whose recorder ends by itself is promoted by itself (issue 12): on the local
control plane with the operator running, a `files` session reaches its
`limits.maxDurationSeconds`, its recorder pod Succeeds, the session is Stopped, and the
operator deletes it, which promotes it: `recordings` rows, the meeting `completed`, the
object gone, an `AutoStopped` event naming the limit. A session beside it with
`limits.deleteWhenStopped: false` stays Stopped. The deletion's uid precondition keeps a
namesake: a DELETE with another uid leaves the session alone.

Before, both stayed Stopped until someone deleted them (the audio never promoted, the
bot's fixed-name session blocking its guild)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.kubeclient import load_api_client
from voicetrack_operator.adapters.kube import KubeAdapter

pytestmark = pytest.mark.e2e

GUILD, KEPT_GUILD = "300000000000000071", "300000000000000072"
CHANNEL = "300000000000000073"
USERS = ["400000000000000071", "400000000000000072"]
AUDIO_MS = 7_000
LIMIT_S = 10  # the CRD's smallest maxDurationSeconds


def session(ns: str, name: str, guild: str, keys: list[str], **limits: Any) -> str:
    return json.dumps({
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"guildId": guild, "channelId": CHANNEL, "chunkSeconds": 5,
                 "limits": {"maxDurationSeconds": LIMIT_S, **limits},
                 "source": {"type": "files", "speakers": [
                     {"userId": u, "objectKey": k} for u, k in zip(USERS, keys, strict=True)]}}})


def delete_with_uid(stack: Stack, ns: str, name: str, uid: str) -> bool:
    """`KubeAdapter.delete_session` on the real API server."""
    async def go() -> bool:
        kube = KubeAdapter(load_api_client(str(stack.kubeconfig)), threads=1)
        try:
            return await kube.delete_session(ns, name, uid)
        finally:
            kube.api.close()
            kube.executor.shutdown()

    return asyncio.run(go())


def state(stack: Stack, ns: str, name: str) -> str | None:
    return ((get(stack, ns, "recsess", name) or {}).get("status") or {}).get("state")


def test_a_session_stopped_by_its_limit_is_deleted_and_promoted(stack: Stack,
                                                                 e2e_namespace: str) -> None:
    ns = e2e_namespace
    speakers = [Speaker(USERS[0], 170.0, talks=[(300, 3000)], markers=[]),
                Speaker(USERS[1], 260.0, talks=[(3500, 6500)], markers=[])]
    keys = []
    for s in speakers:
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    stack.kubectl("apply", "-f", "-", input=session(ns, "auto", GUILD, keys))
    stack.kubectl("apply", "-f", "-", input=session(ns, "kept", KEPT_GUILD, keys,
                                                    deleteWhenStopped=False))
    obj = wait_for("the session started", lambda: (lambda o: o if o and (
        o.get("status") or {}).get("meetingId") else None)(get(stack, ns, "recsess", "auto")),
        30)
    meeting = obj["status"]["meetingId"]
    assert obj["spec"]["limits"]["deleteWhenStopped"] is True  # the CRD's default

    # the uid precondition: a DELETE meant for another session of this name does nothing
    assert not delete_with_uid(stack, ns, "auto", "00000000-0000-4000-8000-000000000000")
    still = get(stack, ns, "recsess", "auto")
    assert still is not None and "deletionTimestamp" not in still["metadata"]

    wait_for("the session promoted and gone", lambda: get(stack, ns, "recsess", "auto") is None,
             75, every_s=1)
    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == sorted(
        [("speaker", u) for u in USERS] + [("mixed", None)])
    row = stack.db(lambda s: s.meeting_record(meeting))
    assert (row.status, row.failure_reason, row.session_name) == ("completed", None, "auto")
    assert row.ended_at is not None and row.tracks == len(recs)

    events = wait_for("the AutoStopped event", lambda: json.loads(stack.kubectl(
        "-n", ns, "get", "events", "-o", "json",
        "--field-selector", "involvedObject.name=auto,reason=AutoStopped").stdout)["items"], 20)
    assert "limit: maxDurationSeconds (10 s) reached" in events[0]["message"]

    # opted out: left Stopped, not deleted, nothing promoted
    wait_for("the opted-out session Stopped", lambda: state(stack, ns, "kept") == "Stopped", 20)
    kept = get(stack, ns, "recsess", "kept")
    assert kept is not None and "deletionTimestamp" not in kept["metadata"]
    assert "autoStop" not in kept["status"]
    assert "maxDurationSeconds" in next(c["message"] for c in kept["status"]["conditions"]
                                        if c["type"] == "Recording")
    assert stack.db(lambda s: s.get_recordings_for_meeting(kept["status"]["meetingId"])) == []
