"""Consent through the whole main job on the local control plane (issue 12, docs/consent.md):
a `files` session with three speakers; the second is added to `spec.optOutUserIds` once the
first chunk exists (a merge patch, as `/record optout` makes), after they had already
spoken. The operator, the recorder pod, the transcoder Jobs and the promotion Job are the
real ones (processes on our node agent), with SeaweedFS and PostgreSQL.

After the session is deleted:
- the opted-out member has no `recordings` row and no final object; the mix holds none of
  their audio (their talk windows are silent in it), the audio they spoke before opting
  out included;
- `final/consent.json` names them (`via: user`, `excluded`) and lists the two others as
  recorded; no other final object names them;
- the chunk folders (their raw chunks), their outputs folders (chunk MP3s, pieces) and the
  temp rows are collected;
- the others' tracks hold their audio at its true time (markers ± 20 ms).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.audio_helpers import decode_file, find_click
from tests.e2e.test_main_job import (
    AUDIO_MS,
    GUILD,
    USERS,
    get,
    session_yaml,
    speakers,
    wait_for,
    wav_bytes,
)
from tests.fixtures.stack import Stack
from voicetrack.audio import SAMPLES_PER_MS
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import ConsentRecord, FinalManifest

pytestmark = pytest.mark.e2e

OUT = USERS[1]
"""The member who opts out mid-session, after their first talk (1.6–2.4 s)."""


def _rms(track: np.ndarray, windows: list[tuple[int, int]], avoid: list[int]) -> float:
    """RMS of `track` (int16 (n, 2)) over `windows` (ms, trimmed 60 ms each side), leaving
    out ±40 ms around each time in `avoid` (the others' click markers)."""
    keep = np.zeros(track.shape[0], dtype=bool)
    for a, b in windows:
        keep[(a + 60) * SAMPLES_PER_MS:(b - 60) * SAMPLES_PER_MS] = True
    for at in avoid:
        keep[max(at - 40, 0) * SAMPLES_PER_MS:(at + 40) * SAMPLES_PER_MS] = False
    x = track[keep].astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def test_a_member_opted_out_mid_session_is_in_no_final_object(stack: Stack,
                                                                e2e_namespace: str) -> None:
    ns = e2e_namespace
    spk = speakers()
    keys = []
    for s in spk:
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    stack.kubectl("apply", "-f", "-", input=session_yaml(ns, "consent", keys))
    wait_for("first chunk", lambda: (get(stack, ns, "recsess", "consent") or {}).get(
        "status", {}).get("chunks", {}).get("total", 0) >= 1, 60, every_s=0.2)
    stack.kubectl("-n", ns, "patch", "recsess", "consent", "--type=merge",
                  "-p", json.dumps({"spec": {"optOutUserIds": [OUT]}}))
    obj = get(stack, ns, "recsess", "consent")
    assert obj is not None
    meeting = obj["status"]["meetingId"]
    layout = MeetingLayout("recordings", GUILD, meeting)

    def recorded() -> bool:
        st = (get(stack, ns, "recsess", "consent") or {}).get("status", {})
        rows = stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting))
        return st.get("recordedSeconds", 0) * 1000 >= AUDIO_MS + 1000 and bool(rows) and all(
            str(r.transcode_status) == "done" for r in rows)

    wait_for("the audio to be recorded and transcoded", recorded, 120, every_s=0.5)
    chunks = json.loads(stack.kubectl("-n", ns, "get", "recchunk", "-o", "json").stdout)
    # the member spoke before opting out: chunk 0 holds their track (what must not survive)
    assert any(t["userId"] == OUT for c in chunks["items"] for t in c["spec"]["tracks"])
    last = max(chunks["items"], key=lambda c: c["spec"]["index"])
    assert [o["userId"] for o in last["spec"].get("optedOut", [])] == [OUT]

    stack.kubectl("-n", ns, "delete", "recsess", "consent", "--wait=false")
    wait_for("the session to be gone", lambda: get(stack, ns, "recsess", "consent") is None,
             180, every_s=1)

    recs = stack.db(lambda s: s.get_recordings_for_meeting(meeting))
    assert sorted((str(r.kind), r.user_id) for r in recs) == sorted(
        [("speaker", USERS[0]), ("speaker", USERS[2]), ("mixed", None)])
    assert stack.db(lambda s: s.get_temp_recordings_for_meeting(meeting)) == []
    assert stack.store.list_keys(layout.chunks_root) == []
    assert stack.store.list_keys(layout.outputs_root) == []
    assert stack.store.list_keys(layout.live_root) == []

    consent = ConsentRecord.model_validate(stack.store.get_json(layout.consent_key))
    assert [(o.user_id, o.via, o.excluded) for o in consent.opted_out] == [(OUT, "user", True)]
    assert sorted(m.user_id for m in consent.recorded) == [USERS[0], USERS[2]]
    for key in stack.store.list_keys(layout.final_root):
        assert OUT not in key, key
        if key != layout.consent_key:
            assert OUT.encode() not in stack.store.get_bytes(key), key

    manifest = FinalManifest.model_validate(stack.store.get_json(layout.final_manifest_key))
    assert {t.user_id for t in manifest.tracks} == {USERS[0], USERS[2], None}
    tracks = {t.user_id: decode_file(stack.store.get_bytes(t.key)) for t in manifest.tracks
              if t.format == "mp3"}
    mix = tracks[None]
    others = [at for s in spk if s.user_id != OUT for at in s.markers]
    out_talks = next(s for s in spk if s.user_id == OUT).talks
    first_talks = spk[0].talks
    loud = _rms(mix, first_talks, others)
    quiet = _rms(mix, out_talks, others)
    print(f"mix rms: first speaker {loud:.0f}, opted-out member's windows {quiet:.0f}")
    assert loud > 1000, loud  # the first speaker's tone is in the mix
    assert quiet < 0.02 * loud, (quiet, loud)  # the opted-out member's, before and after, not
    for s in spk:
        if s.user_id == OUT:
            continue
        for at in s.markers:
            got = find_click(tracks[s.user_id], at)
            assert abs(got - at) <= 20, (s.user_id, at, got)
