"""The transcoder's audio parts without servers: libopus decoding, the limiter, peaks."""

from __future__ import annotations

import json

import discord.opus
import numpy as np
import pytest

from tests.audio_helpers import Speaker, encode_session
from voicetrack.audio import FRAME_SAMPLES, OPUS_SILENCE_FRAME, OPUS_TOC_STEREO, opus_channels
from voicetrack_transcoder.mixer import PIXEL, THRESHOLD, Limiter, mix_sum
from voicetrack_transcoder.opusdec import OpusDecodeError, OpusDecoder
from voicetrack_transcoder.waveform import PeaksBuilder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[bytes]]:
    pcm = Speaker("1" * 18, 200, level=0.4, talks=[(100, 1500)], markers=[1700]).pcm(2000)
    return pcm, encode_session(pcm)


def test_decoder_matches_discord_py_and_continues_across_calls(
        speech: tuple[np.ndarray, list[bytes]]) -> None:
    _, packets = speech
    reference = discord.opus.Decoder()
    expected = np.frombuffer(b"".join(reference.decode(p) for p in packets),
                             dtype="<i2").reshape(-1, 2)
    ours = OpusDecoder()
    got = np.concatenate([ours.decode(packets[i:i + 7]) for i in range(0, len(packets), 7)])
    assert got.shape == (len(packets) * FRAME_SAMPLES, 2)
    assert np.array_equal(got, expected)


def test_silence_frame_decodes_to_digital_silence() -> None:
    out = OpusDecoder().decode([OPUS_SILENCE_FRAME] * 10)
    assert out.shape == (9600, 2) and not out.any()


def test_decoder_rejects_a_corrupt_packet() -> None:
    with pytest.raises(OpusDecodeError, match="packet 1"):
        OpusDecoder().decode([OPUS_SILENCE_FRAME, bytes([0xFF])])  # code 3, no count byte


def _limit_in_blocks(x: np.ndarray, sizes: list[int]) -> np.ndarray:
    limiter = Limiter()
    out, pos, i = [], 0, 0
    while pos < x.shape[0]:
        n = sizes[i % len(sizes)]
        out.append(limiter.process(x[pos:pos + n]))
        pos += n
        i += 1
    out.append(limiter.flush())
    return np.concatenate(out)


def test_limiter_never_clips_and_keeps_length() -> None:
    rng = np.random.default_rng(3)
    n = 48_000 * 3 + 123
    loud = (rng.standard_normal((n, 2)) * 30_000).astype(np.int32)
    loud[48_000:60_000] *= 4  # a burst far over full scale
    out = _limit_in_blocks(loud, [48_000])
    assert out.shape == loud.shape and out.dtype == np.int16
    assert np.abs(out.astype(np.int32)).max() <= THRESHOLD + 1


def test_limiter_leaves_quiet_audio_alone() -> None:
    t = np.arange(48_000 * 2) / 48_000
    tone = np.round(10_000 * np.sin(2 * np.pi * 300 * t)).astype(np.int32)
    x = np.stack([tone, tone], axis=1)
    out = _limit_in_blocks(x, [4_800])
    assert np.array_equal(out.astype(np.int32), x)


def test_limiter_output_does_not_depend_on_block_sizes() -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((48_000 * 2 + 77, 2)) * 40_000).astype(np.int32)
    a = _limit_in_blocks(x, [48_000])
    b = _limit_in_blocks(x, [PIXEL - 1, 3 * PIXEL + 5, 17, 20_000])
    assert np.array_equal(a, b)


def test_limiter_gain_changes_smoothly() -> None:
    # A step from quiet to 3x over full scale: no sample-to-sample jump bigger than the
    # signal's own (a sudden gain change would add one).
    t = np.arange(48_000) / 48_000
    tone = 20_000 * np.sin(2 * np.pi * 100 * t)
    tone[24_000:] *= 4
    x = np.stack([tone, tone], axis=1).astype(np.int32)
    out = _limit_in_blocks(x, [9_600]).astype(np.int64)
    own_step = 2 * np.pi * 100 / 48_000 * 32_767  # the largest step of a full-scale 100 Hz tone
    assert np.abs(np.diff(out[:, 0])).max() <= own_step * 1.1


def test_mix_sum_does_not_wrap() -> None:
    a = np.full((10, 2), 30_000, dtype=np.int16)
    assert mix_sum([a, a, a]).max() == 90_000


def test_peaks_follow_audiowaveform_v2() -> None:
    block = np.zeros((PIXEL * 3 + 100, 2), dtype=np.int16)
    block[10, 0] = 32_767
    block[PIXEL + 5, 1] = -32_768
    block[PIXEL * 3 + 50, 0] = 256 * 5
    builder = PeaksBuilder(PIXEL)
    builder.add(block[:700])
    builder.add(block[700:])
    doc = builder.to_json()
    assert doc["version"] == 2 and doc["channels"] == 1 and doc["bits"] == 8
    assert doc["sample_rate"] == 48_000 and doc["samples_per_pixel"] == PIXEL
    assert doc["length"] == 4
    assert doc["data"] == [0, 127, -128, 0, 0, 0, 0, 5]
    json.dumps(doc)


def test_skipping_settled_silence_is_bit_exact(speech: tuple[np.ndarray, list[bytes]]) -> None:
    """Speech broken by silence runs of every length decodes exactly as libopus decodes
    every packet (the decoder skips only silence frames that leave its state unchanged)."""
    _, packets = speech
    talk = [p for p in packets if p != OPUS_SILENCE_FRAME]
    stream: list[bytes] = []
    for i, run in enumerate([1, 2, 3, 4, 5, 7, 10, 30, 1, 60, 2, 100]):
        stream += talk[i * 6:(i + 1) * 6] + [OPUS_SILENCE_FRAME] * run
    reference = discord.opus.Decoder()
    expected = np.frombuffer(b"".join(reference.decode(p) for p in stream),
                             dtype="<i2").reshape(-1, 2)
    ours = OpusDecoder()
    got = np.concatenate([ours.decode(stream[i:i + 13]) for i in range(0, len(stream), 13)])
    assert np.array_equal(got, expected)


def test_opus_channels_reads_the_toc_stereo_bit(speech: tuple[np.ndarray, list[bytes]]) -> None:
    pcm, stereo = speech
    mono = encode_session(pcm, mono=True)
    assert {p[0] & OPUS_TOC_STEREO for p in mono} == {0}
    assert opus_channels(mono) == 1 and opus_channels([OPUS_SILENCE_FRAME, b""]) == 1
    assert opus_channels(stereo) == 2
    assert opus_channels([*mono, stereo[50]]) == 2  # one stereo-coded packet is enough


def test_mono_decoder_gives_the_left_channel_of_mono_coded_packets(
        speech: tuple[np.ndarray, list[bytes]]) -> None:
    packets = encode_session(speech[0], mono=True)
    mono = OpusDecoder(1).decode(packets)
    stereo = OpusDecoder().decode(packets).astype(np.int32)
    assert mono.shape == (len(packets) * FRAME_SAMPLES, 1) and mono.any()
    assert np.array_equal(stereo[:, 0], mono[:, 0])
    # the right channel differs only in packets where the codec switches mode (here hybrid
    # to the CELT silence frame), by the stereo decoder's transition smoothing
    differs = sorted({int(i) // FRAME_SAMPLES for i in np.flatnonzero(stereo[:, 1] - mono[:, 0])})
    assert all(packets[i - 1][0] >> 3 != packets[i][0] >> 3 for i in differs), differs
    assert np.abs(stereo[:, 1] - mono[:, 0]).max() <= 0.01 * np.abs(mono).max()
    with pytest.raises(ValueError, match="shape"):
        OpusDecoder(1).decode_into(packets[:1], np.zeros((960, 2), dtype=np.int16))


def test_mono_limiter_and_mix() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((48_000 + 31, 1)) * 40_000).astype(np.int32)
    limiter = Limiter(channels=1)
    out = np.concatenate([limiter.process(x[:20_000]), limiter.process(x[20_000:]),
                          limiter.flush()])
    assert out.shape == x.shape and np.abs(out.astype(np.int32)).max() <= THRESHOLD + 1
    # in a stereo mix a mono speaker is centred: counted in both channels
    left_right = np.array([[1, 2]] * 4, dtype=np.int16)
    centre = np.array([[10]] * 4, dtype=np.int16)
    assert mix_sum([left_right, centre]).tolist() == [[11, 12]] * 4
    assert mix_sum([centre, centre], channels=1).tolist() == [[20]] * 4
