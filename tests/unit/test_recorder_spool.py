"""The recorder's spool: sealed chunks on disk within a byte bound, PCM streamed.

Real files in a temporary directory and real libopus; the recorder's drop path runs with a
Kubernetes client and an object store on a loopback port nothing listens on (spooling
touches neither)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import struct
import tracemalloc
from pathlib import Path

import pytest
from discord import opus
from kubernetes import client

from voicetrack.audio import FRAME_SAMPLES
from voicetrack.chunkspec import Gap
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec
from voicetrack_recorder.chunker import Chunker, SealedChunk, SealedTrack
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import PCM_FRAME_BYTES, Spool, SpoolFull
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = pytest.mark.unit

GUILD = "300000000000000001"
LAYOUT = MeetingLayout(prefix="recordings", guild_id=GUILD, meeting_id="abcdef0123456789")


def sine_packet() -> bytes:
    """One real 20 ms Opus packet of a 440 Hz tone (libopus, stereo)."""
    assert opus.is_loaded() or opus._load_default()
    pcm = b"".join(struct.pack("<hh", v, v) for v in (
        int(8000 * math.sin(2 * math.pi * 440 * i / 48_000)) for i in range(FRAME_SAMPLES)))
    return opus.Encoder().encode(pcm, FRAME_SAMPLES)


def chunk_of(index: int, slots: int, packet: bytes,
             user: str = "200000000000000001") -> SealedChunk:
    return SealedChunk(index=index, start_ms=index * slots * 20,
                       end_ms=(index + 1) * slots * 20, gap=None,
                       tracks=[SealedTrack(user_id=user, packets=[packet] * slots,
                                           frames=slots, first_ms=index * slots * 20,
                                           last_ms=((index + 1) * slots - 1) * 20)])


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


def unreachable() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_a_full_spool_drops_the_window_into_the_next_chunks_gap(tmp_path: Path) -> None:
    """Nothing is dropped silently: a chunk the full spool refuses gives its index back,
    and the next chunk spooled carries its window as a `connection-lost` gap."""
    kube = RecorderKube(client.ApiClient(client.Configuration(host=f"http://{unreachable()}")),
                        "rec", "standup")
    store = ObjectStore(S3Settings(endpoint=f"http://{unreachable()}", access_key="a",
                                   secret_key="b"))
    packet = sine_packet()
    spool = Spool(tmp_path / "s", 260_000, LAYOUT, "standup")
    spec = SessionSpec.model_validate({"guildId": GUILD, "channelId": GUILD,
                                       "chunkSeconds": 5})
    uploader = ChunkUploader(store, kube, spool, "uid-1", str(tmp_path / "acks.json"))
    recorder = Recorder(kube, uploader, spec, SessionClock(0, time_fn=lambda: 0.0))
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
    store = ObjectStore(S3Settings(endpoint=f"http://{unreachable()}", access_key="a",
                                   secret_key="b"))
    kube = RecorderKube(client.ApiClient(client.Configuration(host=f"http://{unreachable()}")),
                        "rec", "standup")
    uploader = ChunkUploader(store, kube, Spool(tmp_path / "s", 1 << 20, LAYOUT, "standup"),
                             "uid-1", str(acks))
    assert uploader.stats.acked == [0, 1, 2]
    assert uploader.stats.summary().startswith("acknowledged 0-2 (0 by this run, 0 bytes)")
