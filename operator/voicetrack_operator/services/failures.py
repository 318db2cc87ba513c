"""Why a Job's pod failed, in the tool's own words.

The transcoder, promotion and recorder containers run with `terminationMessagePolicy:
FallbackToLogsOnError`, so the kubelet puts the container's termination message (or, when it
wrote none, the tail of its log) into `status.containerStatuses[].state.terminated.message`
(`lastState` after a restart). That message is the reason; the log is read only when no pod
carries one (a node agent that does not fill it). A structured message
(`voicetrack.termination.TerminationReport`: a promotion that failed on one chunk's raw
input) gives its `reason` as the reason and names the chunk (`bad_chunk`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from voicetrack.resources import GROUP, TranscodeStatus
from voicetrack.termination import EXIT_BAD_INPUT, EXIT_TEMPORARY, TerminationReport


class PodReader(Protocol):
    """What `failure_detail` needs of the Kubernetes adapter."""

    async def job_pods(self, ns: str, job: str) -> list[dict[str, Any]]: ...

    async def pod_log_tail(self, ns: str, name: str, lines: int = 20) -> str: ...


def reason_line(text: str) -> str:
    """The one line that says why: the last `error: …` line of `text`, else its last
    non-empty line, else ''."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else ""


def terminations(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(container name, `terminated` state) of each container of `pod` that terminated,
    its current state before its last state (`status.containerStatuses[]`)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for where in ("state", "lastState"):
            terminated = (cs.get(where) or {}).get("terminated")
            if terminated:
                yield str(cs.get("name") or ""), terminated


def termination_message(pod: dict[str, Any]) -> str:
    """The reason line of a pod's terminated container (current state first, then the last
    state; a `TerminationReport`'s `reason`), '' when no container has terminated with a
    message."""
    for _, terminated in terminations(pod):
        text = str(terminated.get("message") or "")
        report = TerminationReport.parse(text)
        line = reason_line(report.reason if report is not None else text)
        if line:
            return line
    return ""


def bad_chunk(pods: list[dict[str, Any]]) -> int | None:
    """The chunk index the newest of `pods` (a failed Job's) that left a
    `TerminationReport` names, None when none did (a failure no chunk is blamed for)."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""),
                      reverse=True):
        for _, terminated in terminations(pod):
            report = TerminationReport.parse(str(terminated.get("message") or ""))
            if report is not None:
                return report.bad_chunk
    return None


PERMANENT_EXIT_CODE = EXIT_BAD_INPUT
"""The recorder's exit code (2) for an input no retry can fix (token, bucket, credentials)."""
CRASH_LOOP_RESTARTS = 3
"""A recorder restarted this often within its session is failing, whatever its exit code."""
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                           "InvalidImageName"})
"""Waiting reasons of a container that cannot start until someone changes its inputs (a
missing Secret or key, an image name that cannot be)."""
CONFIG_ERROR_GRACE_S = 15.0
"""How long a pod may wait on a configuration error before it counts as failed: a Secret
applied just after the session (one `kubectl apply` of both) still starts it."""


def recorder_failure(pod: dict[str, Any] | None, now: datetime) -> str | None:
    """Why the recorder pod cannot record, None while it can (or may): a container that
    terminated with exit code 2 (now or before its last restart), one that has waited on a
    configuration error since `CONFIG_ERROR_GRACE_S` after the pod was made, or one
    restarted `CRASH_LOOP_RESTARTS` times. The reason is the container's own termination
    message when it left one."""
    created = str(((pod or {}).get("metadata") or {}).get("creationTimestamp") or "")
    age = (now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds() \
        if created else CONFIG_ERROR_GRACE_S
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        for terminated in (state.get("terminated"), last.get("terminated")):
            if terminated and terminated.get("exitCode") == PERMANENT_EXIT_CODE:
                return (reason_line(str(terminated.get("message") or ""))
                        or f"recorder exited with code {PERMANENT_EXIT_CODE} (bad input)")
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in CONFIG_ERRORS and age >= CONFIG_ERROR_GRACE_S:
            return f"recorder cannot start: {waiting['reason']}: {waiting.get('message', '')}"
        restarts = int(cs.get("restartCount") or 0)
        if restarts >= CRASH_LOOP_RESTARTS:
            terminated = last.get("terminated") or {}
            why = (reason_line(str(terminated.get("message") or ""))
                   or f"exit code {terminated.get('exitCode', '?')}")
            return f"recorder restarted {restarts} times; last exit: {why}"
    return None


def failed_reason(job: dict[str, Any]) -> str | None:
    """The reason of a Job's true `Failed` condition (the Job controller's
    `PodFailurePolicy`, `BackoffLimitExceeded`, `DeadlineExceeded`), None while it has not
    failed."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or "")
    return None


def failed_on_input(job: dict[str, Any]) -> bool:
    """True when a failed Job failed on its input: a container exited with
    `PERMANENT_EXIT_CODE` and the Job's `podFailurePolicy` failed it at once (condition
    reason `PodFailurePolicy`). Any other failure (`BackoffLimitExceeded`,
    `DeadlineExceeded`) ran out of retries against an infrastructure fault (S3, the
    node) that may have passed since."""
    return failed_reason(job) == "PodFailurePolicy"


def failed_transiently(job: dict[str, Any]) -> bool:
    """True when a failed transcoder Job failed other than on its input: any Failed
    reason but `PodFailurePolicy` (`BackoffLimitExceeded`: every pod exited with a code
    other than `PERMANENT_EXIT_CODE`, as a transcode does while S3 is away;
    `DeadlineExceeded`: `activeDeadlineSeconds` passed while a pod was Pending, hung on S3,
    or left Terminating on an unreachable node, whose replacement the Job controller holds
    back until it is gone). The raw audio is intact: such a chunk is transcoded again by a
    new Job (issue 11, item 4), up to `TranscodeFailures` limits."""
    reason = failed_reason(job)
    return reason is not None and reason != "PodFailurePolicy"


FAILURE_REASON_MAX = 1000
"""The longest failure reason kept on a meeting row (characters); a longer one is cut."""


def spoken_chunks(objs: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(failed, done) counts of the chunks with tracks among RecordingChunk objects `objs`
    as they are now, refused ones left out: what a meeting without recordings is judged
    by at deletion (`meeting_outcome`), when `status.chunks` is no longer kept up."""
    failed = done = 0
    for obj in objs:
        st = obj.get("status") or {}
        if st.get("refused") or not (obj.get("spec") or {}).get("tracks"):
            continue
        failed += st.get("transcodeStatus") == TranscodeStatus.FAILED.value
        done += st.get("transcodeStatus") == TranscodeStatus.DONE.value
    return failed, done


def meeting_outcome(status: dict[str, Any], recording_ids: list[str],
                    spoken: tuple[int, int] | None = None) -> tuple[str, str | None]:
    """The meeting's final status and failure reason once its session is deleted and
    promoted, from the session's `status` and the recordings written:

    - the recorder could not record (`status.recorderFailure`, the session was Failed):
      `failed`, `RecorderFailed: <the recorder's message>` (what it recorded before is
      kept and listed);
    - recordings were written: `completed`, no reason;
    - every chunk's transcode failed (`status.chunks.failed`, or the failed count of
      `spoken`, `spoken_chunks` of the chunks now): `failed`, with the count (the raw
      chunks are kept under `final/failed/`);
    - chunks with tracks were done but none was kept (`spoken`: every member recorded
      opted out): `cancelled`, saying so;
    - nothing was recorded: `cancelled`, `no audio was recorded`.
    Reasons are cut to `FAILURE_REASON_MAX` characters."""
    recorder = str(status.get("recorderFailure") or "").strip()
    if recorder:
        return "failed", _cut(f"RecorderFailed: {recorder}")
    if recording_ids:
        return "completed", None
    failed = int((status.get("chunks") or {}).get("failed") or 0) if spoken is None \
        else spoken[0]
    if failed:
        return "failed", _cut(f"TranscodeFailed: all {failed} chunk(s) failed to transcode; "
                              "their raw tracks are kept under final/failed/")
    if spoken is not None and spoken[1]:
        return "cancelled", ("every member recorded opted out: no track was kept "
                             "(final/consent.json lists them)")
    return "cancelled", "no audio was recorded"


def _cut(text: str) -> str:
    return text if len(text) <= FAILURE_REASON_MAX else text[: FAILURE_REASON_MAX - 1] + "…"


async def failure_detail(kube: PodReader, ns: str, job_name: str) -> str:
    """The failure reason of Job `job_name`: its newest pod's termination message, else the
    `error:` line of a pod's log tail (fallback), else ''."""
    return await pods_detail(kube, ns, await kube.job_pods(ns, job_name))


async def pods_detail(kube: PodReader, ns: str, pods: list[dict[str, Any]]) -> str:
    """`failure_detail` from a Job's pods `pods` as listed (their logs read only when no pod
    carries a termination message)."""
    pods = sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""),
                  reverse=True)
    for pod in pods:
        message = termination_message(pod)
        if message:
            return message
    for pod in pods:
        text = await kube.pod_log_tail(ns, pod["metadata"]["name"], 10)
        lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
        if lines:
            return lines[-1]
    return ""


# ---------------------------------------------------------------- a failed transcode, again

OOM_KILLED = "OOMKilled"
"""`state.terminated.reason` of a container the kernel killed at its memory limit."""
OOM_KILL_LIMIT = 3
"""Transcoder Jobs of one chunk with a pod OOM-killed, after which the chunk is failed: the
same input at the same memory limit is killed again (each Job already ran `backoffLimit` + 1
pods)."""
FAILURE_LIMIT = 10
"""Transcoder Jobs of one chunk failed other than on its input and other than on an outage
(`OUTAGE_EXIT_CODE`), after which the chunk is failed: a node lost ten times, a deadline
passed ten times. A chunk still pending when its session is deleted is failed by the
transcode timeout anyway."""
OUTAGE_EXIT_CODE = EXIT_TEMPORARY
"""The transcoder's exit code when S3 or the API was away (75, `voicetrack.termination`).
A Job whose every failed pod
exited with it is made again without being counted: an outage is not the chunk's fault,
and its raw audio waits in S3 for as long as the outage lasts (issue 11: outages are
retried without a count limit)."""
FAILURES_ANNOTATION = f"{GROUP}/transcode-failures"
"""RecordingChunk annotation: how many of its transcoder Jobs failed other than on their
input and were deleted to run again (decimal). Written only then: a chunk transcoded at
the first try never carries it (no API write on the normal path)."""
OOM_KILLS_ANNOTATION = f"{GROUP}/transcode-oom-kills"
"""RecordingChunk annotation: how many of those Jobs had a pod OOM-killed (decimal)."""


def outage_only(pods: list[dict[str, Any]]) -> bool:
    """Whether every container of `pods` that terminated with an error exited with
    OUTAGE_EXIT_CODE (S3 or the API away), and at least one did."""
    codes = [int(t["exitCode"]) for pod in pods for _, t in terminations(pod)
             if t.get("exitCode")]
    return bool(codes) and all(code == OUTAGE_EXIT_CODE for code in codes)


def oom_killed(pod: dict[str, Any]) -> str | None:
    """The memory limit (a quantity as the pod's spec gives it, e.g. `768Mi`; '' when it
    has none) of the container of `pod` that was OOM-killed (`state` or `lastState`
    terminated with reason `OOMKilled`), None when no container was."""
    limits = {c.get("name"): str(((c.get("resources") or {}).get("limits") or {})
                                 .get("memory") or "")
              for c in ((pod.get("spec") or {}).get("containers") or [])}
    for name, terminated in terminations(pod):
        if terminated.get("reason") == OOM_KILLED:
            return limits.get(name, "")
    return None


@dataclass(frozen=True)
class TranscodeFailures:
    """How many transcoder Jobs of one chunk failed other than on their input, and how
    many of those had a pod OOM-killed: kept in the chunk's annotations
    (`FAILURES_ANNOTATION`, `OOM_KILLS_ANNOTATION`)."""

    failures: int = 0
    oom_kills: int = 0

    @classmethod
    def of(cls, chunk: dict[str, Any]) -> TranscodeFailures:
        """The counts a RecordingChunk object carries (0 for an absent or unreadable one)."""
        annotations = (chunk.get("metadata") or {}).get("annotations") or {}

        def count(key: str) -> int:
            text = str(annotations.get(key) or "0")
            return int(text) if text.isdecimal() else 0
        return cls(count(FAILURES_ANNOTATION), count(OOM_KILLS_ANNOTATION))

    def after(self, oom_killed: bool) -> TranscodeFailures:
        """The counts once one more Job failed (with a pod OOM-killed when `oom_killed`)."""
        return TranscodeFailures(self.failures + 1, self.oom_kills + oom_killed)

    def annotations(self) -> dict[str, str]:
        return {FAILURES_ANNOTATION: str(self.failures),
                OOM_KILLS_ANNOTATION: str(self.oom_kills)}


class JobRetrier(PodReader, Protocol):
    """What `retry_or_give_up` needs of the Kubernetes adapter."""

    async def get_job(self, ns: str, name: str) -> dict[str, Any] | None: ...

    async def delete_job(self, ns: str, name: str, uid: str | None = None) -> bool: ...

    async def annotate_chunk(self, ns: str, name: str, annotations: dict[str, str]
                             ) -> bool: ...


@dataclass(frozen=True)
class Retry:
    """What `retry_or_give_up` did: `retried` when this call deleted the Job to be made
    again; `give_up`, the chunk's failure reason, once a limit is reached; neither when
    another observer of the same Job acted already."""

    retried: bool = False
    give_up: str | None = None


async def retry_or_give_up(kube: JobRetrier, chunk: dict[str, Any], job: dict[str, Any],
                           reason: str) -> Retry:
    """Decide on transcoder Job `job`, failed other than on its input
    (`failed_transiently`; `reason`: its Failed condition as `job_state` gives it), of
    RecordingChunk `chunk` (read from the API, annotations included).

    The chunk's raw audio is intact, so the Job is deleted (its pods with it) and the
    safety net makes it again, its failure counted on the chunk (`TranscodeFailures`,
    one annotation patch). Once `OOM_KILL_LIMIT` Jobs had a pod OOM-killed, or
    `FAILURE_LIMIT` Jobs failed, the chunk is to be failed instead, with a reason naming
    the cause (the Job left to its TTL, the raw audio kept by promotion). A Job whose pods
    all exited on an outage (`outage_only`) is made again without being counted.

    Idempotent across observers (the Job event, the observe timer's possibly older view):
    only the Job as it is now (same uid, not being deleted) is acted on, and only the call
    whose delete removed it counts the failure. A count lost to an API error after the
    delete costs one Job more. Raises TemporaryFailure while the API is away."""
    meta = job["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    current = await kube.get_job(ns, name)
    if current is None or current["metadata"].get("deletionTimestamp") \
            or (uid is not None and current["metadata"].get("uid") != uid):
        return Retry()  # deleted by another observer, maybe made again already
    pods = await kube.job_pods(ns, name)
    if outage_only(pods):  # S3 or the API away: made again, not counted
        return Retry(retried=await kube.delete_job(ns, name, uid))
    limit = next((m for m in map(oom_killed, pods) if m is not None), None)
    now = TranscodeFailures.of(chunk).after(oom_killed=limit is not None)
    if limit is not None and now.oom_kills >= OOM_KILL_LIMIT:
        return Retry(give_up=(
            f"transcoder OOM-killed in {now.oom_kills} Jobs at its "
            f"{limit or 'unknown'} memory limit (last: {reason}); the raw audio is kept"))
    if now.failures >= FAILURE_LIMIT:
        detail = await pods_detail(kube, ns, pods)
        return Retry(give_up=(
            f"transcode failed in {now.failures} Jobs, never on its input (last: "
            f"{reason}{'; ' + detail if detail else ''}); the raw audio is kept"))
    if not await kube.delete_job(ns, name, uid):
        return Retry()
    await kube.annotate_chunk(ns, chunk["metadata"]["name"], now.annotations())
    return Retry(retried=True)
