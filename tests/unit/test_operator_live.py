"""The audio so far on the operator's side, pure: the live Job's manifest, the debounce
(`services.live.decide`), which chunks a live Job can assemble, and `status.live`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicetrack.chunkspec import ChunkSpec
from voicetrack.objectstore import S3Settings
from voicetrack.resources import SessionSpec, TranscodeStatus
from voicetrack_operator.builders import PodSettings, SessionRef
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.jobs import (
    LABEL_LIVE_CHUNKS,
    LIVE_JOB_TTL_S,
    build_live_job,
    build_transcode_job,
    live_job_name,
)
from voicetrack_operator.services.live import (
    LIVE_BACKOFF_MAX_S,
    LIVE_TRIES,
    LiveDecision,
    LiveJob,
    LiveService,
    decide,
)
from voicetrack_operator.services.livechunks import transcoded_run
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_operator.status import live_status

pytestmark = pytest.mark.unit

OWNER = SessionRef(name="standup", namespace="team", uid="0b6c-uid")
SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})
NOW = datetime(2026, 12, 2, 21, 0, 0, tzinfo=UTC)
Q, R, D, F = (TranscodeStatus.QUEUED, TranscodeStatus.IN_PROGRESS, TranscodeStatus.DONE,
              TranscodeStatus.FAILED)


def job(chunks: int, state: TranscodeStatus, age_s: float, deleting: bool = False
        ) -> LiveJob:
    return LiveJob(name=live_job_name("standup", chunks), chunks=chunks, state=state,
                   created=NOW - timedelta(seconds=age_s), deleting=deleting)


def test_live_job_manifest() -> None:
    settings = PodSettings(transcoder_image="reg/tx:1", s3_secret="s3keys")
    live = build_live_job(OWNER, SPEC, "m" * 16, 7, settings)
    assert live["metadata"]["name"] == "standup-live-000007"
    assert live["metadata"]["labels"]["voicetrack.dev/component"] == "live"
    assert live["metadata"]["labels"][LABEL_LIVE_CHUNKS] == "7"
    assert live["metadata"]["labels"]["voicetrack.dev/session"] == "standup"
    assert live["metadata"]["ownerReferences"][0]["uid"] == "0b6c-uid"
    assert live["spec"]["backoffLimit"] == 0  # the next interval is the retry
    assert live["spec"]["ttlSecondsAfterFinished"] == LIVE_JOB_TTL_S  # no delete of ours
    c = live["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "reg/tx:1"
    assert c["args"] == ["live", "--prefix", "recordings", "--guild-id", SPEC.guild_id,
                         "--meeting-id", "m" * 16, "--chunks", "7"]
    # the same S3 scoping, pod security and placement as the chunk transcoder Jobs
    chunk = ChunkSpec(session_name="standup", meeting_id="m" * 16, guild_id=SPEC.guild_id,
                      index=0, start_ms=0, end_ms=1000, tracks=[])
    tx = build_transcode_job(OWNER, chunk, SPEC, settings)["spec"]["template"]["spec"]
    live_pod = live["spec"]["template"]["spec"]
    assert c["env"] == tx["containers"][0]["env"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext",
                "restartPolicy"):
        assert live_pod[key] == tx[key], key
    assert live_job_name("s" * 63, 3).endswith("-live-000003")
    assert len(live_job_name("s" * 63, 3)) <= 63


def test_first_job_starts_as_soon_as_a_chunk_is_transcoded() -> None:
    assert decide([], ready=0, reported=0, interval_s=30, now=NOW).launch is None
    assert decide([], ready=1, reported=0, interval_s=30, now=NOW).launch == 1


def test_off_does_nothing() -> None:
    d = decide([job(2, D, 100), job(1, D, 200)], ready=5, reported=0, interval_s=0, now=NOW)
    assert (d.launch, d.delete, d.report) == (None, [], None)


def test_one_at_a_time() -> None:
    for state in (Q, R):
        d = decide([job(2, state, 100)], ready=6, reported=1, interval_s=30, now=NOW)
        assert d.launch is None and d.delete == []


def test_waits_for_the_interval_and_for_new_chunks() -> None:
    young = decide([job(2, D, 10)], ready=4, reported=2, interval_s=30, now=NOW)
    assert young.launch is None
    old = decide([job(2, D, 31)], ready=4, reported=2, interval_s=30, now=NOW)
    assert old.launch == 4
    nothing_new = decide([job(4, D, 300)], ready=4, reported=4, interval_s=30, now=NOW)
    assert nothing_new.launch is None


def test_completed_job_is_reported_once() -> None:
    d = decide([job(3, D, 5)], ready=3, reported=2, interval_s=30, now=NOW)
    assert d.report is not None and d.report.chunks == 3 and d.launch is None
    again = decide([job(3, D, 5)], ready=3, reported=3, interval_s=30, now=NOW)
    assert again.report is None


def test_superseded_jobs_are_left_to_their_ttl_unless_still_running() -> None:
    """A finished superseded Job costs no delete of ours (the Job controller removes it after
    `LIVE_JOB_TTL_S`); one still running behind a newer one is deleted."""
    d = decide([job(1, D, 90), job(3, D, 40), job(2, F, 60, deleting=True)], ready=3,
               reported=3, interval_s=30, now=NOW)
    assert d.delete == []
    d = decide([job(1, R, 90), job(2, F, 70), job(3, D, 40)], ready=3, reported=3,
               interval_s=30, now=NOW)
    assert d.delete == [live_job_name("standup", 1)]


def test_failed_job_is_retried_at_the_next_interval_and_marks_nothing() -> None:
    """A failed live Job is not reported (status.live stays at the last good one): after
    the interval the same chunks are tried again, its Job deleted first (the name)."""
    young = decide([job(3, F, 10)], ready=3, reported=2, interval_s=30, now=NOW)
    assert (young.launch, young.delete, young.report) == (None, [], None)
    due = decide([job(3, F, 31)], ready=3, reported=2, interval_s=30, now=NOW)
    assert due.launch is None and due.delete == [live_job_name("standup", 3)]
    assert decide([], ready=3, reported=2, interval_s=30, now=NOW).launch == 3
    more = decide([job(3, F, 31)], ready=5, reported=2, interval_s=30, now=NOW)
    assert more.launch == 5 and more.delete == []
    # tried LIVE_TRIES times for these chunks: the wait doubles with each further try,
    # up to LIVE_BACKOFF_MAX_S; more chunks are launched at the interval
    def after(since: float, n: int, ready: int = 3) -> LiveDecision:
        return decide([job(3, F, since)], ready=ready, reported=2, interval_s=30, now=NOW,
                      since_launch=since, tries=(3, n))

    assert after(31, LIVE_TRIES - 1).delete == [live_job_name("standup", 3)]
    assert (after(31, LIVE_TRIES).launch, after(31, LIVE_TRIES).delete) == (None, [])
    assert after(61, LIVE_TRIES).delete == [live_job_name("standup", 3)]
    assert after(119, LIVE_TRIES + 1).delete == [] and after(121, LIVE_TRIES + 1).delete
    assert after(LIVE_BACKOFF_MAX_S - 1, LIVE_TRIES + 20).delete == []
    assert after(LIVE_BACKOFF_MAX_S, LIVE_TRIES + 20).delete
    assert after(31, LIVE_TRIES + 5, ready=4).launch == 4


def chunk_obj(index: int, status: str | None, tracks: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"spec": {"index": index, "tracks": [{}] * tracks}}
    if status:
        obj["status"] = {"transcodeStatus": status}
    return obj


def test_transcoded_run_stops_at_the_first_chunk_still_transcoding() -> None:
    assert transcoded_run([]) == (0, [])
    assert transcoded_run([chunk_obj(1, "done"), chunk_obj(0, "done"),
                           chunk_obj(2, "in_progress"), chunk_obj(3, "done")]) == (2, [])
    assert transcoded_run([chunk_obj(0, "done"), chunk_obj(2, "done")]) == (1, [])  # a hole
    assert transcoded_run([chunk_obj(0, None)]) == (0, [])


def test_failed_and_speechless_chunks_are_silent_not_the_end() -> None:
    """Before, a failed chunk or one nobody spoke in ended the audio so far for good."""
    assert transcoded_run([chunk_obj(0, "done", tracks=0), chunk_obj(1, "failed"),
                           chunk_obj(2, "done"), chunk_obj(3, "queued")]) == (3, [0, 1])
    refused = chunk_obj(1, "failed")
    refused["status"]["refused"] = "not this session's"
    assert transcoded_run([chunk_obj(0, "done"), refused]) == (1, [])
    job = build_live_job(OWNER, SPEC, "m" * 16, 3, PodSettings(), [1, 0])
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == [
        "--silent-chunks", "0,1"]


def test_live_job_from_the_watch() -> None:
    obj = build_live_job(OWNER, SPEC, "m" * 16, 4, PodSettings())
    obj["metadata"]["creationTimestamp"] = "2026-12-02T20:59:00Z"
    obj["status"] = {"conditions": [{"type": "Complete", "status": "True"}],
                     "completionTime": "2026-12-02T20:59:09Z"}
    parsed = LiveJob.from_object(obj)
    assert parsed is not None
    assert (parsed.chunks, parsed.state) == (4, D)
    assert parsed.finished == datetime(2026, 12, 2, 20, 59, 9, tzinfo=UTC)
    failed = {**obj, "status": {"conditions": [
        {"type": "Failed", "status": "True", "lastTransitionTime": "2026-12-02T20:59:05Z"}]}}
    parsed_failed = LiveJob.from_object(failed)
    assert parsed_failed is not None and parsed_failed.state is F
    assert parsed_failed.finished == datetime(2026, 12, 2, 20, 59, 5, tzinfo=UTC)
    tx = {"metadata": {"labels": {"voicetrack.dev/component": "transcoder"}}}
    assert LiveJob.from_object(tx) is None


def test_live_status_shape() -> None:
    assert live_status(3, 29_976, "2026-12-02T21:00:00Z") == {
        "chunks": 3, "durationMs": 29_976, "updatedAt": "2026-12-02T21:00:00Z"}


class RecordingKube:
    """A KubeAdapter stand-in that records the calls the service makes (the e2e test runs
    the real one)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def ensure(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(("ensure", manifest["metadata"]["name"]))
        return True

    async def delete_job(self, ns: str, name: str) -> bool:
        self.calls.append(("delete_job", name))
        return True


def _service(interval_s: float) -> tuple[LiveService, RecordingKube]:
    kube = RecordingKube()
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(), live_interval_s=interval_s)
    ctx = Context(settings=settings, kube=kube, db=None)  # type: ignore[arg-type]
    return LiveService(ctx), kube


def _session(state: str, formats: list[str] | None = None) -> SessionView:
    spec: dict[str, Any] = {"guildId": SPEC.guild_id, "channelId": SPEC.channel_id}
    if formats:
        spec["output"] = {"formats": formats}
    return SessionView.parse({
        "metadata": {"name": "standup", "namespace": "team", "uid": "0b6c-uid",
                     "creationTimestamp": "2026-12-02T20:00:00Z"},
        "spec": spec, "status": {"state": state}})


async def test_observe_starts_one_job_only_while_recorded_with_pieces() -> None:
    """A live Job runs for a recorded session whose chunks get MP3 pieces: MP3, FLAC, or
    MP3 and FLAC (before, only MP3 alone, though MP3 + FLAC sessions have the pieces too;
    then not FLAC alone, whose chunks had no pieces before issue 13)."""
    chunks = [chunk_obj(0, "done"), chunk_obj(1, "done")]
    for formats in (None, ["mp3", "flac"], ["flac", "mp3"], ["flac"]):
        service, kube = _service(30)
        assert await service.observe(_session("Recording", formats), chunks, []) == {}
        assert kube.calls == [("ensure", "standup-live-000002")], formats
    for state, formats, interval in (("Pending", None, 30),
                                     ("Recording", ["flac", "opus"], 30),
                                     ("Recording", ["mp3", "opus"], 30),
                                     ("Recording", None, 0)):
        service, kube = _service(interval)
        await service.observe(_session(state, formats), chunks, [])
        assert kube.calls == [], (state, formats, interval)


async def test_s3_away_leaves_the_status_alone_and_does_not_raise() -> None:
    """A completed live Job's manifest cannot be read (S3 at a closed port): the tick
    returns no patch (status.live stays as it was) and the observe goes on."""
    service, kube = _service(30)
    done = build_live_job(OWNER, SPEC, "m" * 16, 2, PodSettings())
    done["metadata"]["creationTimestamp"] = "2026-12-02T20:59:00Z"
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}],
                      "completionTime": "2026-12-02T20:59:09Z"}
    s = _session("Recording")
    s.status["live"] = {"chunks": 1, "durationMs": 4000, "updatedAt": "2026-12-02T20:58:00Z"}
    assert await service.observe(s, [chunk_obj(0, "done"), chunk_obj(1, "done")],
                                 [done]) == {}
    assert kube.calls == []
