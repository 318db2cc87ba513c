"""Issue 11's scenario 1 against the real operator process, with the sent-versus-
received oracle of `test_scenarios.py` (each test prints its row `scenario N ...`).

1. operator SIGKILL after a child's create and before the status patch that records it:
   the operator is frozen at exactly that point by the API server itself, a
   ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1, built into v1.36) that
   denies the one status write that follows the create, then SIGKILLed; the policy is
   removed and the operator started again. No test-only code path in the operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from tests.disruptive.test_scenarios import (
    USER,
    Injected,
    Oracle,
    chunk_status,
    delete_and_wait,
    inject,
    jobs,
    session_doc,
    snowflake,
)
from tests.e2e.test_main_job import get, wait_for
from tests.fixtures.stack import Stack
from voicetrack.layout import MeetingLayout
from voicetrack.resources import meeting_id_for

pytestmark = pytest.mark.disruptive

FROZEN = "scenario-1 freeze"
"""The message of the test's admission denials (found in the operator's log)."""


@contextmanager
def status_freeze(stack: Stack, ns: str, plural: str, allowed: str) -> Iterator[None]:
    """While inside: the API server denies every UPDATE of `<plural>/status` in namespace
    `ns` unless the CEL expression `allowed` (on `object`, the status written) holds. A
    dry-run CREATE of a RecordingSession is denied too: the probe that shows the policy is in force
    before the block runs (a policy takes effect a moment after it is made; schema
    validation comes first, so the probe is a valid RecordingSession). Removed in a
    finally, and waited for until a dry-run create passes again."""
    name = f"vt-{ns}-{plural}-freeze"
    expression = ("has(request.dryRun) && request.dryRun == true ? false : "
                  "!(has(request.subResource) && request.subResource == 'status') "
                  f"|| ({allowed})")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [
                     {"apiGroups": ["voicetrack.dev"], "apiVersions": ["*"],
                      "operations": ["CREATE"], "resources": ["recordingsessions"]},
                     {"apiGroups": ["voicetrack.dev"], "apiVersions": ["*"],
                      "operations": ["UPDATE"], "resources": [f"{plural}/status"]}]},
                 "validations": [{"expression": expression, "reason": "Forbidden",
                                  "message": f"{FROZEN} of {plural}/status"}]}}
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
    """The two windows of the real order, each frozen by an admission policy and ended by
    a SIGKILL:

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
      verified output, transcoded once (one pod per Job)."""
    ns = e2e_namespace
    name = "kill1"
    guild = snowflake()
    pod_name = f"{name}-rec"
    down = False
    try:
        # window 1: after the recorder Pod's create, before the session's status patch
        with status_freeze(stack, ns, "recordingsessions", "false"):
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
        names = [f"{name}-tx-{i:06d}" for i in range(3)]
        with status_freeze(stack, ns, "recordingchunks",
                           "!has(object.status) || !has(object.status.transcodeStatus) "
                           "|| object.status.transcodeStatus == 'queued'"):
            mark = log_size(stack)
            inject(stack, ns, s, [(0, 5000), (5000, 10_000), (10_000, 15_000)],
                   only=[0, 1, 2])
            wait_for("three Jobs complete", lambda: sum(
                1 for j in jobs(stack, ns) if j["metadata"]["name"] in names
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
    finally:
        if down or stack.operator.process is None \
                or stack.operator.process.poll() is not None:
            stack.operator.start()
    wait_for("every chunk done", lambda: all(chunk_status(c) == "done"
                                             for c in oracle.poll()), 90, every_s=1)
    after = {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs(stack, ns)}
    assert after == uids and sorted(after) == names, (uids, after)
    for job_name in names:  # each ran once: one pod, no second transcode
        pods = json.loads(stack.kubectl("-n", ns, "get", "pods", "-l",
                                        f"job-name={job_name}", "-o", "json").stdout)["items"]
        assert len(pods) == 1, (job_name, [p["metadata"]["name"] for p in pods])
    print(f"chunks at the kill: {at_kill}; Jobs after the restart: the same "
          f"{len(after)} (one pod each)")
    row = oracle.row("1 operator SIGKILL after child create, before its status patch",
                     s.meeting, final=False)
    assert row["lost"] == [] and row["done"] == [0, 1, 2], row
    delete_and_wait(stack, ns, name, oracle)
    row = oracle.row("1 (after promotion)", s.meeting, final=True)
    assert row["lost"] == [] and row["done"] == [0, 1, 2], row
