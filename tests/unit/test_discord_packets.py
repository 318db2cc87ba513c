"""RTP parsing, transport decryption, SSRC map and jitter buffer on real packets."""

from __future__ import annotations

import os
import struct

import pytest

from tests.discord_rig import transport_encrypt
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.jitter import Held, JitterBuffer
from voicetrack_recorder.discord.rtp import (
    RtpError,
    build_rtp_header,
    is_rtcp,
    parse_rtp,
    seq_diff,
    ts_diff,
)
from voicetrack_recorder.discord.ssrc import GatewayEventError, SsrcMap
from voicetrack_recorder.discord.timeline import Timeline
from voicetrack_recorder.discord.transport import (
    MODE_AES256_GCM,
    MODE_XCHACHA20,
    TransportDecryptor,
    TransportError,
)

pytestmark = pytest.mark.unit


def test_rtp_header_with_csrcs_and_extension() -> None:
    header = build_rtp_header(65535, 2**32 - 1, 0xDEADBEEF, marker=True,
                              csrcs=(1, 2), extension_words=3)
    packet = header + b"\x11" * 12 + b"payload"
    h = parse_rtp(packet)
    assert (h.sequence, h.timestamp, h.ssrc, h.payload_type) == (65535, 2**32 - 1,
                                                                  0xDEADBEEF, 0x78)
    assert h.marker and h.has_extension and h.csrcs == (1, 2)
    assert (h.extension_profile, h.extension_words) == (0xBEDE, 3)
    assert h.header_bytes == 12 + 8 + 4
    assert packet[h.payload_offset:] == b"payload"


@pytest.mark.parametrize("data, field", [
    (b"\x80\x78\x00", "shorter than the 12-byte"),
    (b"\x40" + bytes(11), "version is 1"),
    (b"\x82\x78" + bytes(10) + bytes(4), "CSRCs"),
    (b"\x90\x78" + bytes(10) + b"\xbe", "extension header"),
])
def test_rtp_refuses_malformed(data: bytes, field: str) -> None:
    with pytest.raises(RtpError, match=field):
        parse_rtp(data)


def test_rtcp_and_wrap_arithmetic() -> None:
    assert is_rtcp(b"\x80\xc8" + bytes(6))
    assert not is_rtcp(build_rtp_header(1, 1, 1))
    assert seq_diff(2, 65534) == 4 and seq_diff(65534, 2) == -4
    assert ts_diff(100, 2**32 - 860) == 960 and ts_diff(5, 5) == 0


@pytest.mark.parametrize("mode", [MODE_AES256_GCM, MODE_XCHACHA20])
def test_transport_roundtrip_strips_extension(mode: str) -> None:
    key = os.urandom(32)
    header = build_rtp_header(7, 9600, 42, extension_words=1)
    datagram = transport_encrypt(mode, key, header, b"\x10\xab\x00\x00" + b"opus!", 77)
    assert datagram[-4:] == struct.pack(">I", 77)
    assert TransportDecryptor(mode, key).decrypt(datagram, parse_rtp(datagram)) == b"opus!"
    # without extension
    header = build_rtp_header(8, 10560, 42)
    datagram = transport_encrypt(mode, key, header, b"opus?", 78)
    assert TransportDecryptor(mode, key).decrypt(datagram, parse_rtp(datagram)) == b"opus?"


def test_transport_strips_padding_and_refuses_oversized_extension() -> None:
    key = os.urandom(32)
    padded = bytearray(build_rtp_header(9, 0, 42, extension_words=1))
    padded[0] |= 0x20  # P bit
    datagram = transport_encrypt(MODE_AES256_GCM, key, bytes(padded),
                                 b"\x10\xab\x00\x00" + b"opus" + b"\0\0\x03", 5)
    dec = TransportDecryptor(MODE_AES256_GCM, key)
    assert dec.decrypt(datagram, parse_rtp(datagram)) == b"opus"
    header = build_rtp_header(9, 0, 42, extension_words=40)  # 160 bytes claimed
    datagram = transport_encrypt(MODE_AES256_GCM, key, header, b"short", 6)
    with pytest.raises(TransportError) as err:
        dec.decrypt(datagram, parse_rtp(datagram))
    assert err.value.cause == "extension"


@pytest.mark.parametrize("mode", [MODE_AES256_GCM, MODE_XCHACHA20])
def test_transport_refuses_wrong_key_tamper_and_short(mode: str) -> None:
    key = os.urandom(32)
    header = build_rtp_header(7, 9600, 42, extension_words=1)
    datagram = transport_encrypt(mode, key, header, b"\x10\xab\x00\x00opus", 1)
    dec = TransportDecryptor(mode, key)
    with pytest.raises(TransportError) as err:
        TransportDecryptor(mode, os.urandom(32)).decrypt(datagram, parse_rtp(datagram))
    assert err.value.cause == "auth"
    tampered = bytearray(datagram)
    tampered[3] ^= 1  # the header is authenticated data
    with pytest.raises(TransportError):
        dec.decrypt(bytes(tampered), parse_rtp(bytes(tampered)))
    with pytest.raises(TransportError) as err:
        dec.decrypt(datagram[:20], parse_rtp(datagram[:20]))
    assert err.value.cause == "short"
    with pytest.raises(TransportError, match="not one of"):
        TransportDecryptor("xsalsa20_poly1305", key)
    with pytest.raises(TransportError, match="32"):
        TransportDecryptor(mode, key[:16])


U10, U11 = "100000000000000010", "100000000000000011"


def test_ssrc_map_events() -> None:
    m = SsrcMap()
    m.handle(11, {"user_ids": [U10, U11]})
    assert m.users == {U10, U11} and m.user_for(5) is None
    assert m.handle(5, {"user_id": U10, "ssrc": 5, "speaking": 1}) == [5]
    assert m.handle(5, {"user_id": U10, "ssrc": 5, "speaking": 0}) == []
    assert m.user_for(5) == U10
    m.handle(12, {"user_id": U11, "audio_ssrc": 6, "video_ssrc": 7})
    assert m.user_for(6) == U11 and 7 in m.video and m.user_for(7) is None
    m.handle(13, {"user_id": U10})
    assert m.user_for(5) is None and U10 not in m.users
    assert m.handle(8, {"heartbeat_interval": 1}) == []
    with pytest.raises(GatewayEventError, match="'ssrc'"):
        m.handle(5, {"user_id": U10, "ssrc": "x"})
    with pytest.raises(GatewayEventError, match="'user_id'"):
        m.handle(13, {})
    m.handle(5, {"user_id": int(U11), "ssrc": 9, "speaking": 1})  # a number is fine too
    assert m.user_for(9) == U11


@pytest.mark.parametrize("user_id", [
    "1" * 25,  # digits, but no u64: davey raised OverflowError out of the receiver's tick
    "1" * 14, "²", "１２３", "1234567890123456\n", "", True, 1.5e17, None,
])
def test_ssrc_map_refuses_what_is_no_snowflake(user_id: object) -> None:
    m = SsrcMap()
    for op, data in ((5, {"user_id": user_id, "ssrc": 5, "speaking": 1}),
                     (11, {"user_ids": [user_id]}), (13, {"user_id": user_id})):
        with pytest.raises(GatewayEventError, match="not a user id"):
            m.handle(op, data)
    assert m.user_for(5) is None and not m.users


def _held(seq: int, at: float) -> Held:
    return Held(seq & 0xFFFF, seq * 960, bytes([seq & 0xFF]), at)


def test_jitter_reorders_across_wrap_and_gives_up_on_loss() -> None:
    jb = JitterBuffer(max_delay_ms=60, depth=5)
    order = [65534, 0, 65535, 1, 3, 2]  # reordered across the wrap
    for i, seq in enumerate(order):
        assert jb.push(_held(seq, i * 20.0)) is None
    released = jb.pop_ready(200.0)
    assert [r.packet.sequence for r in released] == [65534, 65535, 0, 1, 2, 3]
    assert all(r.lost_before == 0 for r in released)
    assert jb.push(_held(3, 210.0)) == "duplicate"
    assert jb.push(_held(65535, 210.0)) == "duplicate"
    assert jb.push(_held(6, 220.0)) is None          # 4, 5 missing
    assert jb.pop_ready(230.0) == []                 # still waiting for them
    assert jb.push(_held(4, 235.0)) is None
    assert [r.packet.sequence for r in jb.pop_ready(236.0)] == [4]
    late = jb.pop_ready(281.0)                       # 5 given up after 60 ms
    assert [(r.packet.sequence, r.lost_before) for r in late] == [(6, 1)]
    assert jb.push(_held(5, 290.0)) == "late"


def test_jitter_depth_bound_and_restart() -> None:
    jb = JitterBuffer(max_delay_ms=1000, depth=2)
    jb.push(_held(10, 0.0))
    assert [r.packet.sequence for r in jb.pop_ready(1000.0)] == [10]
    for seq in (12, 13, 14):
        jb.push(_held(seq, 1.0))
    out = jb.pop_ready(2.0)  # more than `depth` behind the gap: 11 is given up
    assert [(r.packet.sequence, r.lost_before) for r in out] == [(12, 1), (13, 0), (14, 0)]
    jb.push(_held(30000, 3.0))  # a restarted stream, not 'late'
    assert [(r.packet.sequence, r.lost_before) for r in jb.drain()] == [(30000, 0)]


def test_timeline_anchors_once_and_resyncs_on_a_lasting_timestamp_stall() -> None:
    t0 = 1_800_000_000_000
    tl = Timeline(SessionClock(t0), resync_ms=500)
    ts = 2**32 - 960  # wraps on the next frame
    assert tl.slot("u", 7, ts, t0 + 1000 + 20 + 9) == 50  # arrival - 20 ms → slot 50
    tl.placed("u", 50)
    # jitter up to the resync bound never moves a frame; the timestamp wraps cleanly
    assert tl.slot("u", 7, (ts + 960 * 10) & 0xFFFFFFFF, t0 + 1000 + 220 + 400) == 60
    tl.placed("u", 60)
    # a stalled sender clock (timestamps 1 s behind arrival): placed by RTP while the
    # disagreement may still be a receiver stall draining, at arrival once it has lasted
    # resync_ms (see tests/unit/test_timeline.py for stalls, bursts and jumps)
    slots = []
    for i in range(26):
        slots.append(tl.slot("u", 7, (ts + 960 * (11 + i)) & 0xFFFFFFFF,
                             t0 + 3000 + 20 + 20 * i))
        tl.placed("u", slots[-1])
    assert slots == [*range(61, 86), 175]
    assert tl.resyncs == 1
    # a new SSRC (rejoin) anchors anew but never before the last placed slot
    assert tl.slot("u", 8, 12345, t0 + 2000) == 176
