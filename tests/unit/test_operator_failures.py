"""Failure reasons from pod status, the builders that make the kubelet write them, and the
deletion progress kept in status: pure functions, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from voicetrack.chunkspec import ChunkSpec
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import PodSettings, SessionRef, build_recorder_pod
from voicetrack_operator.jobs import build_promote_job, build_transcode_job
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.failures import (
    FAILURE_LIMIT,
    FAILURES_ANNOTATION,
    OOM_KILL_LIMIT,
    OOM_KILLS_ANNOTATION,
    OUTAGE_EXIT_CODE,
    Retry,
    TranscodeFailures,
    failed_on_input,
    failed_transiently,
    failure_detail,
    oom_killed,
    reason_line,
    retry_or_give_up,
    termination_message,
)

pytestmark = pytest.mark.unit

OWNER = SessionRef(name="standup", namespace="team", uid="0b6c-uid")
SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest["spec"]
    return list((spec["template"]["spec"] if "template" in spec else spec)["containers"])


def test_every_container_reports_its_failure_in_its_status() -> None:
    """Fails before b03a257: no container set terminationMessagePolicy, so a real kubelet
    left `state.terminated.message` empty for a tool that only prints its error."""
    chunk = ChunkSpec(session_name="standup", meeting_id="m" * 16, guild_id=SPEC.guild_id,
                      index=3, start_ms=0, end_ms=5000)
    manifests = [build_recorder_pod(OWNER, SPEC, "m" * 16, 0, PodSettings()),
                 build_transcode_job(OWNER, chunk, SPEC, PodSettings()),
                 build_promote_job(OWNER, "plan.json", SPEC, PodSettings())]
    for manifest in manifests:
        for c in containers(manifest):
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError", c["name"]


def test_reason_line_prefers_the_tools_error_line() -> None:
    log = "reading chunk 3\nerror: ffmpeg: Invalid data found\nexiting\n"
    assert reason_line(log) == "error: ffmpeg: Invalid data found"
    assert reason_line("  \nKilled\n\n") == "Killed"
    assert reason_line("") == ""


def pod(name: str, created: str, state: dict[str, Any] | None = None,
        last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs = {"name": "transcoder", "state": state or {}, "lastState": last or {}}
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"containerStatuses": [cs]}}


def test_termination_message_reads_state_then_last_state() -> None:
    failed = {"terminated": {"exitCode": 2, "message": "error: bad chunk\n"}}
    assert termination_message(pod("a", "t", state=failed)) == "error: bad chunk"
    assert termination_message(pod("a", "t", last=failed)) == "error: bad chunk"
    assert termination_message(pod("a", "t", state={"terminated": {"exitCode": 1}})) == ""
    assert termination_message({"metadata": {"name": "a"}}) == ""


class Pods:
    """A PodReader over fixed pods and logs, recording which logs were read."""

    def __init__(self, pods: list[dict[str, Any]], logs: dict[str, str]) -> None:
        self.pods, self.logs = pods, logs
        self.read: list[str] = []

    async def job_pods(self, ns: str, job: str) -> list[dict[str, Any]]:
        return self.pods

    async def pod_log_tail(self, ns: str, name: str, lines: int = 20) -> str:
        self.read.append(name)
        return self.logs.get(name, "")


async def test_failure_detail_reads_the_newest_message_and_no_log() -> None:
    old = pod("tx-a", "2026-01-01T00:00:00Z",
              state={"terminated": {"exitCode": 1, "message": "error: first try"}})
    new = pod("tx-b", "2026-01-01T00:01:00Z",
              state={"terminated": {"exitCode": 2, "message": "error: second try"}})
    reader = Pods([old, new], {"tx-b": "error: from the log"})
    assert await failure_detail(reader, "ns", "tx") == "error: second try"
    assert reader.read == []


async def test_failure_detail_falls_back_to_the_log_when_no_message() -> None:
    reader = Pods([pod("tx-a", "t", state={"terminated": {"exitCode": 2}})],
                  {"tx-a": "progress\nerror: from the log\n"})
    assert await failure_detail(reader, "ns", "tx") == "error: from the log"
    assert await failure_detail(Pods([], {}), "ns", "tx") == ""


def test_deletion_progress_round_trips_and_unreadable_starts_over() -> None:
    p = DeletionProgress(DeletionStep.COLLECT, promoted=True, recording_ids=["r1", "r2"])
    assert p.to_api() == {"step": "collect", "promoted": True, "recordingIds": ["r1", "r2"]}
    assert DeletionProgress.from_status({"deletion": p.to_api()}) == p
    assert DeletionProgress.from_status({}) == DeletionProgress(DeletionStep.STOP)
    assert DeletionProgress.from_status({"deletion": {"step": "bogus"}}).step is \
        DeletionStep.STOP


@pytest.mark.parametrize(("reason", "on_input"), [
    ("PodFailurePolicy", True), ("BackoffLimitExceeded", False),
    ("DeadlineExceeded", False)])
def test_only_a_pod_failure_policy_failure_is_an_input_failure(reason: str,
                                                               on_input: bool) -> None:
    """A promotion Job whose retries ran out while S3 was away is run again (issue 11
    scenario 6); only the exit-2 failure keeps it failed."""
    job = {"status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": reason},
        {"type": "Failed", "status": "True", "reason": reason}]}}
    assert failed_on_input(job) is on_input
    assert not failed_on_input({"status": {"active": 1}})


@pytest.mark.parametrize(("reason", "transient"), [
    ("PodFailurePolicy", False), ("BackoffLimitExceeded", True),
    ("DeadlineExceeded", True)])
def test_every_transcode_failure_but_on_input_is_made_again(reason: str,
                                                            transient: bool) -> None:
    """A transcoder Job whose pods all failed while S3 was away is made again (issue 11
    item 4: its chunk was failed for good and its intact raw audio became silence); one
    failed on input (exit 2) stays failed. `DeadlineExceeded` was kept failed before (this
    test asserted it): a pod left Terminating on an unreachable node (the Job controller
    makes no replacement while a pod terminates, with a podFailurePolicy), Pending, or hung
    on S3 for 600 s turned intact audio into silence; only exit 2 judges the input."""
    job = {"status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": reason},
        {"type": "Failed", "status": "True", "reason": reason}]}}
    assert failed_transiently(job) is transient
    assert not failed_transiently({"status": {"active": 1}})


# ---------------------------------------------------------------- retry_or_give_up

CHUNK = ChunkSpec(session_name="standup", meeting_id="m" * 16, guild_id=SPEC.guild_id,
                  index=3, start_ms=0, end_ms=5000)
JOB_UID = "7d0c1e2f-0000-4000-8000-000000000003"


def failed_job(reason: str, message: str) -> dict[str, Any]:
    """The transcoder Job as the API server holds it once the Job controller failed it."""
    job = build_transcode_job(OWNER, CHUNK, SPEC, PodSettings())
    job["metadata"].update(uid=JOB_UID, resourceVersion="812",
                           creationTimestamp="2026-01-01T00:00:00Z")
    job["status"] = {"failed": 4, "startTime": "2026-01-01T00:00:00Z", "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
        {"type": "Failed", "status": "True", "reason": reason, "message": message}]}
    return job


def job_pod(job: dict[str, Any], n: int, state: dict[str, Any] | None = None,
            phase: str = "Failed") -> dict[str, Any]:
    """One pod of `job` as the kubelet reports it (`state`: the container's state)."""
    name = f"{job['metadata']['name']}-{n}"
    cs = {"name": "transcoder", "ready": False, "restartCount": 0, "image": "t",
          "state": state or {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}
    return {"metadata": {"name": name, "namespace": "team",
                         "creationTimestamp": f"2026-01-01T00:0{n}:00Z",
                         "labels": {"job-name": job["metadata"]["name"]}},
            "spec": job["spec"]["template"]["spec"],
            "status": {"phase": phase, "containerStatuses": [cs]}}


OOM = {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                      "startedAt": "2026-01-01T00:00:01Z", "finishedAt": "2026-01-01T00:00:09Z"}}


def chunk_obj(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "standup-chunk-000003", "namespace": "team",
                            "resourceVersion": "800"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": CHUNK.to_api(), "status": {"transcodeStatus": "queued"}}


class Jobs(Pods):
    """A JobRetrier over one Job (None once deleted) and its pods, recording its writes."""

    def __init__(self, job: dict[str, Any] | None, pods: list[dict[str, Any]],
                 logs: dict[str, str] | None = None) -> None:
        super().__init__(pods, logs or {})
        self.job = job
        self.writes: list[tuple[str, Any]] = []

    async def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.job

    async def delete_job(self, ns: str, name: str, uid: str | None = None) -> bool:
        self.writes.append(("delete", uid))
        if self.job is None or uid not in (None, self.job["metadata"]["uid"]):
            return False  # 404, or 409: the precondition failed
        self.job = None
        return True

    async def annotate_chunk(self, ns: str, name: str, annotations: dict[str, str]
                             ) -> bool:
        self.writes.append(("annotate", annotations))
        return True


async def test_a_job_past_its_deadline_is_deleted_and_counted() -> None:
    """Its pod never ran (Pending, or Terminating on a lost node): the Job is deleted (only
    that Job: its uid as precondition) and the failure counted on the chunk."""
    job = failed_job("DeadlineExceeded", "Job was active longer than specified deadline")
    kube = Jobs(job, [job_pod(job, 0, phase="Pending")])
    retry = await retry_or_give_up(kube, chunk_obj(), job, "DeadlineExceeded: …")
    assert retry == Retry(retried=True)
    assert kube.writes == [("delete", JOB_UID), ("annotate", {
        FAILURES_ANNOTATION: "1", OOM_KILLS_ANNOTATION: "0"})]
    # the same Job seen again (the timer's older view, its deletion event): nothing more
    assert await retry_or_give_up(kube, chunk_obj(), job, "DeadlineExceeded: …") == Retry()
    assert len(kube.writes) == 2


async def test_a_job_deleted_or_made_again_since_it_was_seen_is_left_alone() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    newer = {**job, "metadata": {**job["metadata"], "uid": "another"}, "status": {}}
    for current in (None, newer, {**job, "metadata": {
            **job["metadata"], "deletionTimestamp": "2026-01-01T00:10:00Z"}}):
        kube = Jobs(current, [])
        assert await retry_or_give_up(kube, chunk_obj(), job, "x") == Retry()
        assert kube.writes == []


async def test_a_chunk_oom_killed_in_three_jobs_is_failed_naming_the_cause() -> None:
    """Fails before the limit: a chunk whose transcoder is OOM-killed at 768Mi (many
    speakers of PCM) was transcoded again for ever, several pods a cycle, and became
    silence at deletion anyway. The third such Job fails it, saying why."""
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    pods = [job_pod(job, n, OOM) for n in range(4)]
    kube = Jobs(job, pods)
    retry = await retry_or_give_up(kube, chunk_obj({FAILURES_ANNOTATION: "1",
                                                    OOM_KILLS_ANNOTATION: "1"}), job, "B")
    assert retry == Retry(retried=True)
    assert kube.writes[-1] == ("annotate", {FAILURES_ANNOTATION: "2",
                                            OOM_KILLS_ANNOTATION: "2"})
    kube = Jobs(job, pods)
    retry = await retry_or_give_up(kube, chunk_obj({FAILURES_ANNOTATION: "2",
                                                    OOM_KILLS_ANNOTATION: "2"}), job,
                                   "BackoffLimitExceeded: Job has reached the specified "
                                   "backoff limit")
    assert retry.give_up is not None and not retry.retried
    assert retry.give_up.startswith(
        f"transcoder OOM-killed in {OOM_KILL_LIMIT} Jobs at its 768Mi memory limit")
    assert "raw audio is kept" in retry.give_up
    assert kube.writes == []  # left to its TTL; the chunk's status says the rest


async def test_a_chunk_failing_other_than_on_input_is_failed_at_the_limit() -> None:
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    crashed = {"terminated": {"exitCode": 1, "reason": "Error",
                              "message": "error: ffmpeg: Assertion failed\n"}}
    kube = Jobs(job, [job_pod(job, 0, crashed)])
    counts = {FAILURES_ANNOTATION: str(FAILURE_LIMIT - 1), OOM_KILLS_ANNOTATION: "0"}
    retry = await retry_or_give_up(kube, chunk_obj(counts), job, "BackoffLimitExceeded: x")
    assert retry.give_up == (f"transcode failed in {FAILURE_LIMIT} Jobs, never on its "
                             "input (last: BackoffLimitExceeded: x; error: ffmpeg: Assertion "
                             "failed); the raw audio is kept")
    assert kube.writes == []


async def test_an_outage_is_made_again_without_being_counted() -> None:
    """Issue 11 retried an S3 outage without a count limit; the failure limit must not
    end that: a Job whose every pod exited 75 (the transcoder's TemporaryFailure: S3 or
    the API away) is deleted to run again and not counted, even past the limit. Failed
    before: at FAILURE_LIMIT - 1 it gave the chunk up."""
    job = failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    away = {"terminated": {"exitCode": OUTAGE_EXIT_CODE, "reason": "Error",
                           "message": "TemporaryFailure: S3 unreachable"}}
    counts = {FAILURES_ANNOTATION: str(FAILURE_LIMIT - 1), OOM_KILLS_ANNOTATION: "0"}
    kube = Jobs(job, [job_pod(job, n, away) for n in range(4)])
    assert await retry_or_give_up(kube, chunk_obj(counts), job, "B") == Retry(retried=True)
    assert kube.writes == [("delete", JOB_UID)]  # no count written
    mixed = Jobs(job, [job_pod(job, 0, away), job_pod(job, 1, {"terminated": {
        "exitCode": 1, "reason": "Error"}})])
    assert (await retry_or_give_up(mixed, chunk_obj(counts), job, "B")).give_up


def test_failure_counts_read_from_annotations_unreadable_as_none() -> None:
    assert TranscodeFailures.of(chunk_obj()) == TranscodeFailures()
    assert TranscodeFailures.of(chunk_obj({FAILURES_ANNOTATION: "x",
                                           OOM_KILLS_ANNOTATION: "-2"})) == TranscodeFailures()
    assert TranscodeFailures(2, 1).after(oom_killed=True) == TranscodeFailures(3, 2)
    job = failed_job("BackoffLimitExceeded", "")
    assert oom_killed(job_pod(job, 0, OOM)) == "768Mi"
    assert oom_killed(job_pod(job, 0, {"terminated": {"exitCode": 1, "reason": "Error"}})) \
        is None
    restarted = job_pod(job, 0, {"running": {}})
    restarted["status"]["containerStatuses"][0]["lastState"] = OOM
    assert oom_killed(restarted) == "768Mi"
