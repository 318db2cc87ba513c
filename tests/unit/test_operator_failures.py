"""Failure reasons from pod status, the builders that make the kubelet write them, and the
deletion progress kept in status: pure functions, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from voicetrack.chunkspec import ChunkSpec
from voicetrack.resources import SessionSpec
from voicetrack_operator.builders import (
    PodSettings,
    SessionRef,
    build_promote_job,
    build_recorder_pod,
    build_transcode_job,
)
from voicetrack_operator.services.deletion import DeletionProgress, DeletionStep
from voicetrack_operator.services.failures import (
    failed_on_input,
    failed_transiently,
    failure_detail,
    reason_line,
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
