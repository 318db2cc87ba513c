"""Issue 16's pure parts without a cluster: kwok's Stages and fake Nodes, the control plane's
client limits, the per-actor API accounting, the operator's node-pool placement and its
API client's concurrency."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from voicetrack.chunkspec import ChunkSpec
from voicetrack.resources import SessionSpec
from voicetrack_local import kwok
from voicetrack_local.accounting import accounting_manifests, api_writes, parse_metrics
from voicetrack_local.control_plane import (
    ClientLimits,
    controller_manager_command,
    scheduler_command,
)
from voicetrack_local.pki import ensure_pki
from voicetrack_operator.adapters.kube import API_THREADS, KubeAdapter
from voicetrack_operator.builders import NODE_POOL_KEY, PodSettings, SessionRef, build_recorder_pod
from voicetrack_operator.jobs import build_promote_job, build_transcode_job

pytestmark = pytest.mark.unit

OWNER = SessionRef(name="standup", namespace="team", uid="0b6c-uid")
SPEC = SessionSpec.model_validate({"guildId": "123456789012345678",
                                   "channelId": "223456789012345678"})
CHUNK = ChunkSpec.model_validate({
    "sessionName": "standup", "meetingId": "0123456789abcdef", "guildId": "123456789012345678",
    "index": 3, "startMs": 0, "endMs": 10_000, "tracks": []})


def pod_specs(settings: PodSettings) -> list[dict]:
    return [build_recorder_pod(OWNER, SPEC, "0123456789abcdef", 0, settings)["spec"],
            build_transcode_job(OWNER, CHUNK, SPEC, settings)["spec"]["template"]["spec"],
            build_promote_job(OWNER, "plan.json", SPEC, settings)["spec"]["template"]["spec"]]


def test_pods_go_to_a_node_pool_only_when_configured() -> None:
    for spec in pod_specs(PodSettings()):
        assert "tolerations" not in spec and "nodeSelector" not in spec
    for spec in pod_specs(PodSettings(node_pool=kwok.NODE_POOL_VALUE)):
        assert spec["nodeSelector"] == {NODE_POOL_KEY: "kwok"}
        assert spec["tolerations"] == [{"key": NODE_POOL_KEY, "operator": "Equal",
                                        "value": "kwok", "effect": "NoSchedule"}]
    assert NODE_POOL_KEY == kwok.NODE_POOL_KEY  # the harness's taint is the one tolerated


def test_fake_nodes_are_kwoks_tainted_and_labelled_for_the_pool() -> None:
    node = kwok.fake_node(2)
    assert node["metadata"]["name"] == "kwok-node-2"
    assert node["metadata"]["annotations"][kwok.FAKE_NODE_ANNOTATION] == "fake"
    assert node["metadata"]["labels"][kwok.NODE_POOL_KEY] == kwok.NODE_POOL_VALUE
    assert node["spec"]["taints"] == [{"key": kwok.NODE_POOL_KEY, "value": "kwok",
                                       "effect": "NoSchedule"}]
    assert int(node["status"]["allocatable"]["pods"]) >= 1000
    cmd = kwok.kwok_command(Path("/k/kwok"), Path("/k.conf"), Path("/s.yaml"))
    assert "--manage-all-nodes=false" in cmd and "--config=/s.yaml" in cmd
    assert f"--manage-nodes-with-annotation-selector={kwok.FAKE_NODE_ANNOTATION}=fake" in cmd


def test_stages_take_upstreams_and_set_our_delays() -> None:
    upstream = {name: {"kind": "Stage", "metadata": {"name": name},
                       "spec": {"delay": {"durationMilliseconds": 1000}, "x": name}}
                for name in kwok.STAGE_FILES}
    out = kwok.stages(upstream, kwok.KwokTimings(pod_start_ms=200, job_pod_ms=900,
                                                 jitter_ms=100))
    by_name = {s["metadata"]["name"]: s for s in out}
    assert set(by_name) == set(kwok.STAGE_FILES)
    assert by_name["pod-ready"]["spec"]["delay"] == {"durationMilliseconds": 200,
                                                     "jitterDurationMilliseconds": 300}
    assert by_name["pod-complete"]["spec"]["delay"] == {"durationMilliseconds": 900,
                                                        "jitterDurationMilliseconds": 1000}
    assert by_name["pod-delete"]["spec"] == upstream["pod-delete"]["spec"]
    assert upstream["pod-ready"]["spec"]["delay"] == {"durationMilliseconds": 1000}  # a copy


def test_client_limits_reach_both_commands_and_default_to_none(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    bins, kc = Path("/bins"), tmp_path / "kc"
    for cmd in (controller_manager_command(bins, pki, kc), scheduler_command(bins, kc)):
        assert not any(a.startswith("--kube-api-") for a in cmd)
    limits = ClientLimits(qps=400, burst=800, job_syncs=50)
    kcm = controller_manager_command(bins, pki, kc, limits)
    sched = scheduler_command(bins, kc, limits)
    for cmd in (kcm, sched):
        assert "--kube-api-qps=400" in cmd and "--kube-api-burst=800" in cmd
    assert "--concurrent-job-syncs=50" in kcm and "--concurrent-job-syncs=50" not in sched


METRICS = """# HELP x
apiserver_flowcontrol_dispatched_requests_total{flow_schema="voicetrack-operator-writes",priority_level="exempt"} 12
apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"} 3
apiserver_request_total{code="201",component="apiserver",verb="POST",resource="pods"} 5
apiserver_request_total{code="200",component="apiserver",verb="PATCH",resource="pods"} 2.0
apiserver_request_total{code="200",component="apiserver",verb="LIST",resource="pods"} 100
"""  # noqa: E501


def test_api_writes_per_flow_schema_and_in_total() -> None:
    assert len(parse_metrics(METRICS)) == 5
    w = api_writes(METRICS)
    assert w == {"total": 7.0, "voicetrack-operator-writes": 12.0, "exempt": 3.0}
    docs = accounting_manifests(["voicetrack-operator"])
    names = [d["metadata"]["name"] for d in docs]
    assert names == ["voicetrack-bench", "voicetrack-operator-writes", "voicetrack-operator-reads"]
    rule = docs[1]["spec"]["rules"][0]
    assert rule["subjects"] == [{"kind": "User", "user": {"name": "voicetrack-operator"}}]
    assert "get" not in rule["resourceRules"][0]["verbs"]


def test_the_kube_adapter_has_its_own_threads_and_a_pool_to_match() -> None:
    """At 50 sessions the operator idled at 0.1 cores while chunks waited 110 s: every API
    call queued for the event loop's 6 default threads (2 cores) and 10 pooled
    connections."""
    api = client.ApiClient(client.Configuration())
    adapter = KubeAdapter(api)
    try:
        assert adapter.executor._max_workers == API_THREADS >= 32
        assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] >= API_THREADS
    finally:
        adapter.executor.shutdown()
        api.close()
