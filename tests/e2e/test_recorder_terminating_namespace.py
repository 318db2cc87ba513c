"""A recorder flushing its spool while its session's namespace is being deleted: the API
server refuses every create there (403, cause `NamespaceTerminating`), so a RecordingChunk
can never be made. Each chunk's raw tracks and spec (`chunk.json`, for a chunk without
tracks too) go to S3 and the chunk counts as uploaded at once; the operator's inventory
rebuilds every one of them from S3 for promotion.

Before: the first spooled chunk retried its create until the stop deadline (403 was taken
as temporary) and the chunks after it were given up (their audio lost); a chunk without
tracks wrote no `chunk.json`, so its gaps and opt-outs were lost too. Real API server
(CRDs installed), SeaweedFS and the operator's inventory; a real spool with libopus
packets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import make_session
from tests.e2e.test_recorder_consent_marker import hold_terminating
from tests.fixtures.cluster import Kubectl
from tests.unit.recorder_rig import chunk_of, sine_packet
from voicetrack.chunkspec import ChunkSpec
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.context import Context
from voicetrack_operator.services.inventory import chunk_inventory
from voicetrack_recorder.chunker import SealedChunk
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import Spool, SpooledChunk
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx

USER = "200000000000000001"
SLOTS = 10  # 200 ms chunks: their windows stay within the session's elapsed time
DEADLINE_S = 10.0


def assert_in_s3(store: ObjectStore, layout: MeetingLayout,
                 spooled: list[SpooledChunk]) -> None:
    """Each spooled chunk's `chunk.json` in S3 is its spec, each raw track its bytes."""
    for one in spooled:
        stored = ChunkSpec.model_validate(
            store.get_json(layout.chunk_manifest_key(one.spec.index)))
        assert stored == one.spec
        for track in one.spec.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256


async def test_a_terminating_namespace_gets_every_spooled_chunk_into_s3(
        ctx: Context, cluster: LocalCluster, s3_server: S3Settings, namespace: str,
        kubectl: Kubectl, tmp_path: Path) -> None:
    s = await make_session(ctx, kubectl, namespace, "ending")
    time.sleep(1)  # the chunks' windows end 600 ms after the session's start
    spool = Spool(tmp_path / "spool", 1 << 30, s.layout, s.ref.name, "ogg-opus")
    spooled = [spool.add(chunk_of(i, SLOTS, sine_packet(), user=USER)) for i in (0, 1)]
    spooled.append(spool.add(SealedChunk(index=2, start_ms=2 * SLOTS * 20,
                                         end_ms=3 * SLOTS * 20, gap=None, tracks=[])))
    api = load_api_client(str(cluster.kubeconfig))
    kube = RecorderKube(api, s.ref.namespace, s.ref.name, s.ref.uid)
    uploader = ChunkUploader(ObjectStore(s3_server), kube, spool, s.ref.uid,
                             ack_file=str(tmp_path / "acks.json"))
    core = client.CoreV1Api(api)
    hold_terminating(core, namespace)
    try:
        deadline = time.monotonic() + DEADLINE_S
        began = time.monotonic()
        for one in spooled:
            uploader.upload(one, lambda: deadline)
        took = time.monotonic() - began
        assert uploader.stats.acked == [0, 1, 2]
        assert took < DEADLINE_S / 2, took  # no create retried until the deadline

        assert_in_s3(ObjectStore(s3_server), s.layout, spooled)
        inv = await chunk_inventory(ctx, s)
        assert sorted(inv.chunks) == [0, 1, 2] and not inv.refused
        assert all(c.rebuilt and c.status.transcode_status == "done"
                   for c in inv.chunks.values())
    finally:  # let the namespace go
        core.patch_namespaced_config_map("hold", namespace, {"metadata": {"finalizers": None}})
