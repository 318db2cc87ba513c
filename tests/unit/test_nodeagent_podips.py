"""Pod IPs (:mod:`voicetrack_local.nodeagent.podips`): no two pods of the cluster's node
agents share one, a pod keeps its own across agent restarts, and a gone pod's is freed.
The agents are built without a cluster (their workers are never started)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicetrack_local.control_plane import choose_ports, write_kubeconfigs
from voicetrack_local.nodeagent.agent import NodeAgent, pod_ips_dir
from voicetrack_local.nodeagent.podips import PodIPs, candidates, reported_first
from voicetrack_local.nodeagent.podspec import field_value, uid_ip
from voicetrack_local.nodeagent.worker import PodWorker
from voicetrack_local.pki import ensure_pki

pytestmark = pytest.mark.unit

#: two uuids whose first-choice IPs coincide (found by trying uuid4s), and that IP
UID_A, UID_B = "22bcf63e-83a6-4bcc-a74a-343018a72f18", "5a332d63-8456-4535-ad80-4eb36f69927f"
SHARED = "127.87.21.77"


def pod(uid: str, name: str, ip: str | None = None) -> dict[str, Any]:
    """A Pod of one container, with ``status.podIP`` ``ip`` when given (reported before)."""
    return {
        "metadata": {"uid": uid, "name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "command": ["true"]}]},
        "status": {"podIP": ip} if ip else {},
    }


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory an agent can be built on (three nodes)."""
    ports = choose_ports(tmp_path, 3)
    write_kubeconfigs(tmp_path, ensure_pki(tmp_path), f"https://127.0.0.1:{ports['apiserver']}")
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"node": "voicetrack-local", "nodes": 3, "ports": ports}))  # fmt: skip
    return tmp_path


@pytest.fixture
def agents(state: Path) -> Iterator[list[NodeAgent]]:
    """Built agents (append to it); their kubelet sockets are closed afterwards."""
    built: list[NodeAgent] = []
    yield built
    for a in built:
        a.logs.server_close()


def reported_ip(agent: NodeAgent, p: dict[str, Any]) -> str:
    """The ``status.podIP`` the agent's worker for ``p`` reports."""
    return str(PodWorker(agent, p)._status()["podIP"])


def test_the_two_uids_share_a_first_choice() -> None:
    assert uid_ip(UID_A) == uid_ip(UID_B) == SHARED


def test_two_pods_whose_uids_hash_alike_get_different_ips(
    state: Path, agents: list[NodeAgent]
) -> None:
    """Before, both reported 127.87.21.77: the second could not bind its ports, or its
    probes reached the first, and it crash-looped until deleted."""
    agents.append(NodeAgent(state, "process"))
    a, b = reported_ip(agents[0], pod(UID_A, "a")), reported_ip(agents[0], pod(UID_B, "b"))
    assert a == SHARED and b != a
    assert b == "127.87.21.78"  # the next address: the first choice stays the hash's


def test_the_downward_api_gives_the_assigned_ip(state: Path, agents: list[NodeAgent]) -> None:
    agents.append(NodeAgent(state, "process"))
    PodWorker(agents[0], pod(UID_A, "a"))
    w = PodWorker(agents[0], pod(UID_B, "b"))
    assert field_value(w.with_ip(w.pod), "status.podIP") == w.ip == "127.87.21.78"


def test_pods_on_different_nodes_get_different_ips(state: Path, agents: list[NodeAgent]) -> None:
    agents += [NodeAgent(state, "process"), NodeAgent(state, "process", 2)]
    assert reported_ip(agents[0], pod(UID_A, "a")) == SHARED
    assert reported_ip(agents[1], pod(UID_B, "b")) == "127.87.21.78"


def test_a_restarted_agent_gives_running_pods_their_ips(
    state: Path, agents: list[NodeAgent]
) -> None:
    """The second pod is listed first after the restart: it keeps .78 and the first .77."""
    agents.append(NodeAgent(state, "process"))
    a, b = reported_ip(agents[0], pod(UID_A, "a")), reported_ip(agents[0], pod(UID_B, "b"))
    agents[0].logs.server_close()
    agents[:] = [NodeAgent(state, "process")]
    assert reported_ip(agents[0], pod(UID_B, "b", b)) == b
    assert reported_ip(agents[0], pod(UID_A, "a", a)) == a
    # and without the agents' files (a cluster from before them): the reported IPs
    agents[0].logs.server_close()
    for f in pod_ips_dir(state).iterdir():
        f.unlink()
    agents[:] = [NodeAgent(state, "process")]
    assert reported_ip(agents[0], pod(UID_B, "b", b)) == b
    assert reported_ip(agents[0], pod(UID_A, "a", a)) == a


def test_a_gone_pods_ip_is_freed(state: Path, agents: list[NodeAgent]) -> None:
    agents.append(NodeAgent(state, "process"))
    agent = agents[0]
    wa = PodWorker(agent, pod(UID_A, "a"))
    wa.gone = True
    agent.worker_done(wa)
    assert reported_ip(agent, pod(UID_B, "b")) == SHARED  # free again: B's first choice


def test_ips_of_pods_deleted_while_the_agent_was_away_are_freed(tmp_path: Path) -> None:
    first = PodIPs(tmp_path, "n1")
    assert first.assign(pod(UID_A, "a")) == SHARED
    other = PodIPs(tmp_path, "n2")
    assert other.assign(pod("x", "x")) == uid_ip("x")
    again = PodIPs(tmp_path, "n1")  # restarted: lists its pods, A is no more
    assert again.held() == {UID_A: SHARED}
    again.keep_only(["y"])
    assert again.held() == {} and PodIPs(tmp_path, "n2").held() == {"x": uid_ip("x")}
    assert again.assign(pod(UID_B, "b")) == SHARED


def test_host_network_pods_hold_nothing(tmp_path: Path) -> None:
    ips = PodIPs(tmp_path, "n1")
    p = pod(UID_A, "a")
    p["spec"]["hostNetwork"] = True
    assert ips.assign(p) == "127.0.0.1" and ips.held() == {}


def test_candidates_skip_0_and_255_and_wrap() -> None:
    assert list(zip(range(3), candidates("127.64.0.254"), strict=False)) == [
        (0, "127.64.0.254"), (1, "127.64.1.1"), (2, "127.64.1.2")]
    assert next(c for i, c in enumerate(candidates("127.127.255.254")) if i == 1) == "127.64.0.1"


def test_agents_racing_for_one_address_get_different_ones(tmp_path: Path) -> None:
    """Every uid's first choice is the same: 3 nodes x 20 pods, claimed at once."""
    nodes = [PodIPs(tmp_path, f"n{i}", first_ip=lambda uid: "127.64.0.1") for i in range(3)]
    got: list[str] = []
    lock = threading.Lock()

    def run(ips: PodIPs, i: int) -> None:
        for k in range(20):
            ip = ips.assign(pod(f"{i}-{k}", "p"))
            with lock:
                got.append(ip)

    threads = [threading.Thread(target=run, args=(n, i)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == len(got) == 60
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp files left


def test_a_running_pod_keeps_its_ip_from_a_new_pod_listed_before_it(tmp_path: Path) -> None:
    """A cluster from before the agents' files: A reported B's first choice, B is new."""
    ips = PodIPs(tmp_path, "n1")
    listed = reported_first([pod(UID_B, "b"), pod(UID_A, "a", SHARED)])
    assert [ips.assign(p) for p in listed] == [SHARED, "127.87.21.78"]
    assert ips.held() == {UID_A: SHARED, UID_B: "127.87.21.78"}


def test_temporary_files_a_killed_agent_left_are_removed(tmp_path: Path) -> None:
    old, fresh = tmp_path / ".u.1.2", tmp_path / ".v.3.4"
    old.write_text("{}")
    fresh.write_text("{}")
    os.utime(old, (1, 1))
    PodIPs(tmp_path, "n1")
    assert not old.exists() and fresh.exists()  # a claim under way elsewhere is left


def test_a_pod_ip_that_cannot_be_claimed_stalls_that_pod_not_the_node(
        state: Path, agents: list[NodeAgent], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review rev-node fault 1: an OSError claiming an IP (ENOSPC, EROFS, a filesystem
    without hard links) raised out of `PodWorker.__init__` through `_dispatch` into the
    watch loop, which listed again every second and stopped at that pod for ever: later
    pods never started and deleted ones were never marked gone. Now that pod is skipped
    (tried again at its next event or list) and the list goes on; a claim's temporary
    file is removed even when writing it fails, and a gone pod's file that cannot be
    removed is logged, not raised. Failed before."""
    from voicetrack_local.nodeagent import podips

    agents.append(NodeAgent(state, "process"))
    agent = agents[0]
    monkeypatch.setattr(PodWorker, "start", lambda self: None)
    agent._dispatch(pod("old", "old"))
    real_link = os.link

    def no_space(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(podips.os, "link", no_space)
    agent._dispatch(pod(UID_A, "a"))  # no IP: skipped, nothing raised
    assert UID_A not in agent.workers
    agent._dispatch(pod(UID_B, "b", "127.70.0.1"))  # reported before, not claimable either
    monkeypatch.setattr(podips.os, "link", real_link)
    agent._dispatch(pod(UID_A, "a"))  # its next event: claimed now
    assert UID_A in agent.workers and agent.workers[UID_A].ip == SHARED
    assert not [f for f in pod_ips_dir(state).iterdir() if f.name.startswith(".")]

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    agent.pod_ips.release(UID_A)  # logged, not raised
