"""Issue 11's scenarios 9 (a recorder pod deleted by hand) and 6 (S3 down for 3 minutes
mid-session), on the full stack: the real operator, a real recorder pod of the node agent.

(Each test needs the `stack` fixture's PostgreSQL, SeaweedFS, local cluster and operator;
scenario 6 runs a SeaweedFS, database and operator of its own: `own_s3_stack`.)

Each test prints its row of the issue's table with the oracle of `test_scenarios.py`:

    scenario N <name>: acknowledged A, done D, failed F (reasons), lost L
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio_helpers import Speaker, decode_file
from tests.disruptive.test_kill_and_restart import recorder_pids
from tests.disruptive.test_recorder_outages import restart_weed
from tests.disruptive.test_scenarios import (
    USER,
    Oracle,
    chunk_status,
    delete_and_wait,
    file_session,
    inject,
    own_s3_stack,
    paused_session,
    session_doc,
    snowflake,
)
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack_local.seaweed import SeaweedServer

pytestmark = pytest.mark.disruptive

__all__ = ["own_s3_stack"]  # the fixture, imported for pytest


def specs_of(oracle: Oracle) -> list[dict[str, Any]]:
    return [oracle.seen[i]["spec"] for i in sorted(oracle.seen)]


def assert_contiguous(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Indices 0..n-1; each window starts where the one before ends, or after a gap that
    spans exactly the interval between them. Returns the gaps, in order."""
    assert [int(c["index"]) for c in specs] == list(range(len(specs))), specs
    gaps = []
    for a, b in itertools.pairwise(specs):
        gap = b.get("gap")
        if gap:
            assert (int(gap["startMs"]), int(gap["endMs"])) == (int(a["endMs"]),
                                                                 int(b["startMs"])), (a, b)
            gaps.append(gap)
        else:
            assert int(a["endMs"]) == int(b["startMs"]), (a, b)
    return gaps


def final_manifest(stack: Stack, oracle: Oracle, meeting: str) -> FinalManifest:
    guild = oracle.seen[min(oracle.seen)]["spec"]["guildId"]
    return FinalManifest.model_validate(stack.store.get_json(
        MeetingLayout("recordings", guild, meeting).final_manifest_key))


def test_scenario_9_a_recorder_pod_deleted_by_hand_is_made_again_with_a_gap(
        stack: Stack, e2e_namespace: str) -> None:
    """The recorder pod of a live session is deleted with `kubectl delete pod` 2.5 s into
    a chunk: the pod gets SIGTERM and flushes the open chunk (a short one), the operator
    makes a new pod, which continues at the next index on the same timeline with the
    interval it missed as one `recorder-restart` gap; every chunk ends done and the
    promotion covers the whole session with that gap as silence."""
    ns = e2e_namespace
    file_session(stack, ns, "podgone", snowflake(), 40_000)
    oracle = Oracle(stack, ns, "podgone")
    wait_for("two chunks", lambda: len(oracle.poll()) >= 2, 90, every_s=0.2)
    old = get(stack, ns, "pod", "podgone-rec")
    assert old is not None
    before = max(oracle.seen)
    # 2 s into the open chunk on the session clock (the recorder's), whatever the lag of
    # the poll: a SIGTERM near a window's end would flush a full chunk, not the open one
    origin_ms = int(next(e["value"] for e in old["spec"]["containers"][0]["env"]
                         if e["name"] == "VOICETRACK_SESSION_STARTED_AT_MS"))
    open_start = int(oracle.seen[before]["spec"]["endMs"])
    now_session = time.time() * 1000 - origin_ms
    target = open_start + 2000 + 5000 * max(0, -(-(now_session - open_start - 2000) // 5000))
    time.sleep(max(0.0, (target - now_session) / 1000))
    meeting = get(stack, ns, "recsess", "podgone")["status"]["meetingId"]  # type: ignore[index]
    deleted_at = time.monotonic()
    stack.kubectl("-n", ns, "delete", "pod", "podgone-rec", "--wait=false")

    def new_pod_running() -> dict[str, Any] | None:
        oracle.poll()
        pod = get(stack, ns, "pod", "podgone-rec")
        if pod and pod["metadata"]["uid"] != old["metadata"]["uid"] \
                and pod.get("status", {}).get("phase") == "Running":
            return pod
        return None

    new = wait_for("a new recorder pod running", new_pod_running, 90, every_s=0.5)
    made_again_s = time.monotonic() - deleted_at

    def restarted_chunks() -> bool:  # two chunks by the new pod, the first with its gap
        oracle.poll()
        after = [c["spec"] for c in oracle.seen.values() if c["spec"].get("gap")]
        return bool(after) and max(oracle.seen) >= int(after[0]["index"]) + 1

    wait_for("two chunks by the new pod", restarted_chunks, 90, every_s=0.5)
    assert get(stack, ns, "recsess", "podgone")["status"]["state"] == "Recording"  # type: ignore[index]
    specs = specs_of(oracle)
    gaps = assert_contiguous(specs)
    assert [g["cause"] for g in gaps] == ["recorder-restart"], gaps
    flushed = next(c for c in specs if int(c["index"]) + 1 < len(specs)
                   and specs[int(c["index"]) + 1].get("gap"))
    assert int(flushed["index"]) > before, (before, flushed)  # the open chunk at SIGTERM
    assert int(flushed["endMs"]) - int(flushed["startMs"]) < 5000, flushed
    gap = gaps[0]
    print(f"recorder pod {old['metadata']['uid'][:8]} deleted: open chunk "
          f"{flushed['index']} flushed ({int(flushed['endMs']) - int(flushed['startMs'])} "
          f"ms); new pod {new['metadata']['uid'][:8]} running after {made_again_s:.1f} s; "
          f"gap recorder-restart {int(gap['endMs']) - int(gap['startMs'])} ms")

    delete_and_wait(stack, ns, "podgone", oracle)
    row = oracle.row("9 recorder pod deleted by hand", meeting, final=True)
    assert row["lost"] == [] and row["failed"] == {}, row
    assert row["done"] == sorted(oracle.seen), row
    manifest = final_manifest(stack, oracle, meeting)
    assert [g.cause for g in manifest.gaps] == ["recorder-restart"], manifest.gaps


S3_DOWN_S = 180
CHUNK_S = 20


def test_scenario_6_s3_down_three_minutes_mid_session_spools_and_loses_nothing(
        own_s3_stack: tuple[Stack, SeaweedServer, str], request: pytest.FixtureRequest
) -> None:
    """SeaweedFS stops once the session's first chunk is done and stays down 180 s while a real
    recorder pod records: it spools the sealed chunks to its disk, uploads them once S3 is
    back, every chunk ends done, the final track has no gap and holds the speech recorded
    during the outage; lost 0."""
    stack, weed, ns = own_s3_stack
    name = "s3down"
    log = stack.operator.log_path  # kept: pytest's tmp_path is soon collected
    request.addfinalizer(lambda: shutil.copy(log, f"/tmp/{ns}-operator.log"))
    audio_ms = CHUNK_S * 1000 + S3_DOWN_S * 1000 + 3 * CHUNK_S * 1000
    block = Speaker(user_id=USER, f0=165.0, talks=[(0, 10_000)]).pcm(10_000)
    key = f"e2e-input/{ns}/{name}.wav"  # speech throughout (10 s blocks: little memory)
    stack.store.put_bytes(key, wav_bytes(np.tile(block, (audio_ms // 10_000, 1)),
                                         channels=1), "audio/wav")
    doc = session_doc(ns, name, snowflake(), chunkSeconds=CHUNK_S, source={
        "type": "files", "speakers": [{"userId": USER, "objectKey": key}]})
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    oracle = Oracle(stack, ns, name)
    # chunk 0 transcoded first: a transcode running when S3 stops fails for good (an
    # operator defect: test_a_transcode_failed_by_an_s3_outage_is_retried_once_s3_returns)
    wait_for("chunk 0 done", lambda: [chunk_status(c) for c in oracle.poll()][:1]
             == ["done"], 90, every_s=0.5)
    meeting = get(stack, ns, "recsess", name)["status"]["meetingId"]  # type: ignore[index]
    pid = wait_for("the recorder process", lambda: recorder_pids(ns, name), 10)[0]
    env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(
        b"\0") if b"=" in e)
    spool = Path((env.get(b"VOICETRACK_SPOOL_DIR")
                  or env.get(b"TMPDIR", b"/tmp") + b"/voicetrack-spool"
                  ).decode()) / name
    settings = weed.settings
    assert settings is not None
    acked_before = len(oracle.seen)
    weed.stop()
    down_at = time.monotonic()
    peak = 0
    try:
        while time.monotonic() - down_at < S3_DOWN_S:
            oracle.poll()
            used = sum(p.stat().st_size for p in spool.rglob("*") if p.is_file()) \
                if spool.exists() else 0
            peak = max(peak, used)
            time.sleep(5)
    finally:
        restart_weed(weed, settings)
    back_at = time.monotonic()
    waiting = len(list(spool.iterdir())) if spool.exists() else 0
    acked_during = len(oracle.seen) - acked_before
    expected = acked_before + S3_DOWN_S // CHUNK_S

    def caught_up() -> bool:
        oracle.poll()
        return len(oracle.seen) >= expected and not any(
            p.is_file() for p in spool.rglob("*"))

    wait_for("the spooled chunks uploaded", caught_up, 120, every_s=1)
    catch_up_s = time.monotonic() - back_at

    last: dict[str, Any] = {}

    def spooled_transcoded() -> bool:  # the session keeps recording: chunks < expected
        status = {int(c["spec"]["index"]): chunk_status(c) for c in oracle.poll()}
        failed = {i: s for i, s in status.items() if s == "failed"}
        assert not failed, [oracle.seen[i]["status"] for i in failed]
        if status != last.get("status"):
            print(f"chunk status at {time.monotonic() - back_at:.0f} s: {status}")
            last["status"] = status
        return all(status.get(i) == "done" for i in range(expected))

    wait_for("every spooled chunk done", spooled_transcoded, 240, every_s=2)
    done_s = time.monotonic() - back_at
    print(f"S3 down {back_at - down_at:.0f} s: chunks acknowledged during the outage "
          f"{acked_during}, waiting in the spool at the restart {waiting} chunks, spool "
          f"peak {peak / 1e6:.2f} MB; caught up {catch_up_s:.1f} s after S3 returned, "
          f"the spooled chunks done after {done_s:.1f} s")
    assert acked_during == 0 and waiting >= S3_DOWN_S // CHUNK_S - 1, (acked_during, waiting)
    assert peak > 0

    delete_and_wait(stack, ns, name, oracle, timeout_s=240)
    row = oracle.row("6 S3 down 3 minutes mid-session", meeting, final=True)
    assert row["lost"] == [] and row["failed"] == {}, row
    assert row["done"] == sorted(oracle.seen), row
    specs = specs_of(oracle)
    assert assert_contiguous(specs) == [], specs
    manifest = final_manifest(stack, oracle, meeting)
    assert manifest.gaps == [], manifest.gaps
    # the speech recorded while S3 was down is in the final track: every second of it
    first = min(int(c["startMs"]) for c in specs)
    track = decode_file(stack.store.get_bytes(next(
        t.key for t in manifest.tracks if t.user_id == USER and t.format == "mp3")))
    out_down = int(specs[acked_before]["startMs"]) - first
    seconds = range(out_down // 1000 + 1, out_down // 1000 + S3_DOWN_S - 1)
    quiet = [s for s in seconds
             if np.abs(track[s * 48_000:(s + 1) * 48_000].astype(int)).max() < 1000]
    assert not quiet, quiet[:20]


def test_a_transcode_failed_by_an_s3_outage_is_retried_once_s3_returns(
        own_s3_stack: tuple[Stack, SeaweedServer, str]) -> None:
    """S3 stops as a chunk's transcoder Job starts and stays down until the Job has failed
    (every pod retried to `backoffLimit`, ~70 s). The raw audio is intact in S3 once it
    returns: the chunk must end done (the outage was transient), not failed."""
    stack, weed, ns = own_s3_stack
    s = paused_session(stack, ns, "txdown", snowflake())
    oracle = Oracle(stack, ns, "txdown")
    inject(stack, ns, s, [(0, 5000)], only=[0])
    first = wait_for("chunk 0's Job", lambda: get(stack, ns, "job", "txdown-tx-000000"), 60,
                     every_s=0.05)

    def first_failed() -> str | None:
        """'failed' once the first Job shows Failed, 'deleted' once the operator has taken
        it away (it deletes a Job failed on a transient fault at once)."""
        job = get(stack, ns, "job", "txdown-tx-000000")
        if job is None or job["metadata"]["uid"] != first["metadata"]["uid"] \
                or job["metadata"].get("deletionTimestamp"):
            return "deleted"
        conditions = (job.get("status") or {}).get("conditions") or []
        return "failed" if any(c["type"] == "Failed" and c["status"] == "True"
                               for c in conditions) else None

    settings = weed.settings
    assert settings is not None
    weed.stop()
    try:
        seen = wait_for("chunk 0's Job failed", first_failed, 240, every_s=0.5)
        print(f"chunk 0's first Job while S3 was down: {seen}")
    finally:
        restart_weed(weed, settings)
    status = wait_for("chunk 0 settled", lambda: (lambda st: st if st in ("done", "failed")
                      else None)(chunk_status(get(stack, ns, "recchunk",
                                                  "txdown-chunk-000000"))), 60)
    print(f"chunk 0 after its Job failed while S3 was down: {status}")
    oracle.poll()
    oracle.row("6 S3 down through a transcode's retries", s.meeting, final=False)
    wait_for("chunk 0 done once S3 is back", lambda: [chunk_status(c) for c in oracle.poll()]
             == ["done"], 60, every_s=1)
