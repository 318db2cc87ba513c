"""A second recorder of one session never overwrites the raw audio of a chunk the first one
made (fault: `ChunkUploader.upload` wrote every raw track before `create_chunk`, and the
409 carrying another spec was noticed only afterwards; the existing chunk's raw objects,
the source of truth, were replaced, its transcode failed the sha256 check with exit 2 and
that window became silence). Real API server (CRDs installed) and SeaweedFS; the spool is
a real one on disk with real libopus packets.

Before the fix, the first test failed: the raw object held the second recorder's bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import make_session
from tests.fixtures.cluster import Kubectl
from tests.unit.recorder_rig import chunk_of, sine_packet
from voicetrack.errors import InvalidInputError
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.context import Context
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import Spool, SpooledChunk
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx

USER = "200000000000000001"


def recorder_of(s: SessionView, cluster: LocalCluster, s3: S3Settings, root: Path,
                slots: int) -> tuple[ChunkUploader, SpooledChunk]:
    """One recorder of `s` (admin client, S3 keys) with chunk 0 (`slots` 20 ms slots of a
    tone) sealed into its own spool at `root`."""
    spool = Spool(root, 1 << 30, s.layout, s.ref.name, "ogg-opus")
    spooled = spool.add(chunk_of(0, slots, sine_packet(), user=USER))
    kube = RecorderKube(load_api_client(str(cluster.kubeconfig)), s.ref.namespace, s.ref.name,
                        s.ref.uid)
    uploader = ChunkUploader(ObjectStore(s3), kube, spool, s.ref.uid,
                             ack_file=str(root / "acks.json"))
    return uploader, spooled


async def test_a_chunk_held_with_another_spec_keeps_its_raw_audio(
        ctx: Context, cluster: LocalCluster, s3_server: S3Settings, namespace: str,
        kubectl: Kubectl, tmp_path: Path) -> None:
    s = await make_session(ctx, kubectl, namespace, "twice")
    first, first_chunk = recorder_of(s, cluster, s3_server, tmp_path / "a", 50)
    assert first.upload(first_chunk).index == 0
    store = ObjectStore(s3_server)
    key = s.layout.raw_key(0, USER, "ogg-opus")
    original = store.get_bytes(key)

    # a second recorder (its pod force-deleted on a node cut off from the API server)
    # sealed its own chunk 0, another window: refused, and nothing written
    second, second_chunk = recorder_of(s, cluster, s3_server, tmp_path / "b", 75)
    assert second_chunk.spec != first_chunk.spec
    with pytest.raises(InvalidInputError, match="another spec"):
        second.upload(second_chunk)
    assert store.get_bytes(key) == original
    assert second.stats.acked == []


async def test_the_retry_of_a_chunk_that_got_through_is_done_without_a_write(
        ctx: Context, cluster: LocalCluster, s3_server: S3Settings, namespace: str,
        kubectl: Kubectl, tmp_path: Path) -> None:
    """A run that ended between the create and the spool files' removal: the same chunk
    again counts as done (the raw objects were written before the create)."""
    s = await make_session(ctx, kubectl, namespace, "again")
    uploader, spooled = recorder_of(s, cluster, s3_server, tmp_path / "a", 50)
    for k, path in spooled.files.items():  # the earlier run's writes and create
        ObjectStore(s3_server).put_file(k, path)
    uploader.kube.create_chunk(spooled.spec, s.ref.uid)
    assert uploader.upload(spooled) == spooled.spec
    assert uploader.stats.acked == [0]
    assert not any(Path(p).exists() for p in spooled.files.values())
