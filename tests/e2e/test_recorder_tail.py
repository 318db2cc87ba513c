"""The end of a run and a pause keep the frames a jitter buffer still holds (review fault).

The recorder seals a window 400 ms after its end (`sealing.SEAL_DELAY_SLOTS`) so frames
held by a jitter buffer reach it. At the end of a run and at a pause it sealed at the
current slot at once: the frames of the last few hundred ms, still held, came after the
seal and were dropped as `closed`, so every stopped session lost the end of its last words
and every pause the words just before it. Now the end (stop or pause) slot is fixed at the
moment of the stop, and the window is sealed there when the seal rule allows; frames for
slots after it are still refused (nothing after a stop or a pause is recorded).

The real `Recorder`, `RecorderKube` and `ChunkUploader` against the local control plane
(CRDs installed, no operator) and SeaweedFS; a source sends a real Opus packet per 20 ms
slot and holds the frames of the last HOLD_MS before the stop or pause until RELEASE_S
after it, as a jitter buffer does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.unit.recorder_rig import sine_packet
from voicetrack.audio import FRAME_MS
from voicetrack.chunkspec import ChunkSpec
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import (
    API_VERSION,
    GROUP,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
    SessionSpec,
)
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.sealing import SEAL_DELAY_SLOTS
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GUILD, CHANNEL, USER = "300000000000000111", "300000000000000112", "400000000000000113"
MEETING = "abcdef0123456789"
HOLD_MS = 300
"""The frames of the last HOLD_MS before the stop or pause are held back..."""
RELEASE_S = 0.2
"""...until RELEASE_S after it (a jitter buffer's hold, inside the 400 ms seal delay)."""


class HeldSource:
    """One speaker sending a real Opus packet for every 20 ms slot in real time, except
    that the frames from slot `hold_from` on are held until `release_at` (monotonic s).
    `pushed[slot]` is what the recorder answered (True: kept). At stop it pushes what it
    holds at once, as the `discord` source's receiver does (`flush`)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.packet = sine_packet()
        self.hold_from: int | None = None
        self.release_at: float | None = None
        self.pushed: dict[int, bool] = {}

    def held(self, slot: int) -> bool:
        return (self.hold_from is not None and slot >= self.hold_from
                and (self.release_at is None or time.monotonic() < self.release_at))

    async def run(self, stop: asyncio.Event) -> None:
        slot = max(self.recorder.clock.now_slot(), 0)
        while not stop.is_set():
            while slot <= self.recorder.clock.now_slot() and not self.held(slot):
                self.pushed[slot] = self.recorder.push(USER, slot, self.packet)
                slot += 1
            await asyncio.sleep(0.02)
        while slot <= self.recorder.clock.now_slot():  # stopped: flush what is held, as
            self.pushed[slot] = self.recorder.push(USER, slot, self.packet)  # discord's
            slot += 1  # receiver does

    async def hold_then(self) -> None:
        """Hold the frames from now on; return HOLD_MS later with their release set to
        RELEASE_S from then (the caller stops or pauses now)."""
        self.hold_from = self.recorder.clock.now_slot() + 1
        await asyncio.sleep(HOLD_MS / 1000)
        self.release_at = time.monotonic() + RELEASE_S


def recorder_for(cluster: LocalCluster, namespace: str, tmp_path: Path,
                 store: ObjectStore) -> tuple[RecorderKube, Recorder]:
    """A session `standup` (5 s chunks) on the local control plane and its Recorder."""
    install_crds(cluster.kubeconfig)
    api = load_api_client(str(cluster.kubeconfig))
    raw_spec = {"guildId": GUILD, "channelId": CHANNEL, "chunkSeconds": 5}
    obj: Any = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSION_PLURAL,
        {"apiVersion": API_VERSION, "kind": SESSION_KIND,
         "metadata": {"name": "standup"}, "spec": raw_spec})
    kube = RecorderKube(api, namespace, "standup")
    kube.paused = False
    spool = Spool(tmp_path / "spool", 1 << 30, MeetingLayout(
        prefix="recordings", guild_id=GUILD, meeting_id=MEETING), "standup")
    uploader = ChunkUploader(store, kube, spool, obj["metadata"]["uid"],
                             ack_file=str(tmp_path / "acked.json"))
    return kube, Recorder(kube, uploader, SessionSpec.model_validate(raw_spec),
                          SessionClock(int(time.time() * 1000) - 20_000))


def assert_tail_kept(source: HeldSource, chunk: ChunkSpec) -> None:
    """Every held frame for a slot before `chunk`'s end was kept, in `chunk`, up to its last
    slot; none for a slot at or after its end."""
    assert source.hold_from is not None
    end = chunk.end_ms // FRAME_MS
    before = [s for s in source.pushed if source.hold_from <= s < end]
    after = [s for s in source.pushed if s >= end]
    assert len(before) >= HOLD_MS // FRAME_MS - 1, (source.hold_from, end)
    lost = [s for s in before if not source.pushed[s]]
    assert not lost, f"{len(lost)} of the {len(before)} held frames before the end lost"
    assert after and not any(source.pushed[s] for s in after)
    (track,) = chunk.tracks
    kept = [s for s, ok in source.pushed.items()
            if ok and chunk.start_ms <= s * FRAME_MS < chunk.end_ms]
    assert track.frames == len(kept) and track.last_ms == chunk.end_ms - FRAME_MS


async def test_a_stop_keeps_the_frames_still_held_at_the_stop(
        cluster: LocalCluster, namespace: str, tmp_path: Path,
        object_store: ObjectStore) -> None:
    kube, rec = recorder_for(cluster, namespace, tmp_path, object_store)
    await rec.prepare()
    source = HeldSource(rec)
    run = asyncio.create_task(rec.run(source))
    await asyncio.sleep(1.0)
    await source.hold_then()
    rec.stop.set()  # /record stop, while the last 300 ms are still held
    result = await asyncio.wait_for(run, 60)
    assert result.error is None and result.reason == "stopped", result
    chunks = kube.list_chunks()
    assert [c.index for c in chunks] == [0], chunks
    assert_tail_kept(source, chunks[0])


async def test_a_pause_keeps_the_held_frames_and_a_quick_resume_follows_it(
        cluster: LocalCluster, namespace: str, tmp_path: Path,
        object_store: ObjectStore) -> None:
    """Paused while the last 300 ms are held, resumed 250 ms later (before the paused
    window is sealed): the window before the pause has every frame up to the pause slot,
    nothing from the pause is kept, and the next window opens at the resume after a
    `paused` gap."""
    kube, rec = recorder_for(cluster, namespace, tmp_path, object_store)
    await rec.prepare()
    source = HeldSource(rec)
    run = asyncio.create_task(rec.run(source))
    await asyncio.sleep(1.0)
    await source.hold_then()
    kube.paused = True
    await asyncio.sleep(0.25)
    kube.paused = False
    await asyncio.sleep(1.0)
    rec.stop.set()
    result = await asyncio.wait_for(run, 60)
    assert result.error is None, result
    chunks = kube.list_chunks()
    assert [c.index for c in chunks] == [0, 1], chunks
    first, second = chunks
    assert second.gap is not None and second.gap.cause == "paused"
    assert (second.gap.start_ms, second.gap.end_ms) == (first.end_ms, second.start_ms)
    # resumed before the paused window could be sealed: the resume was queued
    assert 0 < second.start_ms - first.end_ms < SEAL_DELAY_SLOTS * FRAME_MS
    in_pause = [s for s in source.pushed if first.end_ms <= s * FRAME_MS < second.start_ms]
    assert in_pause and not any(source.pushed[s] for s in in_pause)
    before = {s: ok for s, ok in source.pushed.items() if s * FRAME_MS < second.start_ms}
    assert_tail_kept(_only(source, before), first)
    # the resume slot's own frame may come before the loop sees the resume: refused
    assert all(source.pushed[s] for s in source.pushed
               if second.start_ms < s * FRAME_MS < second.end_ms)


def _only(source: HeldSource, pushed: dict[int, bool]) -> HeldSource:
    """`source` seen only through the frames `pushed` (those before the resume)."""
    view = HeldSource(source.recorder)
    view.hold_from, view.pushed = source.hold_from, pushed
    return view
