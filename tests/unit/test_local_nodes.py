"""Several real node agents on one local control plane (`up(nodes=N)`), the pure parts:
names, ports, node-local directories and the agents' command lines, without a cluster."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from voicetrack_local import cluster
from voicetrack_local.control_plane import choose_ports, node_agent_command, write_kubeconfigs
from voicetrack_local.nodeagent.agent import NodeAgent
from voicetrack_local.pki import ensure_pki
from voicetrack_local.state import (
    agent_component,
    agent_dir,
    extra_agents,
    kubelet_port_key,
    node_name,
    pid_file,
    pod_records,
    records,
)

pytestmark = pytest.mark.unit


def test_each_node_has_its_own_name_component_port_and_directory(tmp_path: Path) -> None:
    assert [node_name(i) for i in (1, 2, 3)] == [
        "voicetrack-local", "voicetrack-local-2", "voicetrack-local-3"]
    assert [agent_component(i) for i in (1, 2)] == ["node-agent", "node-agent-2"]
    assert [kubelet_port_key(i) for i in (1, 3)] == ["kubelet", "kubelet_3"]
    assert agent_dir(tmp_path, 1) == tmp_path / "agent"  # one node: as it always was
    assert agent_dir(tmp_path, 2) == tmp_path / "agent" / "nodes" / "voicetrack-local-2"
    assert "node-agent" not in extra_agents() and "node-agent-2" in extra_agents()


def test_ports_for_three_nodes_are_distinct(tmp_path: Path) -> None:
    ports = choose_ports(tmp_path, 3)
    assert {"kubelet", "kubelet_2", "kubelet_3"} <= set(ports)
    assert len(set(ports.values())) == len(ports) == 6
    assert "kubelet_2" not in choose_ports(tmp_path)


def test_agent_command_names_its_node(tmp_path: Path) -> None:
    assert node_agent_command(tmp_path) == [
        sys.executable, "-m", "voicetrack_local.nodeagent", f"--state-dir={tmp_path}"]
    assert node_agent_command(tmp_path, 3)[-1] == "--index=3"


def test_agent_takes_its_node_port_and_pods_directory(tmp_path: Path) -> None:
    ports = choose_ports(tmp_path, 2)
    write_kubeconfigs(tmp_path, ensure_pki(tmp_path), f"https://127.0.0.1:{ports['apiserver']}")
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"node": "voicetrack-local", "nodes": 2, "ports": ports}))
    first, second = NodeAgent(tmp_path, "process"), NodeAgent(tmp_path, "process", 2)
    assert (first.node, first.port) == ("voicetrack-local", ports["kubelet"])
    assert (second.node, second.port) == ("voicetrack-local-2", ports["kubelet_2"])
    assert first.pods_dir == tmp_path / "agent" / "pods"
    assert second.pods_dir == tmp_path / "agent" / "nodes" / "voicetrack-local-2" / "pods"
    assert second.pods_dir.is_dir()


def test_pod_records_of_every_node_are_found(tmp_path: Path) -> None:
    for d in (agent_dir(tmp_path, 1), agent_dir(tmp_path, 3)):
        pids = d / "pods" / "ns_pod_uid" / "pids"
        pids.mkdir(parents=True)
        (pids / "c.json").write_text(json.dumps(
            {"name": f"c-{d.name}", "pid": os.getpid(), "start_ticks": 1, "cmd": ["x"]}))
    assert sorted(r.name for r in pod_records(tmp_path)) == ["c-agent", "c-voicetrack-local-3"]


def test_up_refuses_a_node_count_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(cluster.ClusterError, match="nodes must be 1 to 9"):
        cluster.up(tmp_path, nodes=0, log=lambda m: None)
    assert cluster.LocalCluster(tmp_path, tmp_path / "k", "s", nodes=2).node_names == [
        "voicetrack-local", "voicetrack-local-2"]


def test_records_include_every_node_agent(tmp_path: Path) -> None:
    """`down` and `status` see agents 2.. (they were left running before)."""
    (tmp_path / "pids").mkdir()
    for name in ("node-agent", "node-agent-3"):
        pid_file(tmp_path, name).write_text(json.dumps(
            {"name": name, "pid": os.getpid(), "start_ticks": 1, "cmd": ["x"]}))
    assert {"node-agent", "node-agent-3"} <= set(records(tmp_path))
