"""A source that delivers late (a starved ffmpeg in the `files` source, a loop that ticked
late) must not lose the end of every chunk: the recorder seals a window only once the
source has delivered it (its watermark), never dropping its frames as late.

Seen under heavy load in the web e2e: a speaker's track had 0.6 s of silence before each
5 s chunk boundary, exactly what a source 1 s behind loses with the 400 ms seal delay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.disruptive import test_recorder_outages as outages
from tests.disruptive.test_recorder_outages import (
    USER,
    build,
    chunks_in_api,
    new_session,
    wait_async,
)
from tests.fixtures.cluster import Kubectl
from tests.unit.recorder_rig import sine_packet
from voicetrack.audio import FRAME_MS
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.recorder import Recorder

pytestmark = pytest.mark.disruptive

LAG_MS = 1000

crds = outages.crds
weed = outages.weed


class LaggingSource:
    """One speaker whose frame for slot s arrives LAG_MS after the slot's time (a real
    Opus packet per slot); `watermark_slot` is the next slot it will deliver."""

    def __init__(self, recorder: Recorder, clock: SessionClock) -> None:
        self.recorder = recorder
        self.clock = clock
        self.packet = sine_packet()
        self.next_slot: int | None = None

    def watermark_slot(self) -> int | None:
        return self.next_slot

    async def run(self, stop: asyncio.Event) -> None:
        slot = self.next_slot = max(self.clock.now_slot(), 0)
        while not stop.is_set():
            while (slot * FRAME_MS + LAG_MS) <= self.clock.now_ms():
                self.recorder.push(USER, slot, self.packet)
                slot = self.next_slot = slot + 1
            await asyncio.sleep(0.02)


async def test_a_late_source_loses_no_frames_at_chunk_boundaries(
        cluster: LocalCluster, namespace: str, kubectl: Kubectl, weed: SeaweedServer,
        tmp_path: Path, crds: None) -> None:
    new_session(kubectl, namespace, "lagging")
    assert weed.settings is not None
    recorder, _store = build(cluster, namespace, "lagging", weed.settings, tmp_path)
    await recorder.prepare()
    run = asyncio.create_task(recorder.run(LaggingSource(recorder, recorder.clock)))
    stats = recorder.uploader.stats
    await wait_async("chunks 0 and 1 acknowledged", lambda: stats.acked[:2] == [0, 1], 40)
    recorder.stop.set()
    await run
    chunks = chunks_in_api(recorder)[:2]
    frames = [sum(t.frames for t in c.tracks) for c in chunks]
    slots = [(c.end_ms - c.start_ms) // FRAME_MS for c in chunks[1:]]
    print(f"frames per chunk {frames}, late {recorder.chunker.stats.late}")
    assert recorder.chunker.stats.late == 0
    assert frames[1:] == slots  # a whole chunk: every slot holds the speaker's frame
