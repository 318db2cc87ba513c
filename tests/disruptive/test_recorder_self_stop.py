"""A recorder that ends by itself during an S3 outage keeps its audio (review fault B).

The run's stop path set a 20 s flush deadline whatever the reason: when S3 was down and
the session ended by itself (auto-stop `channel-empty`, `max-duration`, `source-failed`),
the uploads stopped retrying 20 s later, every spooled chunk was deleted and a
`connection-lost` marker written, though nothing forced the pod to go and S3 came back a
minute later. The deadline belongs to a forced end only (SIGTERM, the session deleted);
`test_recorder_outages.py` keeps the forced case (the loss recorded as a gap).

Same rig as tests/disruptive/test_recorder_outages.py: the local control plane (CRDs, no
operator), a SeaweedFS of the test's own that is stopped and started again on the same
ports, a source sending a real Opus packet every 20 ms. The flush grace is cut to
GRACE_S so that the outage outlasts it several times over in a short test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from tests.disruptive import test_recorder_outages as outages
from tests.disruptive.test_recorder_outages import (
    TickSource,
    build,
    chunks_in_api,
    new_session,
    restart_weed,
    wait_async,
)
from tests.fixtures.cluster import Kubectl
from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_recorder.ending import RecorderResult
from voicetrack_recorder.recorder import Recorder

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(150)]

crds = outages.crds
weed = outages.weed
"""The outage tests' fixtures: the CRDs installed; a SeaweedFS of the test's own."""

GRACE_S = 3.0
"""The flush grace in these tests (20 s in a pod)."""
OUTAGE_AFTER_END_S = 15.0
"""How long S3 stays down after capture has ended: five flush graces."""
END_S = 12
"""When the session ends by itself (s of session time)."""


class AutoStopSource(TickSource):
    """A TickSource that ends by itself after END_S, as the `discord` source does when the
    channel has been empty (`end_reason` `channel-empty`)."""

    end_reason: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        ends = asyncio.create_task(super().run(stop))
        try:
            await asyncio.wait_for(asyncio.shield(ends), END_S)
        except TimeoutError:
            self.end_reason = "channel-empty"
        finally:
            stop.set()
            await ends


async def stop_s3_and_end_by_itself(recorder: Recorder, how: str, weed: SeaweedServer
                                    ) -> asyncio.Task[RecorderResult]:
    """Run `recorder` until chunk 0 is acknowledged, stop S3, and return the run's task
    once capture has ended by itself (`how`: `channel-empty` or `max-duration`), with
    chunks left in the spool."""
    recorder.flush.grace_s = GRACE_S
    await recorder.prepare()
    source = AutoStopSource(recorder, recorder.clock) if how == "channel-empty" \
        else TickSource(recorder, recorder.clock)
    run = asyncio.create_task(recorder.run(source))
    stats = recorder.uploader.stats
    await wait_async("chunk 0 acknowledged", lambda: stats.acked == [0], 20)
    await asyncio.to_thread(weed.stop)
    await wait_async("capture ended by itself", lambda: recorder._closed, END_S + 10)
    assert not recorder.stop.is_set() and not recorder.kube.deleted.is_set()
    assert [c.index for c in recorder._pending] == [1, 2]
    return run


def assert_everything_arrived(recorder: Recorder, store: ObjectStore, result: RecorderResult,
                              how: str) -> None:
    """Every chunk acknowledged, in the API and in S3 (sha256 as recorded), windows
    consecutive up to the end, no gap, nothing lost, the spool empty."""
    assert result.error is None and result.reason == how, result
    chunks = chunks_in_api(recorder)
    stats = recorder.uploader.stats
    assert [c.index for c in chunks] == stats.acked == [0, 1, 2], (chunks, stats.acked)
    assert all(c.gap is None for c in chunks), [c.gap for c in chunks]
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(chunks))
    assert chunks[-1].end_ms >= END_S * 1000 - 1000 and stats.lost == []
    for chunk in chunks:
        assert chunk.tracks
        for track in chunk.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256
    assert recorder.uploader.spool.used == 0
    assert not any(recorder.uploader.spool.root.iterdir())


@pytest.mark.parametrize("how", ["channel-empty", "max-duration"])
async def test_s3_down_when_the_session_ends_by_itself_loses_nothing(
        how: str, cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """S3 is down when the session ends by itself and comes back five graces later: the
    run keeps retrying with no deadline and every chunk arrives. Before: after GRACE_S
    the spooled chunks 1 and 2 were deleted and a `connection-lost` marker written."""
    limit = END_S if how == "max-duration" else 60  # the source ends first
    new_session(kubectl, namespace, "self-stop", limits={"maxDurationSeconds": limit})
    assert weed.settings is not None
    settings = weed.settings
    recorder, store = build(cluster, namespace, "self-stop", settings, tmp_path)
    run = await stop_s3_and_end_by_itself(recorder, how, weed)
    await asyncio.sleep(OUTAGE_AFTER_END_S)
    assert not run.done(), run.result()
    assert recorder.flush.at is None and recorder.uploader.stats.lost == []
    await asyncio.to_thread(restart_weed, weed, settings)
    result = await asyncio.wait_for(run, 60)
    assert_everything_arrived(recorder, store, result, how)


async def test_sigterm_while_a_self_ended_run_uploads_arms_the_deadline(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """The pod deleted (SIGTERM) while a run that ended by itself still waits for S3: the
    flush deadline starts then, and the loss is recorded as when SIGTERM ends a capture
    (a `connection-lost` marker) within the grace."""
    new_session(kubectl, namespace, "self-stop", limits={"maxDurationSeconds": END_S})
    assert weed.settings is not None
    recorder, _ = build(cluster, namespace, "self-stop", weed.settings, tmp_path)
    run = await stop_s3_and_end_by_itself(recorder, "max-duration", weed)
    await asyncio.sleep(2 * GRACE_S)
    assert not run.done(), run.result()
    sigterm = time.monotonic()
    recorder.stop.set()
    result = await asyncio.wait_for(run, 60)
    took = time.monotonic() - sigterm
    assert took <= GRACE_S + recorder.flush.marker_grace_s + 11, took  # + one backoff sleep
    assert result.reason == "max-duration"
    assert_loss_recorded(recorder)


def assert_loss_recorded(recorder: Recorder) -> None:
    """Chunk 0 arrived; what stayed in the spool was given up as one `connection-lost`
    marker chunk right after it (no tracks), counted lost, the spool emptied."""
    chunks = chunks_in_api(recorder)
    stats = recorder.uploader.stats
    assert [c.index for c in chunks] == stats.acked == [0, 1]
    first, marker = chunks
    assert marker.tracks == [] and marker.gap is not None
    assert marker.gap.cause == "connection-lost" and marker.gap.start_ms == first.end_ms
    (lost,) = stats.lost
    assert (lost.start_ms, lost.end_ms) == (first.end_ms, marker.end_ms)
    assert recorder.uploader.spool.used == 0


class FailingSource(TickSource):
    """A TickSource that fails after END_S, as a voice connection lost for good does."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(super().run(stop), END_S)
        except TimeoutError:
            raise ConnectionError("voice connection lost") from None


class RefusedSource(TickSource):
    """A TickSource that fails after END_S on bad input (InvalidInputError: the recorder
    exits 2, the operator fails the session and deletes its pod: no run follows)."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(super().run(stop), END_S)
        except TimeoutError:
            raise InvalidInputError("the voice channel is gone") from None


@pytest.mark.parametrize("end", ["source-failed", "source-refused", "drain-limit"])
async def test_an_error_end_or_a_drain_past_its_limit_arms_the_deadline(
        end: str, cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl,
        weed: SeaweedServer, tmp_path: Path) -> None:
    """S3 stays down. `source-failed`: the deadline starts when capture ends, so the
    container restarts and captures again soon (before, it waited for S3 with capture
    down), and what it could not upload stays in the spool, adopted and uploaded by the
    next run (before, it was given up: review of the stop path); `drain-limit`: a run
    that ended by itself gives up after `FlushDeadline.drain_max_s` (before, a pod whose
    S3 never came back never ended and held its guild) and records the loss as a forced
    end does."""
    limit_s = END_S if end == "drain-limit" else 600  # else the source ends it first
    new_session(kubectl, namespace, "self-stop", limits={"maxDurationSeconds": limit_s})
    s3 = weed.settings
    assert s3 is not None
    recorder, _ = build(cluster, namespace, "self-stop", s3, tmp_path)
    recorder.flush.grace_s = GRACE_S
    recorder.flush.drain_max_s = 2 * GRACE_S
    await recorder.prepare()
    source = {"source-failed": FailingSource, "source-refused": RefusedSource}.get(
        end, TickSource)(recorder, recorder.clock)
    run = asyncio.create_task(recorder.run(source))
    await wait_async("chunk 0 acknowledged", lambda: recorder.uploader.stats.acked == [0], 20)
    await asyncio.to_thread(weed.stop)
    await wait_async("capture ended", lambda: recorder._closed, END_S + 10)
    ended = time.monotonic()
    result = await asyncio.wait_for(run, 60)
    took = time.monotonic() - ended
    limit = GRACE_S + (recorder.flush.drain_max_s if end == "drain-limit" else 0)
    assert took <= limit + recorder.flush.marker_grace_s + 11, took  # + one backoff sleep
    assert result.reason == ("max-duration" if end == "drain-limit" else "source-failed")
    if end != "source-failed":  # no run of this pod follows: the loss is recorded
        assert_loss_recorded(recorder)
        return
    # source-failed: the container restarts in the pod, so its spool is kept for the next
    # run (before, it was given up as a lost window seconds before that run could adopt it)
    left = [p.spec for p in recorder._pending]
    assert left and recorder.uploader.stats.lost == [] and recorder.uploader.spool.used > 0
    assert [c.index for c in chunks_in_api(recorder)] == [0]
    await asyncio.to_thread(restart_weed, weed, s3)
    again, store = build(cluster, namespace, "self-stop", s3, tmp_path)
    await again.prepare()
    assert [p.spec for p in again._pending] == left  # adopted, uploaded first
    for spooled in list(again._pending):
        await asyncio.to_thread(again.uploader.upload, spooled)
    chunks = chunks_in_api(again)
    assert [c.index for c in chunks] == list(range(len(left) + 1))
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(chunks))
    for chunk in chunks:
        for track in chunk.tracks:
            assert sha256_hex(store.get_bytes(track.key)) == track.sha256
    assert again.uploader.spool.used == 0
