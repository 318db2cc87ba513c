"""The receive pipeline against a call member whose (modified) client sends what no honest
client does: malformed or wrong-length Opus packets sealed with valid DAVE and transport
keys. Real davey sessions, real AEAD, real libopus (the rig, `tests/discord_rig.py`); the
sealed chunk goes through the real spool and the transcoder's raw-track check and decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from discord import opus

from tests.discord_rig import Harness, encode_frames, tone_pcm
from voicetrack.audio import CHANNELS, FRAME_SAMPLES, OPUS_SILENCE_FRAME
from voicetrack.layout import MeetingLayout
from voicetrack.opuspacket import is_one_slot, packet_samples
from voicetrack.resources import RawFormat
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.discord.conceal import REBUILD_BURST, REBUILDS_PER_S
from voicetrack_recorder.spool import Spool
from voicetrack_transcoder.opusdec import OpusDecoder
from voicetrack_transcoder.rawtracks import validate_raw

pytestmark = pytest.mark.unit

START_MS = 1000
LATENCY_MS = 8
BAD_AT = 25
FRAMES = 50
A, B = 222222222222222222, 333333333333333333  # snowflakes: the chunk spec checks them


def _encoded(samples: int) -> bytes:
    """One real libopus packet of `samples` per channel (10, 40, 60 ms...)."""
    return opus.Encoder().encode(bytes(samples * CHANNELS * 2), samples)


HOSTILE = {
    "code-3 without its frame-count byte": b"\x03",
    "one 20 ms frame, padding flag, no padding length": b"\xfb\x41",
    "10 ms": _encoded(480),
    "40 ms": _encoded(1920),
    "60 ms": _encoded(2880),
}


def test_only_well_formed_20_ms_packets_fit_a_slot() -> None:
    good = encode_frames(tone_pcm(1, 440))[0]
    assert packet_samples(good) == FRAME_SAMPLES and is_one_slot(good)
    assert is_one_slot(OPUS_SILENCE_FRAME)
    assert is_one_slot(b"\xf8")  # a frame of length 0 (RFC 6716 §3.2.1): decodes as PLC
    assert packet_samples(b"\x03") is None and packet_samples(b"\xfb\x41") is None
    assert packet_samples(b"") is None
    assert packet_samples(HOSTILE["60 ms"]) == 2880
    assert not any(is_one_slot(p) for p in HOSTILE.values())


@pytest.mark.parametrize("raw_format", ["ogg-opus", "pcm-s16le"])
@pytest.mark.parametrize("bad", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_packet_is_refused_and_the_chunk_survives(
        bad: bytes, raw_format: RawFormat, tmp_path: Path) -> None:
    chunker = Chunker(chunk_slots=250)
    chunker.open(0)
    h = await Harness.open(sink=chunker, conceal_frames=3)
    a, b = await h.rig.join(A, B)
    await h.settle()
    good = encode_frames(tone_pcm(FRAMES, 440))
    schedule = []
    for i in range(FRAMES):
        at = START_MS + 20 * (i + 1) + LATENCY_MS
        schedule.append((at, h.rig.packet(a, good[i])))
        schedule.append((at + 1, h.rig.packet(b, bad if i == BAD_AT else good[i])))
    await h.play(schedule)
    await h.finish()

    chunk = chunker.seal()
    assert chunk is not None

    spool = Spool(tmp_path, 10**9, MeetingLayout("p", "123456789012345678", "abcdefghijklmnop"),
                  "sess", raw_format)
    spooled = spool.add(chunk)  # raised OggOpusError / OpusError before the fix
    for track in spooled.spec.tracks:
        data = Path(spooled.files[track.key]).read_bytes()
        raw = validate_raw(spooled.spec, track, data)  # refused 10/40/60 ms packets
        if raw.packets is not None:  # promotion's decoder refused b"\xfb\x41"
            out = np.zeros((len(raw.packets) * FRAME_SAMPLES, CHANNELS), np.int16)
            assert OpusDecoder().decode_into(raw.packets, out) == out.shape[0]
    stats = h.receiver.stats
    assert stats.dropped["opus_invalid"] == 1
    assert stats.lost == 1 and stats.recovered == 1  # concealed like a lost frame
    tracks = {t.user_id: t.packets for t in chunk.tracks}
    base = START_MS // 20
    assert tracks[str(B)][base + BAD_AT] != bad and is_one_slot(tracks[str(B)][base + BAD_AT])
    assert tracks[str(B)][base:base + FRAMES][:BAD_AT] == good[:BAD_AT]
    assert tracks[str(A)][base:base + FRAMES] == good


async def test_a_sender_skipping_sequence_numbers_costs_no_rebuilds() -> None:
    """Sequence numbers skip 3 per packet, timestamps advance one frame: the "losses" are
    no slots at all, so nothing is rebuilt (a rebuild costs ~60 times a packet's CPU)."""
    h = await Harness.open(conceal_frames=3)
    (a,) = await h.rig.join(A)
    await h.settle()
    sent = encode_frames(tone_pcm(100, 440))
    for i, packet in enumerate(sent):
        datagram = h.rig.packet(a, packet)
        a.sequence = (a.sequence + 3) & 0xFFFF
        await h.deliver(datagram, START_MS + 20 * (i + 1) + LATENCY_MS)
    await h.finish()
    stats = h.receiver.stats
    assert stats.recovered == 0 and stats.fec == 0 and "overlap" not in stats.dropped
    assert stats.unconcealed["timestamp_gap"] == 99
    base = START_MS // 20
    assert h.sink.frames[str(A)] == {base + i: p for i, p in enumerate(sent)}


async def test_rebuilds_are_rate_limited_per_stream() -> None:
    """Every packet claims 3 lost frames before it (sequence and timestamp agree): at
    most REBUILD_BURST rebuilds at once and REBUILDS_PER_S a second after that."""
    h = await Harness.open(conceal_frames=3)
    (a,) = await h.rig.join(A)
    await h.settle()
    sent = encode_frames(tone_pcm(60, 440))
    for i, packet in enumerate(sent):
        datagram = h.rig.packet(a, packet, frames=4)
        a.sequence = (a.sequence + 3) & 0xFFFF
        await h.deliver(datagram, START_MS + 80 * (i + 1) + LATENCY_MS)
    await h.finish()
    stats = h.receiver.stats
    rebuilds = stats.recovered // 3
    budget = REBUILD_BURST + REBUILDS_PER_S * 80 * 59 / 1000
    assert stats.recovered == 3 * rebuilds and REBUILD_BURST <= rebuilds <= budget
    assert stats.unconcealed["rate"] == 59 - rebuilds
    assert not stats.unconcealed["timestamp_gap"]


async def test_frames_lost_before_a_pause_are_not_rebuilt_before_the_next_spurt() -> None:
    """The last two frames of a talk spurt are lost, then the speaker pauses 2 s
    (timestamps run on): the next packet's timestamp is 102 frames on, not 3, so the two
    are not rebuilt (they were placed 2 s late, just before the next spurt)."""
    h = await Harness.open(conceal_frames=3)
    (a,) = await h.rig.join(A)
    await h.settle()
    spurt1 = encode_frames(tone_pcm(50, 440, amp=0.4))
    spurt2 = encode_frames(tone_pcm(50, 660, amp=0.4, start_frame=150))
    schedule = []
    for i, packet in enumerate(spurt1):
        datagram = h.rig.packet(a, packet)
        if i < 48:
            schedule.append((START_MS + 20 * (i + 1) + LATENCY_MS, datagram))
    a.timestamp = (a.timestamp + FRAME_SAMPLES * 100) & 0xFFFF_FFFF
    for i, packet in enumerate(spurt2):
        schedule.append((START_MS + 20 * (i + 151) + LATENCY_MS, h.rig.packet(a, packet)))
    await h.play(schedule)
    await h.finish()
    frames = h.sink.frames[str(A)]
    base = START_MS // 20
    assert sorted(frames) == [base + i for i in range(48)] + [base + 150 + i for i in range(50)]
    stats = h.receiver.stats
    assert stats.lost == 2 and stats.recovered == 0
    assert stats.unconcealed == {"timestamp_gap": 1}


@pytest.mark.parametrize("user_id", ["1" * 25, "²", "１２３"])
async def test_a_speaking_event_with_a_bad_user_id_is_ignored_and_logged(
        user_id: str, caplog: pytest.LogCaptureFixture) -> None:
    """The voice server names an SSRC's user with digits that are no snowflake: the event
    is logged and ignored (a 25-digit id reached davey, whose OverflowError escaped the
    receiver's tick and failed the recording)."""
    h = await Harness.open()
    (a,) = await h.rig.join(A)
    await h.settle()
    h.receiver.gateway_event(5, {"user_id": user_id, "ssrc": a.ssrc, "speaking": 1})
    assert "ignoring voice gateway event" in caplog.text and repr(user_id) in caplog.text
    sent = encode_frames(tone_pcm(20, 440))
    for i, packet in enumerate(sent):
        await h.deliver(h.rig.packet(a, packet), START_MS + 20 * (i + 1) + LATENCY_MS)
    await h.finish()
    assert list(h.sink.frames) == [str(A)] and len(h.sink.frames[str(A)]) == 20


async def test_dave_refuses_a_user_id_davey_cannot_take() -> None:
    h = await Harness.open()
    (a,) = await h.rig.join(A)
    frame = a.frame(encode_frames(tone_pcm(1, 440))[0])
    assert h.receiver.dave.decrypt("1" * 25, frame) is None
    assert h.receiver.dave.stats["1" * 25].failures == {"bad_user_id": 1}


def test_code_0_packets_are_judged_as_libopus_judges_them() -> None:
    """`packet_samples` answers one-frame (code 0) packets without libopus: for every TOC
    byte and the lengths around the 1275-byte frame limit its answer is libopus's own
    (`opus_packet_parse` × `opus_packet_get_samples_per_frame`), and so is the per-frame
    table `oggopus` uses for every code."""
    import ctypes

    from voicetrack import opuspacket

    lib = opuspacket._lib()
    checked = 0
    for toc in range(256):
        assert opuspacket.toc_frame_samples(toc) == lib.opus_packet_get_samples_per_frame(
            bytes([toc]), 48000)
        if toc & 3:
            continue
        for length in (1, 2, 3, 200, 1275, 1276, 1277, 1500):
            packet = bytes([toc]) + bytes(length - 1)
            sizes = (ctypes.c_int16 * 48)()
            count = lib.opus_packet_parse(packet, len(packet), ctypes.byref(ctypes.c_ubyte()),
                                          None, sizes, ctypes.byref(ctypes.c_int()))
            expected = (count * opuspacket.toc_frame_samples(toc)) if count > 0 else None
            assert opuspacket.packet_samples(packet) == expected, (toc, length)
            checked += 1
    assert checked == 64 * 8
