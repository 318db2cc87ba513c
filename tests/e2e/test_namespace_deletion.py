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
from voicetrack_operator.builders import LABEL_SESSION_UID

pytestmark = pytest.mark.e2e

GUILD = "300000000000000081"
USERS = ["400000000000000071", "400000000000000072"]  # test_auto_promote.session's speakers
AUDIO_MS = 7_000


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
