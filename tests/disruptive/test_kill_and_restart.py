"""Kill real processes at chosen points and check that nothing acknowledged is lost.

(Each test also needs the `stack` fixture's PostgreSQL, SeaweedFS and local cluster.)

The recorder is SIGKILLed mid-session: the node agent restarts it (restartPolicy
OnFailure), it continues at the next chunk index on the same timeline, and the interval it
missed is a `recorder-restart` gap — silence, never a time shift. The operator is SIGKILLed
while chunks keep coming: once restarted it picks them up (kopf resume) and every chunk
still ends `done`.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker, decode_file, find_click, session_to_output_ms
from tests.e2e.test_main_job import get, session_yaml, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack_local.postgres import PostgresServer

pytestmark = pytest.mark.disruptive

GUILD = "300000000000000001"
USER = "400000000000000011"
AUDIO_MS = 16_000


def recorder_pids(ns: str, session: str) -> list[int]:
    """PIDs of the recorder processes of `ns/session` (found by their pod environment)."""
    want = {f"VOICETRACK_NAMESPACE={ns}".encode(), f"VOICETRACK_SESSION_NAME={session}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if want <= env and b"voicetrack-recorder" in cmd:
            pids.append(int(entry.name))
    return pids


def test_recorder_and_operator_killed_midway_lose_nothing(stack: Stack,
                                                          e2e_namespace: str) -> None:
    ns = e2e_namespace
    talks = [(500, 2500), (8000, 10_000)]
    spk = Speaker(user_id=USER, f0=170.0, talks=talks,
                  markers=[t for t in range(300, AUDIO_MS - 300, 700)
                           if all(not (a - 60 <= t <= b + 60) for a, b in talks)])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(AUDIO_MS)), "audio/wav")
    doc = json.loads(session_yaml(ns, "crashy", [key, key, key]))
    doc["spec"]["source"]["speakers"] = doc["spec"]["source"]["speakers"][:1]
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def chunk_total() -> int:
        st = (get(stack, ns, "recsess", "crashy") or {}).get("status", {})
        return int(st.get("chunks", {}).get("total", 0))

    wait_for("the first chunk", lambda: chunk_total() >= 1, 60)
    pids = wait_for("the recorder process", lambda: recorder_pids(ns, "crashy"), 10)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    pod = wait_for("the recorder restarted", lambda: (lambda p: p if p and any(
        c.get("restartCount", 0) >= 1 and "running" in c.get("state", {})
        for c in p.get("status", {}).get("containerStatuses", [])) else None)(
        get(stack, ns, "pod", "crashy-rec")), 30)
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] != 0

    stack.operator.process.kill()  # type: ignore[union-attr]
    stack.operator.process.wait()  # type: ignore[union-attr]
    before = chunk_total()
    wait_for("a chunk made while the operator is down", lambda: len(json.loads(stack.kubectl(
        "-n", ns, "get", "recchunk", "-o", "json").stdout)["items"]) > before, 30)
    stack.operator.start()

    def all_done() -> bool:
        items = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
        st = (get(stack, ns, "recsess", "crashy") or {}).get("status", {})
        return st.get("recordedSeconds", 0) * 1000 >= AUDIO_MS - 2000 and all(
            (i.get("status") or {}).get("transcodeStatus") == "done" for i in items["items"])

    wait_for("every chunk done", all_done, 120, every_s=1)
    chunks = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
    gaps = [i["spec"]["gap"] for i in chunks["items"] if i["spec"].get("gap")]
    assert [g["cause"] for g in gaps] == ["recorder-restart"], gaps
    meeting = get(stack, ns, "recsess", "crashy")["status"]["meetingId"]  # type: ignore[index]

    stack.kubectl("-n", ns, "delete", "recsess", "crashy", "--wait=false")
    wait_for("promotion", lambda: get(stack, ns, "recsess", "crashy") is None, 150, every_s=1)
    layout = MeetingLayout("recordings", GUILD, meeting)
    manifest = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    restart = [g for g in manifest.gaps if g.cause == "recorder-restart"]
    assert len(restart) == 1
    track = decode_file(stack.store.get_bytes(
        next(t.key for t in manifest.tracks if t.user_id == USER and t.format == "mp3")))
    gap = restart[0]
    checked = silent = 0
    for at in spk.markers:
        if at >= manifest.duration_ms - 100:
            continue
        if gap.start_ms + 100 <= at <= gap.end_ms - 100:  # missed: silence, not shifted
            window = track[(at - 50) * 48:(at + 50) * 48]
            assert int(abs(window.astype(int)).max()) < 200, at
            silent += 1
        elif not gap.start_ms - 200 <= at <= gap.end_ms + 200:
            expected = session_to_output_ms(at, [])
            assert abs(find_click(track, expected) - expected) <= 20, (at, expected)
            checked += 1
    assert checked >= 4 and silent >= 1, (checked, silent, gap, manifest.duration_ms)


def test_database_outage_is_caught_up(stack: Stack, e2e_namespace: str,
                                      postgres_server: PostgresServer) -> None:
    """PostgreSQL is SIGKILLed while chunks complete: the chunks still finish (Kubernetes
    status), the session shows DatabaseSynced=False, and once the database is back the
    observe timer replays every chunk state so the rows end `done` and promotion records."""
    ns = e2e_namespace
    spk = Speaker(user_id=USER, f0=150.0, talks=[(300, 3000), (6000, 9000)])
    key = f"e2e-input/{ns}/{USER}.wav"
    stack.store.put_bytes(key, wav_bytes(spk.pcm(12_000)), "audio/wav")
    doc = json.loads(session_yaml(ns, "dbdown", [key, key, key]))
    doc["spec"]["source"]["speakers"] = doc["spec"]["source"]["speakers"][:1]
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def status() -> dict[str, Any]:
        return (get(stack, ns, "recsess", "dbdown") or {}).get("status", {})

    def condition(kind: str) -> str | None:
        return next((c["status"] for c in status().get("conditions", [])
                     if c["type"] == kind), None)

    wait_for("recording", lambda: status().get("state") == "Recording", 60)
    meeting = status()["meetingId"]
    postgres_server.crash()
    try:
        wait_for("a chunk done while the database is down",
                 lambda: status().get("chunks", {}).get("done", 0) >= 1, 60)
        wait_for("DatabaseSynced=False", lambda: condition("DatabaseSynced") == "False", 30)
    finally:
        postgres_server.restart()
    wait_for("DatabaseSynced=True", lambda: condition("DatabaseSynced") == "True", 60)

    def rows_done() -> bool:
        items = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
        tracks = sum(len(i["spec"].get("tracks", [])) for i in items["items"])
        rows = stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting))
        return status().get("recordedSeconds", 0) >= 10 and len(rows) == tracks and all(
            str(r.transcode_status) == "done" for r in rows)

    wait_for("every row done", rows_done, 90, every_s=1)
    stack.kubectl("-n", ns, "delete", "recsess", "dbdown", "--wait=false")
    wait_for("promotion", lambda: get(stack, ns, "recsess", "dbdown") is None, 150, every_s=1)
    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert {str(r.kind) for r in recs} == {"speaker", "mixed"}
