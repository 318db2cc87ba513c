"""`voicetrack local up --fake-nodes` (issue 16) on its own local cluster: kwok's fake Node
is Ready, a transcoder Job the operator's builder makes with `node_pool=kwok` runs there and
completes (kwok's Stages), a pod without the toleration never lands on it, and `down` stops
kwok with the rest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from voicetrack.chunkspec import ChunkSpec
from voicetrack.resources import SessionSpec
from voicetrack_local import cluster, kwok
from voicetrack_local.control_plane import ClientLimits
from voicetrack_local.kubectl import kubectl
from voicetrack_operator.builders import PodSettings, SessionRef, build_recorder_rbac
from voicetrack_operator.jobs import build_transcode_job

pytestmark = pytest.mark.e2e


def wait_for(what: str, check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def test_fake_nodes_run_only_the_pools_pods(tmp_path: Path) -> None:
    state = tmp_path / "k8s"
    c = cluster.up(state, log=lambda m: None, fake_nodes=1,
                   limits=ClientLimits(qps=100, burst=200, job_syncs=10))
    try:
        kc = c.kubeconfig
        st = cluster.status(state)
        assert st.running and "kwok" in [comp.name for comp in st.components]
        assert json.loads((state / "cluster.json").read_text())["limits"]["job_syncs"] == 10
        node = json.loads(kubectl(kc, "get", "node", "kwok-node-0", "-o", "json").stdout)
        assert node["spec"]["taints"][0]["key"] == kwok.NODE_POOL_KEY

        owner = SessionRef(name="load", namespace="default", uid="u-1")
        spec = SessionSpec.model_validate({"guildId": "123456789012345678",
                                           "channelId": "223456789012345678"})
        chunk = ChunkSpec.model_validate({
            "sessionName": "load", "meetingId": "0123456789abcdef",
            "guildId": "123456789012345678", "index": 0, "startMs": 0, "endMs": 10_000})
        job = build_transcode_job(owner, chunk, spec, PodSettings(node_pool="kwok"))
        job["metadata"].pop("ownerReferences")  # no session here
        kubectl(kc, "apply", "-f", "-", input=json.dumps(  # its ServiceAccount
            {"apiVersion": "v1", "kind": "List", "items": build_recorder_rbac("default")}))
        kubectl(kc, "apply", "-f", "-", input=json.dumps(job))
        plain = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "plain", "namespace": "default"},
                 "spec": {"containers": [{"name": "c", "image": "x",
                                          "command": ["sleep", "30"]}]}}
        kubectl(kc, "apply", "-f", "-", input=json.dumps(plain))

        def job_complete() -> bool:
            out = kubectl(kc, "get", "job", job["metadata"]["name"], "-o",
                          "jsonpath={.status.succeeded}", check=False).stdout
            return out.strip() == "1"

        wait_for("the transcoder Job completes on the fake node", job_complete, 90)
        pods = json.loads(kubectl(kc, "get", "pods", "-o", "json").stdout)["items"]
        nodes = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods}
        assert [n for p, n in nodes.items() if p.startswith("load-tx-")] == ["kwok-node-0"]
        wait_for("the plain pod is scheduled", lambda: json.loads(kubectl(
            kc, "get", "pod", "plain", "-o", "json").stdout)["spec"].get("nodeName"), 60)
        assert json.loads(kubectl(kc, "get", "pod", "plain", "-o", "json").stdout)[
            "spec"]["nodeName"] == cluster.NODE_NAME
    finally:
        stopped = cluster.down(state)
    assert "kwok" in stopped
