"""A done chunk's raw audio cannot be taken out of the final tracks, and a promotion is never
wedged by one bad chunk. On the local control plane with the operator running, a `files`
session records, its chunks are transcoded (`done`), and then one chunk's raw object is
overwritten in S3 (what a compromised recorder can do: its upload grant still covers the
chunk folders).

- Issue 15: the chunk's Job stored the raw tracks it verified as frozen copies in
  `outputs/<k>/` (outside the grant), which promotion reads: the session is promoted with
  the chunk's audio, no gap, nothing failed. Before, the promotion found the sha256
  mismatch and left the chunk out (the recorder deleted audio after the fact).
- Leaving a chunk out still works when its frozen copy is bad too (only a store fault can
  make that): the promotion Job fails on that chunk (exit 2, its termination message
  naming it), the operator marks the chunk failed (its temp rows, a `ChunkLeftOut` Warning
  Event), leaves it out and promotes the rest at once. The chunk's window is a
  `chunk-failed` gap, the overwritten object is kept under `final/failed/`, and the
  meeting is `completed`. Before that: the promotion failed as a whole (`PromotionFailed`),
  was retried every 300 s for ever with the same bad object, and the session never went
  (nothing promoted); deleting its namespace left it Terminating for ever."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.audio_helpers import Speaker, decode_file
from tests.e2e.test_auto_promote import LIMIT_S, session
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.db.schema import TempRecording
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.resources import SessionSpec

pytestmark = pytest.mark.e2e

GUILD, NS_GUILD = "300000000000000091", "300000000000000092"
GUILD_BAD, NS_SPEC_GUILD = "300000000000000093", "300000000000000094"
USERS = ["400000000000000071", "400000000000000072"]  # test_auto_promote.session's speakers
AUDIO_MS = 7_000
PROMOTED_S = 120
"""Well under the 300 s a PromotionFailed waits before its next try."""
FORGED = b"OggS forged by a compromised recorder" * 40
DAMAGED = b"OggS a frozen copy damaged by the store" * 40


@dataclass
class Recorded:
    """A stopped session whose last chunk with audio had its raw object overwritten (and
    its frozen copy damaged when `frozen_damaged`)."""

    meeting: str
    layout: MeetingLayout
    chunks: list[dict[str, Any]]
    bad: dict[str, Any]
    kept_users: set[str]
    voiced_rms: float
    """RMS of the overwritten track's genuine audio (int16 units)."""

    @property
    def index(self) -> int:
        return int(self.bad["spec"]["index"])


def record_and_forge(stack: Stack, ns: str, guild: str, damage_frozen: bool,
                     forge_spec: bool = False) -> Recorded:
    """Record, then overwrite the loudest track of the last chunk with audio; with
    `damage_frozen` damage its frozen copy too, with `forge_spec` also overwrite that
    chunk's `chunk.json` (through the grant's prefix) to name the forged object's sha256
    and size, as a compromised recorder would before the namespace goes."""
    keys = []
    for s in (Speaker(USERS[0], 170.0, talks=[(300, 3000)], markers=[]),
              Speaker(USERS[1], 260.0, talks=[(3500, 6500)], markers=[])):
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    # 20 s: at least two chunks with audio even when the recorder pod starts late on a busy
    # machine (the limit counts session time from the session's start)
    doc = json.loads(session(ns, "forged", guild, keys, deleteWhenStopped=False,
                             maxDurationSeconds=LIMIT_S * 2))
    doc["spec"]["retainTempRows"] = True  # the temp rows stay (cleaned) to be read here
    # FLAC: promoted in full from the raw chunks, which read the overwritten object (an
    # MP3-only meeting is assembled from the pieces its chunks' Jobs made from the genuine
    # audio, and reads no raw object when no unit is left to render after stop); it reads
    # the frozen copies, `chunks/<k>/` only for a chunk that has none
    doc["spec"]["output"] = {"formats": ["flac"]}
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def stopped_and_done() -> dict | None:
        status = (get(stack, ns, "recsess", "forged") or {}).get("status") or {}
        chunks = status.get("chunks") or {}
        return status if status.get("state") == "Stopped" and chunks.get("total") \
            and chunks.get("done") == chunks["total"] else None

    status = wait_for("the session Stopped with its chunks done", stopped_and_done,
                      LIMIT_S * 2 + 50, every_s=1)
    body = get(stack, ns, "recsess", "forged") or {}
    layout = MeetingLayout(SessionSpec.model_validate(body["spec"]).storage.prefix, guild,
                           status["meetingId"])
    chunks = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout
                        )["items"]
    # the last chunk with audio: one promotion reads raw whichever path it takes (the
    # pieces of the others were made while recording)
    spoken = sorted((c for c in chunks if c["spec"].get("tracks")),
                    key=lambda c: int(c["spec"]["index"]))
    assert len(spoken) >= 2, f"the recorder made {len(spoken)} chunk(s) with audio"
    bad = spoken[-1]
    # the loudest track first (its frozen copy, the audio its Job verified): the one
    # overwritten, whose voice the final track must hold
    loud: dict[str, float] = {}
    for t in bad["spec"]["tracks"]:
        key = layout.frozen_raw_key(int(bad["spec"]["index"]), t["userId"],
                                    bad["spec"]["rawFormat"])
        assert stack.store.exists(key), f"chunk done without its frozen copy {key}"
        loud[t["userId"]] = rms(decode_file(stack.store.get_bytes(key)))
    bad["spec"]["tracks"].sort(key=lambda t: -loud[t["userId"]])
    track = bad["spec"]["tracks"][0]
    assert loud[track["userId"]] > 300, loud  # else silence could not tell it from a gap
    frozen = layout.frozen_raw_key(int(bad["spec"]["index"]), track["userId"],
                                   bad["spec"]["rawFormat"])
    # after its transcode (done): what a compromised recorder's upload grant still allows
    stack.store.put_bytes(track["key"], FORGED, "audio/ogg")
    if damage_frozen:  # only a store fault does this: the grant cannot write there
        stack.store.put_bytes(frozen, DAMAGED, "audio/ogg")
    if forge_spec:
        forged = json.loads(json.dumps(bad["spec"]))
        forged["tracks"][0].update(sha256=hashlib.sha256(FORGED).hexdigest(),
                                   bytes=len(FORGED))
        stack.store.put_json(layout.chunk_manifest_key(int(bad["spec"]["index"])), forged)
    return Recorded(status["meetingId"], layout, chunks, bad,
                    {t["userId"] for c in spoken[:-1] for t in c["spec"]["tracks"]},
                    loud[track["userId"]])


def rms(pcm: np.ndarray) -> float:
    """Root mean square of int16 samples (0.0 for none)."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


def wait_gone(stack: Stack, what: str, gone: Any, status: Any) -> None:
    deadline = time.monotonic() + PROMOTED_S
    while not gone():
        if time.monotonic() > deadline:
            st = status() or {}
            raise AssertionError(f"{what} not gone within {PROMOTED_S} s: state "
                                 f"{st.get('state')}: {st.get('phaseMessage')}")
        time.sleep(1)


def bad_window_ms(rec: Recorded) -> tuple[int, int]:
    """The bad chunk's window in output time (the session was never paused)."""
    origin = min(int(c["spec"]["startMs"]) for c in rec.chunks)
    return (int(rec.bad["spec"]["startMs"]) - origin, int(rec.bad["spec"]["endMs"]) - origin)


def check_promoted_with(stack: Stack, rec: Recorded) -> None:
    """Promoted with the bad chunk's audio: no gap, no failed chunk, every speaker's
    track, the chunk's temp rows done, and its overwritten speaker's final track holds
    their voice over the chunk's window (a left-out chunk's window is digital silence)."""
    recs = stack.db(lambda s: s.get_recordings_for_meeting(rec.meeting))
    users = rec.kept_users | {t["userId"] for t in rec.bad["spec"]["tracks"]}
    assert sorted((str(r.kind), r.user_id or "") for r in recs) == sorted(
        [("speaker", u) for u in users] + [("mixed", "")])
    assert stack.db(lambda s: s.meeting_record(rec.meeting)).status == "completed"
    final = FinalManifest.model_validate(stack.store.get_json(rec.layout.final_manifest_key))
    assert final.gaps == [], final.gaps
    assert not stack.store.exists(rec.layout.failed_manifest_key)
    rows: list[TempRecording] = [
        r for r in stack.db(lambda s: s.get_temp_recordings_for_meeting(rec.meeting))
        if r.chunk_index == rec.index]
    assert rows and {str(r.transcode_status) for r in rows} == {"done"}, rows
    user = rec.bad["spec"]["tracks"][0]["userId"]
    track = next(t for t in final.tracks if t.user_id == user)
    a, b = (ms * 48 for ms in bad_window_ms(rec))
    got = rms(decode_file(stack.store.get_bytes(track.key))[a:b])
    assert got > rec.voiced_rms / 2, (
        f"user {user}'s final track over chunk {rec.index}: RMS {got:.0f}, the chunk's "
        f"genuine audio {rec.voiced_rms:.0f}")


def check_promoted_without(stack: Stack, rec: Recorded) -> None:
    """Promoted with the bad chunk's window as a gap, the chunk failed with its reason in
    SQL and in `final/failed-chunks.json`, its overwritten raw object kept there."""
    recs = stack.db(lambda s: s.get_recordings_for_meeting(rec.meeting))
    assert sorted((str(r.kind), r.user_id or "") for r in recs) == sorted(
        [("speaker", u) for u in rec.kept_users] + [("mixed", "")])
    assert stack.db(lambda s: s.meeting_record(rec.meeting)).status == "completed"
    final = FinalManifest.model_validate(stack.store.get_json(rec.layout.final_manifest_key))
    assert [(g.start_ms, g.end_ms, g.cause) for g in final.gaps] == [
        (*bad_window_ms(rec), "chunk-failed")], final.gaps
    rows: list[TempRecording] = [
        r for r in stack.db(lambda s: s.get_temp_recordings_for_meeting(rec.meeting))
        if r.chunk_index == rec.index]
    assert rows and {str(r.transcode_status) for r in rows} == {"failed"}, rows
    assert all("left out of the promotion" in (r.error or "") for r in rows), rows
    assert "sha256" in (rows[0].error or ""), rows[0].error
    track = rec.bad["spec"]["tracks"][0]
    failed = stack.store.get_json(rec.layout.failed_manifest_key)["failed"]
    entry = next(e for e in failed if e["index"] == rec.index and e["userId"] == track["userId"])
    assert "left out of the promotion" in entry["error"]
    assert stack.store.get_bytes(entry["key"]) == FORGED  # the evidence, never deleted


def test_a_done_chunk_overwritten_in_s3_keeps_its_audio(
        stack: Stack, e2e_namespace: str) -> None:
    ns = e2e_namespace
    rec = record_and_forge(stack, ns, GUILD, damage_frozen=False)
    stack.kubectl("-n", ns, "delete", "recsess", "forged", "--wait=false")
    wait_gone(stack, "the session", lambda: get(stack, ns, "recsess", "forged") is None,
              lambda: (get(stack, ns, "recsess", "forged") or {}).get("status"))
    check_promoted_with(stack, rec)


def test_a_done_chunk_with_a_bad_frozen_copy_is_left_out_and_the_rest_promoted(
        stack: Stack, e2e_namespace: str) -> None:
    ns = e2e_namespace
    rec = record_and_forge(stack, ns, GUILD_BAD, damage_frozen=True)
    stack.kubectl("-n", ns, "delete", "recsess", "forged", "--wait=false")
    wait_gone(stack, "the session", lambda: get(stack, ns, "recsess", "forged") is None,
              lambda: (get(stack, ns, "recsess", "forged") or {}).get("status"))
    check_promoted_without(stack, rec)
    # a Warning Event on the session names the chunk
    events = json.loads(stack.kubectl(
        "-n", ns, "get", "events", "-o", "json",
        "--field-selector", "involvedObject.name=forged,reason=ChunkLeftOut").stdout)["items"]
    assert events and f"chunk {rec.index} " in events[0]["message"], events
    assert events[0]["type"] == "Warning"


def test_the_namespace_of_a_session_with_an_overwritten_chunk_is_deleted_cleanly(
        stack: Stack, e2e_namespace: str) -> None:
    """The namespace goes: its RecordingChunks are deleted by the namespace controller, so
    the chunks are rebuilt from their `chunk.json` (all `done`), the promotion runs in the
    operator's namespace, and the left-out chunk (its frozen copy bad too) is failed from
    `status.deletion.leftOut`."""
    ns = e2e_namespace
    rec = record_and_forge(stack, ns, NS_GUILD, damage_frozen=True)
    stack.kubectl("delete", "namespace", ns, "--wait=false")
    wait_gone(stack, f"namespace {ns}", lambda: stack.kubectl(
        "get", "namespace", ns, check=False).returncode != 0,
        lambda: (get(stack, ns, "recsess", "forged") or {}).get("status"))
    check_promoted_without(stack, rec)


def test_a_namespace_deleted_after_a_chunks_raw_track_and_chunk_json_were_forged(
        stack: Stack, e2e_namespace: str) -> None:
    """The namespace goes, so the chunks are rebuilt from S3: the forged chunk's from the
    frozen copy of its spec its Job stored (outside the grant), not the `chunk.json` the
    recorder overwrote, so it is promoted with its genuine audio. Rebuilt from the forged
    `chunk.json`, its sha256 did not match the frozen raw track and the chunk was left
    out (and with no frozen copies at all the forged object would have been promoted)."""
    ns = e2e_namespace
    rec = record_and_forge(stack, ns, NS_SPEC_GUILD, damage_frozen=False, forge_spec=True)
    stack.kubectl("delete", "namespace", ns, "--wait=false")
    wait_gone(stack, f"namespace {ns}", lambda: stack.kubectl(
        "get", "namespace", ns, check=False).returncode != 0,
        lambda: (get(stack, ns, "recsess", "forged") or {}).get("status"))
    check_promoted_with(stack, rec)
