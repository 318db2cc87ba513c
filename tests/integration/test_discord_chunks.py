"""The `discord` source end to end on the rig: received frames → the recorder's chunker →
raw Ogg Opus chunks in SeaweedFS → `voicetrack-transcoder promote` (FLAC) → every marker
(a tone burst's onset) at its true session time ± 20 ms.

Speakers send only while they talk (as Discord clients do; RTP timestamps keep running),
with network latency, jitter, reordering and a lost packet; a speaker joins mid-session
(a DAVE epoch change); one burst crosses a chunk boundary.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.discord_rig import Harness, encode_frames, tone_pcm
from voicetrack.audio import FRAME_MS, RAW_FORMAT_OGG_OPUS, SAMPLE_RATE
from voicetrack.chunkspec import ChunkSpec, ChunkTrack
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan
from voicetrack.objectstore import ObjectStore
from voicetrack.oggopus import encode_ogg_opus
from voicetrack_recorder.chunker import Chunker, SealedChunk

pytestmark = pytest.mark.integration

CHUNK_SLOTS = 100  # 2 s windows
SESSION_MS = 6000
BURST_MS = 300
U1, U2, U3 = 222_000_000_000_000_000, 333_000_000_000_000_000, 444_000_000_000_000_000
"""Speakers: user ids are Discord snowflakes (15 to 20 digits), as the chunk CRD requires."""
MARKERS = {  # user id → burst onsets (session ms, on the 20 ms grid as clients capture)
    U1: [400, 1900, 3500],
    U2: [800, 2600, 4600],
    U3: [3200, 5200],  # joins at 3000 ms
}
TRAIL_FRAMES = 5  # Discord clients send five silence-ish frames after speech


def _speaker_packets(freq: float) -> list[bytes]:
    """The speaker's whole session encoded by one libopus encoder (bursts + silence)."""
    return encode_frames(tone_pcm(SESSION_MS // FRAME_MS, freq, amp=0.5))


def _burst_mask(onsets: list[int]) -> set[int]:
    slots: set[int] = set()
    for onset in onsets:
        first = onset // FRAME_MS
        slots.update(range(first, first + BURST_MS // FRAME_MS + TRAIL_FRAMES))
    return slots


def _onsets(pcm: np.ndarray, threshold: float = 2000, quiet_ms: int = 150) -> list[float]:
    """Session ms of every rise above `threshold` after at least `quiet_ms` of quiet."""
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    out: list[float] = []
    last = -10**9
    for i in loud.tolist():
        if i - last > quiet_ms * SAMPLE_RATE // 1000:
            out.append(i * 1000 / SAMPLE_RATE)
        last = i
    return out


async def test_markers_at_true_time_after_promotion(object_store: ObjectStore,
                                                    tmp_path: Path) -> None:
    rng = random.Random(11)
    chunker = Chunker(CHUNK_SLOTS)
    chunker.open(0)
    h = await Harness.open(sink=chunker)
    speakers = {s.user_id: s for s in await h.rig.join(U1, U2)}
    await h.settle()
    freqs = {U1: 440.0, U2: 660.0, U3: 880.0}
    # silence between bursts: real encoders would code digital silence; tone only in bursts
    packets = {}
    for user, onsets in MARKERS.items():
        pcm = bytearray(SESSION_MS // FRAME_MS * 3840)
        tone = tone_pcm(SESSION_MS // FRAME_MS, freqs[user], amp=0.5)
        for onset in onsets:
            a, b = onset * 192, (onset + BURST_MS) * 192  # 192 bytes per ms
            pcm[a:b] = tone[a:b]
        packets[user] = encode_frames(bytes(pcm))
    schedule: list[tuple[float, int, int]] = []  # (arrival ms, user, slot)
    for user, onsets in MARKERS.items():
        for slot in sorted(_burst_mask(onsets)):
            if user == U2 and slot == 2600 // FRAME_MS + 3:
                continue  # lost in the network
            capture_end = (slot + 1) * FRAME_MS  # a frame leaves once captured
            schedule.append((capture_end + 2 + rng.uniform(0, 12), user, slot))
    schedule.sort()
    sealed: list[SealedChunk | None] = []
    joined = False
    rtp_base = {u: (s.sequence, s.timestamp) for u, s in speakers.items()}
    sent_slots = {u: sorted(_burst_mask(onsets)) for u, onsets in MARKERS.items()}
    for arrival, user, slot in schedule:
        if not joined and arrival >= 3000:
            speakers[U3] = (await h.rig.join(U3))[0]  # a member added: epoch change
            rtp_base[U3] = (speakers[U3].sequence, speakers[U3].timestamp)
            await h.settle()
            joined = True
        speaker = speakers[user]
        # RTP as the client numbered it: sequence counts packets sent (the lost one too),
        # the timestamp counts 960 ticks per 20 ms of capture time, silence included
        seq0, ts0 = rtp_base[user]
        speaker.sequence = (seq0 + sent_slots[user].index(slot)) & 0xFFFF
        speaker.timestamp = (ts0 + slot * 960) & 0xFFFF_FFFF
        datagram = h.rig.packet(speaker, packets[user][slot])
        await h.deliver(datagram, arrival)
        while chunker.due(h.clock.slot_at(h.time.now * 1000) - 10):
            sealed.append(chunker.seal())
    await h.finish()
    while chunker.start_slot is not None and chunker.start_slot < SESSION_MS // FRAME_MS:
        sealed.append(chunker.seal())
    chunks_sealed = [c for c in sealed if c is not None]
    assert [c.end_ms for c in chunks_sealed] == list(range(2000, SESSION_MS + 1, 2000))
    assert h.receiver.stats.recovered == 1 and not h.receiver.stats.dropped

    layout = MeetingLayout("vt", "1" * 18, "DiscordRigTest01")
    chunks = []
    for chunk in chunks_sealed:
        tracks = []
        for track in chunk.tracks:
            data = encode_ogg_opus(track.packets)
            key = layout.raw_key(chunk.index, track.user_id, RAW_FORMAT_OGG_OPUS)
            object_store.put_bytes(key, data, "audio/ogg")
            tracks.append(ChunkTrack(user_id=track.user_id, key=key, frames=track.frames,
                                     first_ms=track.first_ms, last_ms=track.last_ms,
                                     bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                     phase_samples=track.phase_samples))
        chunks.append(ChunkSpec(session_name="rig", meeting_id=layout.meeting_id,
                                guild_id=layout.guild_id, index=chunk.index,
                                start_ms=chunk.start_ms, end_ms=chunk.end_ms, tracks=tracks))
    users = [str(u) for u in MARKERS]
    plan = PromotionPlan(guild_id=layout.guild_id, meeting_id=layout.meeting_id,
                         prefix="vt", session_end_ms=SESSION_MS, speakers=users,
                         chunks=chunks, tracks="perSpeaker", formats=["flac"])
    object_store.put_json(layout.promotion_plan_key, plan.to_api())
    exe = Path(sys.executable).with_name("voicetrack-transcoder")
    run = subprocess.run([str(exe), "promote", "--plan-key", layout.promotion_plan_key],
                         env=dict(os.environ) | object_store.settings.env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for user_id in users:
        flac = tmp_path / f"{user_id}.flac"
        flac.write_bytes(object_store.get_bytes(layout.final_key(user_id, "flac")))
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(flac), "-f", "s16le",
                              "-ac", "1", "-ar", str(SAMPLE_RATE), "-"],
                             capture_output=True, check=True).stdout
        samples = np.frombuffer(raw, "<i2").astype(float)
        assert len(samples) == SESSION_MS * SAMPLE_RATE // 1000
        found = _onsets(samples)
        want = MARKERS[int(user_id)]
        assert len(found) == len(want), (user_id, found)
        for got, true in zip(found, want, strict=True):
            assert abs(got - true) <= 20, f"user {user_id}: marker at {got:.1f} ms, true {true}"
