"""The main job end to end on the local control plane: a RecordingSession with three file
speakers records in chunks, pauses and resumes, is deleted, promoted, and collected.

Real everything: upstream kube-apiserver/controller-manager/scheduler with our node agent
running the recorder and transcoder pods as processes, SeaweedFS, PostgreSQL, ffmpeg.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import (
    Speaker,
    decode_file,
    find_click,
    session_to_output_ms,
    upload_chunks,
)
from tests.fixtures.stack import Stack
from voicetrack.chunkspec import Gap
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest

pytestmark = pytest.mark.e2e

GUILD = "300000000000000001"
USERS = ["400000000000000011", "400000000000000012", "400000000000000013"]
AUDIO_MS = 13_000


def wav_bytes(pcm: Any, channels: int = 2) -> bytes:
    """A 48 kHz s16 WAV file of `pcm` (int16 (n, 2)); `channels` 1 keeps the left channel."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes((pcm if channels == 2 else pcm[:, :1]).copy().tobytes())
    return buf.getvalue()


def speakers() -> list[Speaker]:
    """Three speakers talking in turns, each with click markers every ~1.1 s in its
    silences (so they survive as clicks) and in the chunk windows of the whole session."""
    out = []
    for i, user in enumerate(USERS):
        talks = [(300 + i * 1300 + k * 4000, 1100 + i * 1300 + k * 4000) for k in range(3)]
        markers = [t for t in range(150 + i * 370, AUDIO_MS - 300, 1100)
                   if all(not (a - 60 <= t <= b + 60) for a, b in talks)]
        out.append(Speaker(user_id=user, f0=140.0 + 70 * i, talks=talks, markers=markers))
    return out


def session_yaml(ns: str, name: str, keys: list[str], **spec: Any) -> str:
    doc = {
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"guildId": GUILD, "channelId": "300000000000000002", "chunkSeconds": 5,
                 "source": {"type": "files", "speakers": [
                     {"userId": u, "objectKey": k} for u, k in zip(USERS, keys, strict=True)]},
                 **spec},
    }
    return json.dumps(doc)


def get(stack: Stack, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    res = stack.kubectl("-n", ns, "get", kind, name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def wait_for(what: str, fn: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_session_records_pauses_promotes_and_collects(stack: Stack, e2e_namespace: str,
                                                      tmp_path: Path) -> None:
    ns = e2e_namespace
    spk = speakers()
    keys = []
    for i, s in enumerate(spk):  # the first speaker's file is mono, as a microphone is
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS), 1 if i == 0 else 2), "audio/wav")
        keys.append(key)
    stack.kubectl("apply", "-f", "-", input=session_yaml(ns, "standup", keys))

    # Recording: a chunk appears and the printer columns tell where the session stands.
    wait_for("first chunk", lambda: (get(stack, ns, "recsess", "standup") or {}).get(
        "status", {}).get("chunks", {}).get("total", 0) >= 1, 60)
    table = stack.kubectl("-n", ns, "get", "recsess", "-o", "wide").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "STATE", "CHUNKS", "DONE", "FAILED", "DURATION", "AGE",
                              "GUILD", "CHANNEL", "MEETING", "CONSENT"]
    assert row.split()[1] == "Recording" and GUILD in row
    chunks_table = stack.kubectl("-n", ns, "get", "recchunk").stdout
    assert chunks_table.split()[:8] == ["NAME", "SESSION", "INDEX", "START", "END", "TRACKS",
                                        "TRANSCODE", "AGE"]

    # Pause and resume once, about 3 s; the session shows it.
    obj = get(stack, ns, "recsess", "standup")
    assert obj is not None
    started = time.monotonic()
    stack.kubectl("-n", ns, "patch", "recsess", "standup", "--type=merge",
                  "-p", '{"spec":{"paused":true}}')
    wait_for("Paused state", lambda: (get(stack, ns, "recsess", "standup") or {}).get(
        "status", {}).get("state") == "Paused", 20)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
    stack.kubectl("-n", ns, "patch", "recsess", "standup", "--type=merge",
                  "-p", '{"spec":{"paused":false}}')
    meeting = obj["status"]["meetingId"]

    # Temp rows move forward only while chunks transcode.
    rank = {"queued": 0, "in_progress": 1, "done": 2, "failed": 2}
    seen: dict[tuple[int, str], list[str]] = {}

    def rows_done() -> bool:
        rows = stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting))
        for r in rows:
            seen.setdefault((r.chunk_index, r.user_id), []).append(str(r.transcode_status))
        st = (get(stack, ns, "recsess", "standup") or {}).get("status", {})
        recorded = st.get("recordedSeconds", 0)
        return recorded * 1000 >= AUDIO_MS + 1000 and rows and all(
            str(r.transcode_status) == "done" for r in rows)

    wait_for("the audio to be recorded and transcoded", rows_done, 120, every_s=0.3)
    for states in seen.values():
        ranks = [rank[s] for s in states]
        assert ranks == sorted(ranks), states
    rows = stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting))
    for r in rows:
        assert r.mp3_path and r.sha256 and r.duration_ms
        assert stack.store.digest(r.mp3_path)[1] == r.sha256
    layout = MeetingLayout("recordings", GUILD, meeting)
    assert stack.store.list_keys(layout.chunks_root)
    assert stack.store.list_keys(layout.outputs_root)  # chunk outputs, result.json, pieces
    # The audio so far (`voicetrack-transcoder live`) is superseded by the final tracks.
    stack.store.put_bytes(layout.live_key("mix", "mp3"), b"so far")

    # Delete: stop, wait for transcodes, promote, record, collect.
    stack.kubectl("-n", ns, "delete", "recsess", "standup", "--wait=false")
    wait_for("the session to be gone", lambda: get(stack, ns, "recsess", "standup") is None,
             180, every_s=1)
    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == sorted(
        [("speaker", u) for u in USERS] + [("mixed", None)])
    for r in recs:
        assert stack.store.digest(r.object_key) == (r.bytes, r.sha256)
    assert stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting)) == []
    assert stack.store.list_keys(layout.chunks_root) == []
    assert stack.store.list_keys(layout.outputs_root) == []
    assert stack.store.list_keys(layout.live_root) == []
    # Jobs and RecordingChunks are owned by the session: the garbage collector takes them.
    wait_for("owned children to be collected", lambda: stack.kubectl(
        "-n", ns, "get", "jobs,pods,recchunk", "-o", "name").stdout.strip() == "", 60, every_s=1)

    # The audio: every marker at its true time ± 20 ms, the paused interval cut out,
    # all tracks the same length.
    manifest = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    # assembled from the pieces the chunks' Jobs made, silent chunks and all (issue 13)
    assert (manifest.assembly, manifest.fallback_reason) == ("incremental", None)
    paused = [g for g in manifest.gaps if g.cause == "paused"]
    assert len(paused) == 1 and 2000 <= paused[0].end_ms - paused[0].start_ms <= 4500
    assert manifest.paused_ms == paused[0].end_ms - paused[0].start_ms
    # mono-coded packets (the mono file) give mono tracks; the mix is stereo as the rest
    assert {t.user_id: t.channels for t in manifest.tracks} == {
        USERS[0]: 1, USERS[1]: 2, USERS[2]: 2, None: 2}
    tracks = {t.user_id: decode_file(stack.store.get_bytes(t.key)) for t in manifest.tracks
              if t.format == "mp3"}
    lengths = [a.shape[0] for a in tracks.values()]
    assert max(lengths) - min(lengths) <= 20 * 48
    assert abs(manifest.duration_ms - (manifest.recorded_ms)) <= 30
    checked = 0
    for s in spk:
        track = tracks[s.user_id]
        for at in s.markers:
            if near_pause(at, paused):
                continue
            expected = session_to_output_ms(at, paused)
            got = find_click(track, expected)
            assert abs(got - expected) <= 20, (s.user_id, at, expected, got)
            checked += 1
    assert checked >= 15


def near_pause(at: int, paused: list[Gap]) -> bool:
    """A marker within 200 ms of the paused interval (or inside it) is not checked."""
    return any(g.start_ms - 200 <= at <= g.end_ms + 200 for g in paused)


def test_invalid_specs_are_refused_with_the_field_named(stack: Stack,
                                                        e2e_namespace: str) -> None:
    ns = e2e_namespace
    cases = {
        "chunkSeconds": {"chunkSeconds": 2},
        "guildId": {"guildId": "not-a-snowflake"},
        "formats": {"output": {"formats": ["wav"]}},
    }
    for field_name, bad in cases.items():
        doc = json.loads(session_yaml(ns, f"bad-{field_name.lower()}", ["k"] * 3))
        doc["spec"].update(bad)
        res = stack.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
        assert res.returncode != 0
        assert f"spec.{field_name}" in res.stderr or field_name in res.stderr, res.stderr


def test_second_session_for_a_busy_guild_is_refused(stack: Stack, e2e_namespace: str) -> None:
    ns = e2e_namespace
    keys = ["e2e-input/none-a.wav"] * 3
    stack.kubectl("apply", "-f", "-", input=session_yaml(ns, "first", keys, paused=True))
    wait_for("first to start", lambda: (get(stack, ns, "recsess", "first") or {}).get(
        "status", {}).get("meetingId"), 30)
    stack.kubectl("apply", "-f", "-", input=session_yaml(ns, "second", keys, paused=True))
    status = wait_for("second to be refused", lambda: (
        (get(stack, ns, "recsess", "second") or {}).get("status", {})
        if (get(stack, ns, "recsess", "second") or {}).get("status", {}).get("state")
        == "Refused" else None), 30)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "GuildBusy"
    assert f"{ns}/first" in ready["message"]
    assert get(stack, ns, "pod", "second-rec") is None
    stack.kubectl("-n", ns, "delete", "recsess", "second", "first", "--wait=false")
    wait_for("both gone", lambda: get(stack, ns, "recsess", "first") is None
             and get(stack, ns, "recsess", "second") is None, 90, every_s=1)


def test_corrupt_chunk_fails_with_its_reason_and_the_rest_promotes(
        stack: Stack, e2e_namespace: str) -> None:
    """Chunks injected as a recorder would write them (the session stays paused, so its
    recorder adds none): chunk 0 sound, chunk 1 corrupt raw with a matching sha256."""
    ns = e2e_namespace
    stack.kubectl("apply", "-f", "-", input=session_yaml(ns, "broken", ["e2e-input/x"] * 3,
                                                           paused=True))
    obj = wait_for("meeting id", lambda: (lambda o: o if o and o.get("status", {}).get(
        "meetingId") else None)(get(stack, ns, "recsess", "broken")), 30)
    meeting, uid = obj["status"]["meetingId"], obj["metadata"]["uid"]
    layout = MeetingLayout("recordings", GUILD, meeting)
    spk = Speaker(user_id=USERS[0], f0=180.0, talks=[(200, 4000)], markers=[4500])
    session = upload_chunks(stack.store, layout, [spk], [(0, 5000)], 5000, [])
    good = session.chunks[0].model_copy(update={"session_name": "broken"})
    junk = b"OggS this is not an Ogg Opus stream" * 10
    bad_key = layout.raw_key(1, USERS[0], "ogg-opus")
    stack.store.put_bytes(bad_key, junk)
    bad = good.model_copy(update={"index": 1, "start_ms": 5000, "end_ms": 10_000,
                                  "tracks": [good.tracks[0].model_copy(update={
                                      "key": bad_key, "bytes": len(junk),
                                      "sha256": hashlib.sha256(junk).hexdigest()})]})
    for chunk in (good, bad):
        stack.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingChunk",
            "metadata": {"name": f"broken-chunk-{chunk.index:06d}", "namespace": ns,
                         "labels": {"voicetrack.dev/session": "broken"},
                         "ownerReferences": [{"apiVersion": "voicetrack.dev/v1alpha1",
                                              "kind": "RecordingSession", "name": "broken",
                                              "uid": uid, "controller": True}]},
            "spec": chunk.to_api()}))

    def final(name: str) -> dict[str, Any] | None:
        st = (get(stack, ns, "recchunk", name) or {}).get("status", {})
        return st if st.get("transcodeStatus") in ("done", "failed") else None

    assert wait_for("chunk 0", lambda: final("broken-chunk-000000"), 90)[
        "transcodeStatus"] == "done"
    failed = wait_for("chunk 1", lambda: final("broken-chunk-000001"), 90)
    assert failed["transcodeStatus"] == "failed"
    # the Job's reason, and the transcoder's own from its termination message
    assert "PodFailurePolicy" in failed["error"], failed
    assert "is not a valid raw Ogg Opus track" in failed["error"], failed
    rows = stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting))
    by_index = {r.chunk_index: r for r in rows}
    assert str(by_index[1].transcode_status) == "failed" and by_index[1].error
    assert stack.store.get_bytes(bad_key) == junk  # the raw is kept

    stack.kubectl("-n", ns, "delete", "recsess", "broken", "--wait=false")
    wait_for("promotion", lambda: get(stack, ns, "recsess", "broken") is None, 120, every_s=1)
    manifest = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    assert [(g.start_ms, g.end_ms, g.cause) for g in manifest.gaps] == [
        (5000, 10_000, "chunk-failed")]
    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert {str(r.kind) for r in recs} == {"speaker", "mixed"}
    track = decode_file(stack.store.get_bytes(
        next(t.key for t in manifest.tracks if t.user_id == USERS[0])))
    assert abs(find_click(track, 4500) - 4500) <= 20
    assert stack.store.list_keys(layout.chunks_root) == []
    assert stack.store.list_keys(layout.outputs_root) == []
    kept = stack.store.get_json(layout.failed_manifest_key)["failed"]
    assert [(k["index"], k["userId"], k["sha256"]) for k in kept] == [
        (1, USERS[0], hashlib.sha256(junk).hexdigest())]
    assert "is not a valid raw Ogg Opus track" in kept[0]["error"]
    assert stack.store.get_bytes(kept[0]["key"]) == junk  # nothing lost after collection
