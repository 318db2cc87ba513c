"""Three real node agents on one local control plane (`up(nodes=3)`, issue 16): each
registers its own Node; the scheduler spreads a files session's recorder and transcoder
pods over them; logs route to the node a pod runs on; the session records, promotes and
is collected as on one node.

Its own cluster (the session's `cluster` has one node), SeaweedFS, PostgreSQL and a
standalone operator; pods run as local processes.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client

from tests.e2e.test_main_job import USERS, session_yaml, speakers, wait_for, wav_bytes
from voicetrack.db.service import RecordingService
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import GROUP, LABEL_COMPONENT, SESSION_PLURAL, VERSION
from voicetrack_local.cluster import LocalCluster, status, up
from voicetrack_local.kubectl import kubectl
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.stack import OperatorProcess, install_crds, prepare_namespace
from voicetrack_local.state import pod_records

pytestmark = pytest.mark.e2e

AUDIO_MS = 16_000


@dataclass
class ThreeNodes:
    cluster: LocalCluster
    api: client.ApiClient
    s3: S3Settings
    store: ObjectStore
    database_url: str
    operator: OperatorProcess


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Settings,
          postgres_server: PostgresServer) -> Iterator[ThreeNodes]:
    state = tmp_path_factory.mktemp("k8s3")
    c = up(state, timeout=240, log=lambda m: None, nodes=3)
    op = None
    try:
        install_crds(c.kubeconfig)
        db = postgres_server.create_database(f"vt_nodes_{secrets.token_hex(3)}")
        op = OperatorProcess(c.kubeconfig, s3_server, db,
                             tmp_path_factory.mktemp("op3") / "operator.log")
        op.start()
        store = ObjectStore(s3_server)
        store.ensure_bucket()
        yield ThreeNodes(c, load_api_client(str(c.kubeconfig)), s3_server, store, db, op)
    finally:
        if op is not None:
            op.stop()
            print(f"operator log tail:\n{op.tail(40)}")
        stopped = c.stop(force=True)
        # `down` stops every node's agent and leaves no pod process of any node behind
        assert {"node-agent", "node-agent-2", "node-agent-3"} <= set(stopped), stopped
        assert not [r for r in pod_records(state) if r.alive()]
        assert not any(comp.alive for comp in status(state).components)


class PodNodes:
    """Polls the namespace's pods every 0.3 s in a thread: pod name -> (component,
    spec.nodeName), kept after the pods are gone."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.core.list_namespaced_pod(self.namespace,
                                                         _request_timeout=5).items:
                    if pod.spec.node_name:
                        self.seen[pod.metadata.name] = (
                            (pod.metadata.labels or {}).get(LABEL_COMPONENT, ""),
                            pod.spec.node_name)
            except Exception:  # the next pass sees it
                pass
            self._stop.wait(0.3)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_three_nodes_register_and_a_session_spreads_over_them(three: ThreeNodes) -> None:
    core = client.CoreV1Api(three.api)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(three.cluster.node_names) <= set(nodes) and len(three.cluster.node_names) == 3
    ports = {n: nodes[n].status.daemon_endpoints.kubelet_endpoint.port
             for n in three.cluster.node_names}
    assert len(set(ports.values())) == 3, ports  # each agent serves its own endpoint
    for n in three.cluster.node_names:
        ready = next(c for c in nodes[n].status.conditions if c.type == "Ready")
        assert ready.status == "True" and not nodes[n].spec.taints, n

    ns = f"nodes-{secrets.token_hex(3)}"
    prepare_namespace(three.cluster.kubeconfig, ns, three.s3)
    keys = []
    for s in speakers():
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        three.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    watch = PodNodes(three.api, ns)
    try:
        kubectl(three.cluster.kubeconfig, "apply", "-f", "-",
                input=session_yaml(ns, "spread", keys))
        objects = client.CustomObjectsApi(three.api)

        def status() -> dict[str, object]:
            body = objects.get_namespaced_custom_object(GROUP, VERSION, ns, SESSION_PLURAL,
                                                        "spread")
            return dict(body.get("status") or {})

        logs_from: dict[str, str] = {}  # node -> a pod whose log came through its agent

        def read_logs_elsewhere() -> None:
            for name, (_, node) in list(watch.seen.items()):
                if node == three.cluster.node_name or node in logs_from:
                    continue
                try:
                    if core.read_namespaced_pod_log(name, ns, _request_timeout=10).strip():
                        logs_from[node] = name
                except client.ApiException:
                    pass  # not started yet, or already collected

        def recorded() -> bool:
            read_logs_elsewhere()
            st = status()
            chunks = st.get("chunks") or {}
            assert isinstance(chunks, dict)
            return float(st.get("recordedSeconds", 0) or 0) * 1000 >= AUDIO_MS - 2000 and \
                chunks.get("total", 0) >= 3 and chunks.get("done") == chunks.get("total")

        wait_for("every chunk done", recorded, 150, every_s=1)
        meeting = str(status()["meetingId"])

        # the API server fetched the logs of a pod on another node than the first from
        # that node's own agent (its kubelet endpoint)
        assert logs_from, f"no pod log read from another node: {watch.seen}"
        objects.delete_namespaced_custom_object(GROUP, VERSION, ns, SESSION_PLURAL, "spread")

        def gone() -> bool:
            try:
                status()
                return False
            except client.ApiException as err:
                return err.status == 404

        wait_for("promotion", gone, 180, every_s=1)
    finally:
        watch.close()
        kubectl(three.cluster.kubeconfig, "delete", "namespace", ns, "--wait=false",
                check=False)

    by_component: dict[str, set[str]] = {}
    for comp, node in watch.seen.values():
        by_component.setdefault(comp, set()).add(node)
    print(f"pods per node: {sorted(watch.seen.items())}; logs read from {logs_from}")
    assert by_component.get("recorder") and by_component.get("transcoder"), watch.seen
    used = by_component["recorder"] | by_component["transcoder"]
    assert len(used) >= 2, f"recorder and transcoder pods all on {used}"
    assert used <= set(three.cluster.node_names)

    async def recordings() -> list[object]:
        svc = RecordingService.from_url(three.database_url)
        try:
            return list(await svc.get_recordings_for_meeting(meeting))
        finally:
            await svc.close()

    recs = asyncio.run(recordings())
    kinds = sorted(str(r.kind) for r in recs)  # type: ignore[attr-defined]
    assert kinds.count("speaker") == len(USERS) and kinds.count("mixed") == 1, kinds
