"""A real recorded session with `spec.notify.webhook`: the stack's operator records one
`files` speaker, the session is deleted and promoted, and the receiver (a real HTTP server
on a socket, `tests/webhook_receiver.py`) gets the signed `meeting.ended` payload whose
links download the final tracks with the payload's sha256, matching the `recordings` rows.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import get, session_yaml, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

USER = "400000000000000091"
AUDIO_MS = 4_000
KEY = ("whsec-" + secrets.token_hex(16)).encode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(KEY).start()
    yield r
    r.stop()


def test_a_promoted_session_calls_its_webhook(stack: Stack, e2e_namespace: str,
                                              receiver: Receiver) -> None:
    ns = e2e_namespace
    stack.kubectl("-n", ns, "create", "secret", "generic", "hook",
                  f"--from-literal=signing-key={KEY.decode()}")
    spk = Speaker(user_id=USER, f0=200.0, talks=[(200, 1800), (2200, 3700)])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
    doc = json.loads(session_yaml(ns, "hooked", [key] * 3))
    doc["spec"]["source"]["speakers"] = [{"userId": USER, "objectKey": key}]
    doc["spec"]["notify"] = {"webhook": {"url": receiver.url,
                                         "secretRef": {"name": "hook", "key": "signing-key"}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def transcoded() -> bool:
        st = (get(stack, ns, "recsess", "hooked") or {}).get("status", {})
        chunks = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
        return st.get("recordedSeconds", 0) * 1000 >= AUDIO_MS and bool(chunks["items"]) and all(
            (c.get("status") or {}).get("transcodeStatus") == "done" for c in chunks["items"])

    wait_for("the audio recorded and transcoded", transcoded, 60)
    meeting = (get(stack, ns, "recsess", "hooked") or {})["status"]["meetingId"]
    stack.kubectl("-n", ns, "delete", "recsess", "hooked", "--wait=false")
    wait_for("promotion and clean-up", lambda: get(stack, ns, "recsess", "hooked") is None, 90)
    wait_for("the webhook", receiver.requests, 30, every_s=0.2)

    [got] = receiver.requests()
    assert got.verified, got.error
    body = got.json
    assert (body["event"], body["meeting_id"], body["state"], body["failure_reason"]) == (
        "meeting.ended", meeting, "completed", None)
    assert (body["namespace"], body["session"], body["guild_id"]) == (
        ns, "hooked", doc["spec"]["guildId"])
    assert body["started_at"] <= body["ended_at"]
    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((t["kind"], t["user_id"]) for t in body["tracks"]) == sorted(
        (str(r.kind), r.user_id) for r in recs) == [("mixed", None), ("speaker", USER)]
    by_key = {r.object_key: r for r in recs}
    for track in body["tracks"]:
        row = by_key[track["key"]]
        assert (track["sha256"], track["bytes"], track["duration_ms"]) == (
            row.sha256, row.bytes, row.duration_in_ms)
        with urllib.request.urlopen(track["link"]["url"], timeout=10) as r:
            data = r.read()
        assert hashlib.sha256(data).hexdigest() == track["sha256"]
        assert len(data) == track["bytes"] and track["link"]["format"] == "mp3"

    # the worker records the attempt once the receiver has answered: a moment after the
    # request arrived (CI: read in between, the row was still pending with 0 attempts)
    def recorded() -> Any:
        [d] = stack.db(lambda s: s.get_webhook_deliveries_for_meeting(meeting))
        return d if d.state != "pending" else None

    delivery = wait_for("the delivery recorded", recorded, 10, every_s=0.2)
    assert (delivery.id, delivery.state, delivery.attempts) == (
        got.headers["X-Voicetrack-Delivery"], "delivered", 1)
    assert (delivery.secret_namespace, delivery.secret_name, delivery.secret_key) == (
        ns, "hook", "signing-key")
    assert KEY.decode() not in delivery.payload  # the key is never stored
    [attempt] = stack.db(lambda s: s.get_webhook_attempts(delivery.id))
    assert (attempt.status_code, attempt.outcome) == (200, "delivered")
    assert 'voicetrack_webhook_deliveries_total{outcome="delivered"}' in stack.operator.metrics()
