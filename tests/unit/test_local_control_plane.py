"""The local control plane's pure parts (:mod:`voicetrack_local.control_plane`,
:mod:`voicetrack_local.kubeconfig`) and the node agent's entry point, without a cluster."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voicetrack_local import cluster
from voicetrack_local.control_plane import (
    SA_ISSUER,
    apiserver_command,
    controller_manager_command,
    etcd_command,
    node_agent_command,
    scheduler_command,
    write_kubeconfigs,
)
from voicetrack_local.kubeconfig import write_kubeconfig
from voicetrack_local.pki import ensure_pki

pytestmark = pytest.mark.unit

PORTS = {"etcd": 2379, "etcd_peer": 2380, "apiserver": 6443, "kubelet": 10250}
BINS = Path("/bins")


def test_the_node_agent_runs_as_a_module_of_this_python(tmp_path: Path) -> None:
    cmd = node_agent_command(tmp_path)
    assert cmd == [sys.executable, "-m", "voicetrack_local.nodeagent", f"--state-dir={tmp_path}"]
    out = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "python -m voicetrack_local.nodeagent" in out.stdout and "--state-dir" in out.stdout


def test_component_command_lines(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    etcd = etcd_command(BINS, tmp_path, PORTS)
    assert etcd[0] == "/bins/etcd"
    assert "--listen-client-urls=http://127.0.0.1:2379" in etcd
    assert "--initial-cluster=default=http://127.0.0.1:2380" in etcd
    api = apiserver_command(BINS, pki, PORTS)
    assert "--etcd-servers=http://127.0.0.1:2379" in api and "--secure-port=6443" in api
    assert f"--service-account-issuer={SA_ISSUER}" in api
    assert "--authorization-mode=Node,RBAC" in api
    kcm = controller_manager_command(BINS, pki, tmp_path / "kcm.kubeconfig")
    assert f"--kubeconfig={tmp_path / 'kcm.kubeconfig'}" in kcm
    assert f"--cluster-signing-key-file={pki.dir / 'ca.key'}" in kcm
    assert scheduler_command(BINS, Path("/s.kubeconfig"))[:2] == [
        "/bins/kube-scheduler",
        "--kubeconfig=/s.kubeconfig",
    ]


def test_kubeconfigs_embed_credentials_and_are_private(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    cfgs = write_kubeconfigs(tmp_path, pki, "https://127.0.0.1:6443")
    assert set(cfgs) == {"admin", "kube-controller-manager", "kube-scheduler"}
    assert cfgs["admin"] == tmp_path / "kubeconfig"
    doc = yaml.safe_load(cfgs["kube-scheduler"].read_text())
    assert doc["users"][0]["name"] == "system:kube-scheduler"
    ca = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == pki.ca.crt.read_bytes()
    assert cfgs["admin"].stat().st_mode & 0o777 == 0o600
    user = "system:serviceaccount:ns:sa"
    token_cfg = write_kubeconfig(
        tmp_path / "pod.kubeconfig", "https://x", pki.ca.crt, user=user, token="t", namespace="ns"
    )
    doc = yaml.safe_load(token_cfg.read_text())
    assert doc["users"][0]["user"] == {"token": "t"}
    assert doc["contexts"][0]["context"]["namespace"] == "ns"


def test_cluster_keeps_its_public_names() -> None:
    for name in ("NODE_NAME", "SA_ISSUER", "ClusterError", "LocalCluster", "ClusterStatus",
                 "default_state_dir", "up", "down", "status", "write_kubeconfig"):  # fmt: skip
        assert hasattr(cluster, name), name
    assert cluster.NODE_NAME == "voicetrack-local"


def test_status_of_an_empty_state_dir_runs_nothing(tmp_path: Path) -> None:
    st = cluster.status(tmp_path)
    assert not st.running and st.server is None
    assert [c.name for c in st.components] == [
        "node-agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"
    ]  # fmt: skip
    assert cluster.down(tmp_path / "absent") == []
