"""Issue 11's scenarios 1 and 7 against the real operator process, with the sent-versus-
received oracle of `test_scenarios.py` (each test prints its row `scenario N ...`).

1. operator SIGKILL after a child's create and before the status patch that records it:
   the operator is frozen at exactly that point by the API server itself, a
   ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, built into v1.36) that
   denies the one status write that follows the create, then SIGKILLed; the policy is
   removed and the operator started again. No test-only code path in the operator.
7. two operator replicas briefly overlapping without peering (a second standalone
   operator on the same namespace and database for ~25 s while chunks flow, as in a
   rolling update with peering misconfigured), and Job events that arrive after their
   chunk is done (a late, failed Job of a done chunk; every Job replayed by an operator
   restart's re-list).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.disruptive.test_scenarios import (
    USER,
    Injected,
    Oracle,
    chunk_names,
    chunk_status,
    delete_and_wait,
    inject,
    jobs,
    paused_session,
    session_doc,
    snowflake,
)
from tests.e2e.test_main_job import get, wait_for
from tests.fixtures.stack import Stack
from voicetrack.layout import MeetingLayout
from voicetrack.names import meeting_id_for
from voicetrack_local.stack import OperatorProcess

pytestmark = pytest.mark.disruptive

FROZEN = "scenario-1 freeze"
"""The message of the test's admission denials (found in the operator's log)."""


@contextmanager
def freeze(stack: Stack, ns: str, group: str, resource: str, operation: str,
           allowed: str = "false") -> Iterator[None]:
    """While inside: the API server denies every `operation` on `resource` (a plural, or
    `plural/status` for its status subresource) of API group `group` in namespace `ns`
    unless the CEL expression `allowed` (on `object`, what is written) holds. A dry-run
    CREATE of a RecordingSession is denied too: the probe that shows the policy is in
    force before the block runs (a policy takes effect a moment after it is made; schema
    validation comes first, so the probe is a valid RecordingSession). Removed in a
    finally, and waited for until a dry-run create passes again."""
    plural, _, sub = resource.partition("/")
    name = f"vt-{ns}-{plural}-{sub or operation.lower()}-freeze"
    target = f"request.resource.resource == '{plural}' && " + (
        f"has(request.subResource) && request.subResource == '{sub}'" if sub
        else "!(has(request.subResource) && request.subResource != '')")
    expression = ("has(request.dryRun) && request.dryRun == true ? false : "
                  f"!({target}) || ({allowed})")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [
                     {"apiGroups": ["voicetrack.dev"], "apiVersions": ["*"],
                      "operations": ["CREATE"], "resources": ["recordingsessions"]},
                     {"apiGroups": [group], "apiVersions": ["*"],
                      "operations": [operation], "resources": [resource]}]},
                 "validations": [{"expression": expression, "reason": "Forbidden",
                                  "message": f"{FROZEN} of {operation} {resource}"}]}}
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": ns}}}}}
    probe = session_doc(ns, "freeze-probe", snowflake())  # a dry run: never stored

    def probe_denied() -> bool | None:
        res = stack.kubectl("create", "--dry-run=server", "-f", "-",
                            input=json.dumps(probe), check=False)
        return FROZEN in res.stderr if res.returncode else False

    made = stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [policy, binding]}), check=False)
    assert made.returncode == 0, made.stderr
    try:
        wait_for("the freeze policy in force", probe_denied, 30, every_s=0.3)
        yield
    finally:
        stack.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                      name, "--ignore-not-found", check=False)
        wait_for("the freeze policy gone", lambda: not probe_denied(), 30, every_s=0.3)


def log_size(stack: Stack) -> int:
    try:
        return stack.operator.log_path.stat().st_size
    except OSError:
        return 0


def log_since(stack: Stack, offset: int) -> str:
    with stack.operator.log_path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def sigkill_operator(stack: Stack) -> None:
    assert stack.operator.process is not None
    stack.operator.process.kill()
    stack.operator.process.wait()


def test_scenario_1_operator_sigkilled_between_a_childs_create_and_its_status_patch(
        stack: Stack, e2e_namespace: str) -> None:
    """The windows of the real order, each frozen by an admission policy and ended by a
    SIGKILL:

    - Recorder pod (`SessionService.ensure_session`): meeting row, RBAC, then the Pod,
      then the create handler returns `startedAt`/`recorderPod`, which kopf writes as the
      status patch (after its own annotations patch). Denying `recordingsessions/status`
      stops it right after the Pod exists. On restart (`on.resume`) the status has no
      `startedAt`: the clock must come from the existing Pod (`pod_started_at`), the Pod
      is the same (uid) and no second one is made.
    - Transcoder Job (`ChunkService.ensure_chunk`): the chunk's `queued` status is
      written BEFORE the Job is created (so a kill before the Job leaves a queued chunk
      the observe timer re-ensures), so the status patch after the Job's create is
      `observe_job`'s done. Allowing only `queued` chunk statuses stops the operator with
      the Jobs made and run to Complete and their chunks still queued. On restart the
      Jobs (the same uids, one per chunk) are observed and every chunk ends done with a
      verified output, transcoded once (one pod per Job).
    - The earlier chunk window: `queued` written, the Job's create denied (`batch/jobs`
      CREATE). On restart the chunk has a status, so its event handler leaves it; the
      observe timer's safety net (a chunk older than `SAFETY_NET_AGE_S` with no Job)
      makes the Job, once."""
    ns = e2e_namespace
    name = "kill1"
    guild = snowflake()
    pod_name = f"{name}-rec"
    down = False
    try:
        # window 1: after the recorder Pod's create, before the session's status patch
        with freeze(stack, ns, "voicetrack.dev", "recordingsessions/status", "UPDATE"):
            mark = log_size(stack)
            doc = session_doc(ns, name, guild, paused=True, source={
                "type": "files", "speakers": [{"userId": USER,
                                               "objectKey": "e2e-input/none"}]})
            made = stack.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
            assert made.returncode == 0, made.stderr
            pod = wait_for("the recorder pod", lambda: get(stack, ns, "pod", pod_name), 60,
                           every_s=0.2)
            wait_for("the session's status patch denied", lambda: FROZEN in log_since(
                stack, mark), 30, every_s=0.3)
            session = get(stack, ns, "recsess", name)
            assert session is not None
            assert not (session.get("status") or {}).get("startedAt"), session["status"]
            sigkill_operator(stack)
            down = True
        stack.operator.start()
        down = False
        pod_env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        pod_clock_ms = int(pod_env["VOICETRACK_SESSION_STARTED_AT_MS"])
        session = wait_for("startedAt after the restart", lambda: (lambda o: o if (
            (o or {}).get("status") or {}).get("startedAt") else None)(
            get(stack, ns, "recsess", name)), 60)
        started = session["status"]["startedAt"]
        started_ms = int(datetime.fromisoformat(started.replace("Z", "+00:00"))
                         .timestamp() * 1000)
        assert started_ms == pod_clock_ms, (started, pod_clock_ms)
        now_pod = get(stack, ns, "pod", pod_name)
        assert now_pod is not None and now_pod["metadata"]["uid"] == pod["metadata"]["uid"]
        recorders = json.loads(stack.kubectl("-n", ns, "get", "pods", "-l",
                                             "voicetrack.dev/component=recorder", "-o",
                                             "json").stdout)["items"]
        assert [p["metadata"]["name"] for p in recorders] == [pod_name], recorders
        meeting_id = meeting_id_for(session["metadata"]["uid"], None)
        meeting = stack.db(lambda svc: svc.get_meeting(meeting_id))
        row_start = meeting.started_at if meeting.started_at.tzinfo \
            else meeting.started_at.replace(tzinfo=UTC)
        assert int(row_start.timestamp() * 1000) == pod_clock_ms, meeting
        print(f"recorder pod {pod_name} (uid {pod['metadata']['uid'][:8]}) kept; "
              f"startedAt {started} = the pod's clock {pod_clock_ms} = the meeting row's")

        # window 2: after the transcoder Jobs' create, before the chunks' done patch
        created = datetime.fromisoformat(session["metadata"]["creationTimestamp"]
                                         .replace("Z", "+00:00"))
        s = Injected(name, session["metadata"]["uid"], session["status"]["meetingId"],
                     MeetingLayout("recordings", guild, session["status"]["meetingId"]),
                     created)
        oracle = Oracle(stack, ns, name)
        names = [f"{name}-tx-{i:06d}" for i in range(4)]
        windows = [(0, 5000), (5000, 10_000), (10_000, 15_000), (15_000, 20_000)]
        with freeze(stack, ns, "voicetrack.dev", "recordingchunks/status", "UPDATE",
                    "!has(object.status) || !has(object.status.transcodeStatus) "
                    "|| object.status.transcodeStatus == 'queued'"):
            mark = log_size(stack)
            inject(stack, ns, s, windows, only=[0, 1, 2])
            wait_for("three Jobs complete", lambda: sum(
                1 for j in jobs(stack, ns) if j["metadata"]["name"] in names[:3]
                and (j.get("status") or {}).get("succeeded")) == 3, 120, every_s=0.5)
            wait_for("a done patch denied", lambda: FROZEN in log_since(stack, mark), 30,
                     every_s=0.3)
            at_kill = {int(c["spec"]["index"]): chunk_status(c) for c in oracle.poll()}
            assert at_kill == {0: "queued", 1: "queued", 2: "queued"}, at_kill
            uids = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(stack, ns)}
            sigkill_operator(stack)
            down = True
        stack.operator.start()
        down = False
        wait_for("chunks 0-2 done", lambda: [chunk_status(c) for c in oracle.poll()]
                 == ["done"] * 3, 90, every_s=1)
        after = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(stack, ns)}
        assert after == uids and sorted(after) == names[:3], (uids, after)
        print(f"chunks at the kill: {at_kill}; Jobs after the restart: the same "
              f"{len(after)}")

        # window 3 (the earlier one of the real order): chunk 3's `queued` written, its
        # Job's create not yet made
        with freeze(stack, ns, "batch", "jobs", "CREATE"):
            mark = log_size(stack)
            inject(stack, ns, s, windows, only=[3])
            wait_for("chunk 3's Job create denied", lambda: FROZEN in log_since(
                stack, mark), 60, every_s=0.3)
            chunk3 = get(stack, ns, "recchunk", f"{name}-chunk-000003")
            assert chunk_status(chunk3) == "queued", chunk3
            assert get(stack, ns, "job", names[3]) is None
            sigkill_operator(stack)
            down = True
        stack.operator.start()
        down = False
    finally:
        if down or stack.operator.process is None \
                or stack.operator.process.poll() is not None:
            stack.operator.start()
    wait_for("every chunk done", lambda: [chunk_status(c) for c in oracle.poll()]
             == ["done"] * 4, 90, every_s=1)
    tx = sorted(j["metadata"]["name"] for j in jobs(stack, ns))
    assert tx == names, tx
    for job_name in names:  # each ran once: one pod, no second transcode
        pods = json.loads(stack.kubectl("-n", ns, "get", "pods", "-l",
                                        f"job-name={job_name}", "-o", "json").stdout)["items"]
        assert len(pods) == 1, (job_name, [p["metadata"]["name"] for p in pods])
    print("chunk 3 queued without its Job at the kill: its Job made once after the "
          "restart; one pod per Job")
    row = oracle.row("1 operator SIGKILL after child create, before its status patch",
                     s.meeting, final=False)
    assert row["lost"] == [] and row["done"] == [0, 1, 2, 3], row
    delete_and_wait(stack, ns, name, oracle)
    row = oracle.row("1 (after promotion)", s.meeting, final=True)
    assert row["lost"] == [] and row["done"] == [0, 1, 2, 3], row


def done_counter(metrics: str) -> float:
    m = re.search(r'^voicetrack_chunks_total\{status="done"\} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_scenario_7_two_operators_overlapping_without_peering_lose_and_double_nothing(
        stack: Stack, e2e_namespace: str, tmp_path: Path) -> None:
    """A second standalone operator (no peering: both act) serves the same namespace with
    the same database and S3 for ~25 s while six chunks arrive, two at a time, and is then
    stopped (SIGTERM, as a rolling update does); two more chunks arrive after. Both race on
    every chunk event, Job event and observe tick: the conditional status patches, the 409
    on the deterministic Job name and the row upserts keep one Job (one pod) and one set
    of outputs per chunk, and each chunk counted done once across both operators."""
    ns = e2e_namespace
    name = "twin"
    s = paused_session(stack, ns, name, snowflake())
    oracle = Oracle(stack, ns, name)
    windows = [(i * 5000, (i + 1) * 5000) for i in range(8)]
    before = done_counter(stack.operator.metrics())
    twin = OperatorProcess(stack.kubeconfig, stack.s3, stack.database_url,
                           tmp_path / "twin.log", extra_env={
                               "VOICETRACK_LOG_LEVEL": "INFO", "VOICETRACK_NAMESPACES": ns,
                               "VOICETRACK_LIVE_INTERVAL_SECONDS": "0"})
    twin.start()
    overlap_started = time.monotonic()
    try:
        for pair in ([0, 1], [2, 3], [4, 5]):
            inject(stack, ns, s, windows, only=pair)
            oracle.poll()
            time.sleep(6)
        wait_for("the overlap's chunks done", lambda: sum(
            chunk_status(c) == "done" for c in oracle.poll()) == 6, 90, every_s=0.5)
        twin_done = done_counter(twin.metrics())
    finally:
        twin.stop()
        print(f"second operator ran {time.monotonic() - overlap_started:.0f} s; its log "
              f"tail:\n{twin.tail(15)}")
    inject(stack, ns, s, windows, only=[6, 7])
    wait_for("every chunk done", lambda: [chunk_status(c) for c in oracle.poll()]
             == ["done"] * 8, 90, every_s=0.5)
    main_done = done_counter(stack.operator.metrics()) - before
    print(f"chunks counted done: {main_done:.0f} by the shared operator, {twin_done:.0f} by "
          f"the second (8 chunks)")
    assert main_done + twin_done == 8, (main_done, twin_done)
    tx = sorted(j["metadata"]["name"] for j in jobs(stack, ns))
    assert tx == [f"{name}-tx-{i:06d}" for i in range(8)], tx
    for job_name in tx:
        pods = json.loads(stack.kubectl("-n", ns, "get", "pods", "-l",
                                        f"job-name={job_name}", "-o", "json").stdout)["items"]
        assert len(pods) == 1, (job_name, [p["metadata"]["name"] for p in pods])
    reference = chunk_names(stack, s, 0)
    for i in range(8):
        assert chunk_names(stack, s, i) == reference, (i, reference)
    rows = stack.db(lambda svc: svc.get_temp_recordings_for_meeting(s.meeting))
    assert sorted(r.chunk_index for r in rows) == list(range(8)), rows
    row = oracle.row("7 two operators overlapping without peering", s.meeting, final=False)
    assert row["lost"] == [] and row["done"] == list(range(8)), row
    delete_and_wait(stack, ns, name, oracle)
    row = oracle.row("7 (after promotion)", s.meeting, final=True)
    assert row["lost"] == [] and row["done"] == list(range(8)), row


def test_scenario_7_job_events_after_the_chunk_is_done_never_move_it(
        stack: Stack, e2e_namespace: str) -> None:
    """Job events that arrive after their chunk is done, as the watches really deliver
    them: (a) a late, failed Job of chunk 1 (a copy of its Job, as an older attempt or a
    lagging replica's would be, whose pod exits 2: its events are ADDED, active, then
    Failed) after chunk 1 is done; (b) an operator restart, whose re-list replays every
    Job (Complete) and every chunk (done) in whatever order. Forward-only: neither writes
    the chunks again (resourceVersions unchanged), no error appears, the rows keep their
    sha256 and completion time, and nothing is transcoded again."""
    ns = e2e_namespace
    name = "late"
    s = paused_session(stack, ns, name, snowflake())
    oracle = Oracle(stack, ns, name)
    inject(stack, ns, s, [(0, 5000), (5000, 10_000)], only=[0, 1])
    wait_for("both chunks done", lambda: [chunk_status(c) for c in oracle.poll()]
             == ["done", "done"], 90, every_s=0.5)

    def snapshot() -> tuple[dict[str, str], dict[int, tuple[Any, ...]]]:
        versions = {c["metadata"]["name"]: c["metadata"]["resourceVersion"]
                    for c in oracle.poll()}
        rows = {r.chunk_index: (str(r.transcode_status), r.sha256, r.completed_at, r.error)
                for r in stack.db(lambda svc: svc.get_temp_recordings_for_meeting(s.meeting))}
        return versions, rows

    first = snapshot()
    job = get(stack, ns, "job", f"{name}-tx-000001")
    assert job is not None
    late = json.loads(json.dumps(job))
    late["metadata"] = {"name": f"{name}-tx-000001-late", "namespace": ns,
                        "labels": job["metadata"]["labels"],
                        "ownerReferences": job["metadata"]["ownerReferences"]}
    late["spec"].pop("selector", None)
    late["spec"]["backoffLimit"] = 0
    labels = late["spec"]["template"]["metadata"]["labels"]
    for k in [k for k in labels if "controller-uid" in k or "job-name" in k]:
        labels.pop(k)
    late["spec"]["template"]["spec"]["containers"][0]["args"] = ["chunk", "--no-such-option"]
    late.pop("status", None)
    stack.kubectl("apply", "-f", "-", input=json.dumps(late))
    failed = wait_for("the late Job failed", lambda: (lambda j: j if j and any(
        c["type"] == "Failed" and c["status"] == "True"
        for c in (j.get("status") or {}).get("conditions") or []) else None)(
        get(stack, ns, "job", f"{name}-tx-000001-late")), 90, every_s=0.5)
    time.sleep(6)  # its events handled, and three observe ticks
    second = snapshot()
    assert second == first, (first, second)

    sigkill_operator(stack)
    try:
        time.sleep(1)
    finally:
        stack.operator.start()
    time.sleep(8)  # the re-list replayed, and a few observe ticks
    third = snapshot()
    assert third == first, (first, third)
    st = get(stack, ns, "recchunk", f"{name}-chunk-000001")["status"]  # type: ignore[index]
    assert st["transcodeStatus"] == "done" and not st.get("error"), st
    reason = next(c["reason"] for c in failed["status"]["conditions"] if c["type"] == "Failed")
    print(f"late Job of done chunk 1 failed ({reason}); chunk resourceVersions and rows "
          f"unchanged after it and after a restart's replay: {first[0]}")
    tx = sorted(j["metadata"]["name"] for j in jobs(stack, ns))
    assert tx == [f"{name}-tx-000000", f"{name}-tx-000001", f"{name}-tx-000001-late"], tx
    row = oracle.row("7 Job events after the chunk is done (late failed Job, restart replay)",
                     s.meeting, final=False)
    assert row["lost"] == [] and row["done"] == [0, 1], row
    delete_and_wait(stack, ns, name, oracle)
    row = oracle.row("7 (after promotion)", s.meeting, final=True)
    assert row["lost"] == [] and row["done"] == [0, 1], row
