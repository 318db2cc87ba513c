"""The recorder's spool: sealed chunks on disk within a byte bound, PCM streamed.

Real files in a temporary directory and real libopus; the recorder's drop path runs on the
rig (`recorder_rig`: a Kubernetes client and an object store on a loopback port nothing
listens on; spooling touches neither)."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from tests.unit.recorder_rig import LAYOUT, chunk_of, recorder_at, sine_packet, uploader_at
from voicetrack.chunkspec import Gap
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.spool import PCM_FRAME_BYTES, Spool, SpoolFull

pytestmark = pytest.mark.unit


def test_a_300_s_pcm_chunk_is_streamed_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    """300 s of PCM s16le stereo is 57.6 MB per speaker; encoding it used to build the
    whole object in memory (and a copy to upload). Peak growth must not scale with the
    chunk's length: a 60 s chunk (11.5 MB of PCM; 60 s keeps tracemalloc's slow-down
    bearable) stays under 2 MiB."""
    packet = sine_packet()
    chunk = chunk_of(0, 60 * 50, packet)
    spool = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup", "pcm-s16le")
    tracemalloc.start()
    try:
        spooled = spool.add(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB"
    (track,) = spooled.spec.tracks
    path = spooled.files[track.key]
    assert os.path.getsize(path) == track.bytes == 60 * 50 * PCM_FRAME_BYTES
    spec_file = Path(spooled.directory) / "chunk.json"  # counted too (the restart's record)
    assert spool.used == spooled.size == track.bytes + spec_file.stat().st_size
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert digest == track.sha256
    assert track.key == LAYOUT.raw_key(0, "200000000000000001", "pcm-s16le")


def test_the_byte_bound_refuses_a_chunk_and_removal_frees_it(tmp_path: Path) -> None:
    packet = sine_packet()
    spool = Spool(tmp_path / "s", 20_000, LAYOUT, "standup")
    first = spool.add(chunk_of(0, 50, packet))
    assert 0 < first.size == spool.used and all(os.path.exists(p) for p in first.files.values())
    with pytest.raises(SpoolFull, match="spool holds"):
        for i in range(1, 10):
            spool.add(chunk_of(i, 50, packet))
    assert spool.used <= 20_000
    spool.remove(first)
    assert not os.path.exists(first.directory)
    assert spool.used < 20_000


async def test_a_full_spool_drops_the_window_into_the_next_chunks_gap(tmp_path: Path) -> None:
    """Nothing is dropped silently: a chunk the full spool refuses gives its index back,
    and the next chunk spooled carries its window as a `connection-lost` gap."""
    packet = sine_packet()
    recorder = recorder_at(tmp_path, SessionClock(0, time_fn=lambda: 0.0), 260_000,
                           chunkSeconds=5)
    spool = recorder.uploader.spool
    chunker: Chunker = recorder.chunker
    chunker.open(0)
    sealed = []
    for n in range(4):
        for slot in range(n * 250, (n + 1) * 250):
            chunker.push("200000000000000001", slot, packet * 2 if n < 3 else packet)
        sealed.append(chunker.seal())
        await recorder._spool(sealed[-1])
    indices = [c.index for c in recorder._pending]
    assert indices == [0, 1] and spool.used <= 260_000  # chunks 2 and 3 did not fit
    assert chunker.next_index == 2  # their index is given back
    spool.remove(recorder._pending.popleft())
    for slot in range(1000, 1250):
        chunker.push("200000000000000001", slot, packet)
    await recorder._spool(chunker.seal())
    last = recorder._pending[-1].spec
    assert last.index == 2 and last.start_ms == 20_000
    assert last.gap == Gap(start_ms=10_000, end_ms=20_000, cause="connection-lost")


def test_a_restarted_recorder_keeps_adding_to_the_ack_file(tmp_path: Path) -> None:
    """The container restarts in the same pod (its emptyDir kept): the ack file holds every
    run's acknowledged indices, not only the last run's."""
    acks = tmp_path / "acks.json"
    acks.write_text(json.dumps({"acked": [0, 1, 2], "lost": []}))
    uploader = uploader_at(tmp_path, 1 << 20)
    assert uploader.stats.acked == [0, 1, 2]
    assert uploader.stats.summary().startswith("acknowledged 0-2 (0 by this run, 0 bytes)")


def test_the_spec_carries_each_tracks_phase(tmp_path: Path) -> None:
    chunk = chunk_of(0, 50, sine_packet())
    chunk.tracks[0].phase_samples = 431
    spooled = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup").add(chunk)
    assert spooled.spec.tracks[0].phase_samples == 431
    saved = json.loads((Path(spooled.directory) / "chunk.json").read_text())
    assert saved["tracks"][0]["phaseSamples"] == 431
