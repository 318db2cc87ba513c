"""The node agent's pod status (:mod:`voicetrack_local.nodeagent.podstatus`): phase,
restarts, terminated states and termination messages, computed without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from voicetrack_local.nodeagent.container import BACKOFF_MAX, BACKOFF_START, Container
from voicetrack_local.nodeagent.podstatus import (
    FALLBACK_LOG_BYTES,
    MAX_MESSAGE_BYTES,
    adopt_terminal,
    after_exit,
    comparable,
    container_status,
    exited_state,
    pod_phase,
    pod_status,
    should_restart,
    termination_message,
)

pytestmark = pytest.mark.unit

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z"
FALLBACK = {"terminationMessagePolicy": "FallbackToLogsOnError"}


def ctr(name: str = "c", init: bool = False, **spec: Any) -> Container:
    return Container(name, {"name": name, "image": "img", **spec}, init)


def running(c: Container, pid: int = 4242) -> Container:
    c.pid, c.state = pid, {"running": {"startedAt": T0}}
    return c


def exited(c: Container, code: int, policy: str = "Never", message: str = "") -> Container:
    c.state = exited_state(code, T0, T1, 4242, message)
    after_exit(c, code, policy, now=100.0, pod_ref="p_ns(u)")
    return c


def test_exited_state_reason_exit_code_and_message() -> None:
    ok = exited_state(0, T0, T1, 7, "")["terminated"]
    assert ok == {"exitCode": 0, "reason": "Completed", "startedAt": T0, "finishedAt": T1,
                  "containerID": "voicetrack://7"}  # fmt: skip
    bad = exited_state(2, T0, T1, 7, "bad input")["terminated"]
    assert (bad["exitCode"], bad["reason"], bad["message"]) == (2, "Error", "bad input")


@pytest.mark.parametrize(
    ("init", "policy", "code", "restart"),
    [
        (False, "Always", 0, True),
        (False, "Always", 1, True),
        (False, "OnFailure", 0, False),
        (False, "OnFailure", 1, True),
        (False, "Never", 1, False),
        (True, "Always", 0, False),
        (True, "Always", 1, True),
        (True, "OnFailure", 1, True),
        (True, "Never", 1, False),
    ],
)
def test_restart_by_policy(init: bool, policy: str, code: int, restart: bool) -> None:
    assert should_restart(init, policy, code) is restart


def test_after_exit_backs_off_counts_restarts_and_keeps_the_last_state() -> None:
    c = ctr()
    c.state = exited_state(1, T0, T1, 9, "")
    assert after_exit(c, 1, "OnFailure", now=100.0, pod_ref="p_ns(u)")
    assert c.restart_count == 1 and not c.done
    assert c.last_state["terminated"]["exitCode"] == 1
    assert c.state["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 10s restarting failed container=c pod=p_ns(u)" in c.state["waiting"]["message"]
    assert c.next_start == 100.0 + BACKOFF_START
    for _ in range(10):
        c.state = exited_state(1, T0, T1, 9, "")
        after_exit(c, 1, "OnFailure", now=100.0, pod_ref="p")
    assert c.backoff == BACKOFF_MAX and c.restart_count == 11
    c.started_mono = 0.0
    c.state = exited_state(1, T0, T1, 9, "")
    after_exit(c, 1, "OnFailure", now=601.0, pod_ref="p")  # ran > 10 min: back-off resets
    assert c.next_start == 601.0 + BACKOFF_START
    done = ctr()
    done.state = exited_state(0, T0, T1, 9, "")
    assert not after_exit(done, 0, "OnFailure", now=1.0, pod_ref="p")
    assert done.done and done.restart_count == 0


def test_phase_from_container_states() -> None:
    assert pod_phase([], [ctr()], "Always") == "Pending"  # not started yet
    assert pod_phase([], [running(ctr()), ctr("b")], "Always") == "Running"
    assert pod_phase([], [exited(ctr(), 0), exited(ctr("b"), 0)], "Never") == "Succeeded"
    assert pod_phase([], [exited(ctr(), 0), exited(ctr("b"), 1)], "Never") == "Failed"
    assert pod_phase([], [exited(ctr(), 1, "OnFailure")], "OnFailure") == "Running"  # back-off
    assert pod_phase([], [exited(ctr(), 0), running(ctr("b"))], "Never") == "Running"
    assert pod_phase([], [exited(ctr(), 0, "Always")], "Always") == "Running"


def test_phase_while_init_containers_run_or_fail() -> None:
    app = ctr("app")
    assert pod_phase([running(ctr("init", init=True))], [app], "Never") == "Pending"
    assert pod_phase([exited(ctr("init", init=True), 1, "Never")], [app], "Never") == "Failed"
    retried = exited(ctr("init", init=True), 1, "OnFailure")
    assert pod_phase([retried], [app], "OnFailure") == "Pending"
    assert pod_phase([exited(ctr("init", init=True), 0)], [app], "Never") == "Pending"
    assert pod_phase([exited(ctr("init", init=True), 0)], [running(app)], "Never") == "Running"


def test_termination_message_from_the_file() -> None:
    written = termination_message({}, 2, "Error", b"bad input: chunk 7", b"log")
    assert written == "bad input: chunk 7"
    big = b"x" * 5000 + b"END"
    msg = termination_message({}, 1, "Error", big, b"")
    assert len(msg) == MAX_MESSAGE_BYTES and msg.endswith("END")  # the file's last 4 KiB
    assert termination_message(FALLBACK, 1, "Error", b"written", b"log") == "written"
    assert termination_message({}, 1, "Error", None, b"log\n") == ""  # policy File: no fallback
    assert termination_message({}, 0, "Completed", b"", b"log\n") == ""


def test_termination_message_falls_back_to_the_log_tail_only_after_a_failure() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(100))
    msg = termination_message(FALLBACK, 3, "Error", b"", log)
    assert msg.startswith("line 20\n") and msg.endswith("line 99\n")  # the last 80 lines
    assert termination_message(FALLBACK, 3, "Error", None, b"boom\n") == "boom\n"
    assert termination_message(FALLBACK, 0, "Completed", b"", b"fine\n") == ""
    assert termination_message(FALLBACK, 128, "StartError", b"", b"StartError: x\n") == ""
    long_lines = b"".join(b"y" * 100 + b"\n" for _ in range(80))
    assert len(termination_message(FALLBACK, 1, "Error", b"", long_lines)) == FALLBACK_LOG_BYTES


def test_container_status_moves_the_container_id_out_of_the_state() -> None:
    live = container_status(running(ctr(), pid=55))
    assert live["containerID"] == "voicetrack://55"
    assert live["ready"] and live["started"] and live["state"] == {"running": {"startedAt": T0}}
    done = container_status(exited(ctr(), 1, "Always"))
    assert done["restartCount"] == 1 and not done["ready"]
    assert "containerID" not in done["lastState"]["terminated"]
    assert done["lastState"]["terminated"]["exitCode"] == 1
    finished = container_status(exited(ctr(), 1, "Never", message="why"))
    assert finished["containerID"] == "voicetrack://4242"
    assert finished["state"]["terminated"]["message"] == "why"
    assert not container_status(running(ctr("i", init=True)))["ready"]


def test_pod_status_conditions_keep_transition_times() -> None:
    c = running(ctr())
    st = pod_status("Running", [], [c], old_conditions=[], prepared=True, start_time=T0,
                    reason=None, message=None, now=T0, ip="127.64.1.2")  # fmt: skip
    conds = {x["type"]: x for x in st["conditions"]}
    assert all(conds[t]["status"] == "True" for t in ("Ready", "ContainersReady", "Initialized"))
    assert st["podIP"] == "127.64.1.2" and st["podIPs"] == [{"ip": "127.64.1.2"}]
    assert st["hostIP"] == "127.0.0.1" and st["startTime"] == T0
    assert "initContainerStatuses" not in st
    exited(c, 1, "Never")
    c.pid = None
    later = pod_status("Failed", [], [c], old_conditions=st["conditions"] + [{"type": "X"}],
                       prepared=True, start_time=T0, reason=None, message=None, now=T1,
                       ip="127.64.1.2")  # fmt: skip
    conds = {x["type"]: x for x in later["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
    assert conds["Ready"]["lastTransitionTime"] == T1
    assert conds["Initialized"]["lastTransitionTime"] == T0  # unchanged: kept
    assert conds["PodReadyToStartContainers"]["status"] == "False"
    assert conds["X"] == {"type": "X"}  # a condition someone else set stays
    assert comparable(later)["conditions"][0].get("lastTransitionTime") is None


def test_adopt_terminal_keeps_what_was_reported() -> None:
    cs = [ctr("a"), ctr("b")]
    assert not adopt_terminal({"phase": "Running"}, cs)
    status = {"phase": "Failed", "containerStatuses": [
        {"name": "a", "restartCount": 2, "state": {"terminated": {"exitCode": 3}}}]}
    assert adopt_terminal(status, cs)
    assert cs[0].restart_count == 2 and cs[0].state == {"terminated": {"exitCode": 3}}
    assert cs[1].succeeded and all(c.done for c in cs)
