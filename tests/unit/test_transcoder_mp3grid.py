"""MP3 in pieces on one frame grid (real LAME through ffmpeg), and the speech detector."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from voicetrack_transcoder.mp3grid import (
    ENCODER_DELAY,
    FRAME,
    MARGIN_SAMPLES,
    TOTAL_DELAY,
    WARMUP_FRAMES,
    crc16_lame,
    encode_frames,
    encode_owned,
    owned_end,
    silent_frame,
    split_frames,
    tag_file,
    total_frames,
)
from voicetrack_transcoder.speech import HANGOVER_MS, join_runs, smooth, voiced_runs

pytestmark = pytest.mark.unit

RATE = 48_000


def _signal(seconds: float, channels: int = 2) -> np.ndarray:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = 0.3 * np.sin(2 * np.pi * 220 * t + 2 * np.sin(2 * np.pi * 2 * t))
    x += 0.1 * np.sin(2 * np.pi * 1375 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    pcm = np.round(x * 32767).astype(np.int16)
    return np.repeat(pcm[:, None], channels, axis=1)


def _decode(path: Path, channels: int) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac",
                          str(channels), "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype="<i2").reshape(-1, channels).astype(np.int64)


def _assemble(frames: list[bytes], n: int, tmp: Path, name: str) -> Path:
    raw = tmp / f"{name}.frames"
    raw.write_bytes(b"".join(frames))
    out = tmp / f"{name}.mp3"
    tag_file(raw, out, n)
    return out


def _pieces(pcm: np.ndarray, cuts: list[int], tmp: Path, aligned: bool = True
            ) -> list[bytes]:
    """Frames of `pcm` made piece by piece, each piece knowing the audio only up to its cut
    (as a chunk's Job does); `aligned=False` encodes each piece from its own start instead
    (no grid, no warm-up): what must not be done."""
    frames: list[bytes] = []
    first = 0
    n = pcm.shape[0]
    for i, cut in enumerate([*cuts, n]):
        last = cut == n
        end = None if last else owned_end(cut)
        if aligned:
            start = max(first - WARMUP_FRAMES, 0)
            frames += encode_owned(pcm[start * FRAME: cut], start, first, end, 128, tmp,
                                   f"p{i}")
        else:
            begin = max(first * FRAME - TOTAL_DELAY, 0)
            own = encode_frames(pcm[begin: cut], 128, tmp, f"p{i}")
            frames += own[: (len(own) if last else (end or 0) - first)]
        first = end or 0
    return frames


@pytest.mark.parametrize("channels", [1, 2])
def test_pieces_on_the_grid_equal_one_encode_up_to_codec_noise(tmp_path: Path,
                                                                channels: int) -> None:
    pcm = _signal(6.3, channels)
    n = pcm.shape[0]
    cuts = [RATE * 2, RATE * 4 + 960 * 7]
    single = encode_frames(pcm, 128, tmp_path, "single")
    assert len(single) == total_frames(n)
    ref = _decode(_assemble(single, n, tmp_path, "single"), channels)
    got = _decode(_assemble(_pieces(pcm, cuts, tmp_path), n, tmp_path, "pieces"), channels)
    assert got.shape == ref.shape == (n, channels)
    err = np.abs(got - ref).max(axis=1)
    scale = int(np.abs(ref).max())
    junctions = [owned_end(c) * FRAME - TOTAL_DELAY for c in cuts]
    for j in junctions:
        assert err[j - FRAME: j + FRAME].max() <= 0.02 * scale, (j, err[j - FRAME: j + FRAME].max())
    # the same check catches pieces encoded each on its own (off the grid, no warm-up)
    bad = _decode(_assemble(_pieces(pcm, cuts, tmp_path, aligned=False), n, tmp_path,
                            "bad"), channels)
    bad_err = np.abs(bad[:n] - ref[: bad.shape[0]]).max(axis=1) if bad.shape[0] >= n \
        else np.full(n, scale)
    assert any(bad_err[j - FRAME: j + FRAME].max() > 0.02 * scale for j in junctions)


def test_owned_frames_end_a_margin_before_what_is_known() -> None:
    for t in (0, 1000, 96_000, 96_000 + 960, 10**7):
        if t < 2 * FRAME:
            assert owned_end(t) == 0
            continue
        g = owned_end(t)
        assert g * FRAME - TOTAL_DELAY + MARGIN_SAMPLES <= max(t, MARGIN_SAMPLES)
        assert owned_end(t + FRAME) == g + 1


def test_tag_gives_exact_length_and_a_valid_crc(tmp_path: Path) -> None:
    for n in (1000, 57_600 - TOTAL_DELAY, 144_123):
        pcm = _signal(n / RATE + 0.001)[:n]
        out = _assemble(encode_frames(pcm, 128, tmp_path, "t"), n, tmp_path, "t")
        data = out.read_bytes()
        assert _decode(out, 2).shape[0] == n
        at = data.find(b"Info")
        start = data.rfind(b"\xff\xfb", 0, at)
        value = int.from_bytes(data[at + 141: at + 144], "big")
        frames = int.from_bytes(data[at + 8: at + 12], "big")
        assert value >> 12 == ENCODER_DELAY
        assert frames * FRAME - ENCODER_DELAY - (value & 0xFFF) == n
        assert crc16_lame(data[start: at + 154]) == int.from_bytes(data[at + 154: at + 156],
                                                                     "big")


def test_crc16_lame_check_value() -> None:
    assert crc16_lame(b"123456789") == 0xBB3D  # CRC-16/ARC's published check value


@pytest.mark.parametrize("channels", [1, 2])
def test_digital_silence_is_one_repeated_frame(tmp_path: Path, channels: int) -> None:
    frames = encode_frames(np.zeros((RATE * 3, channels), np.int16), 128, tmp_path, "z")
    assert set(frames) == {silent_frame(128, channels, tmp_path)}


def test_split_frames_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="no MPEG-1 Layer III frame"):
        split_frames(b"\x00" * 10)


def test_speech_runs_follow_the_level() -> None:
    pcm = np.zeros((RATE * 3, 2), np.int16)
    pcm[RATE // 2: RATE, :] = 3000        # 500..1000 ms speech
    pcm[RATE + 9600: RATE + 14400, :] = 3000  # 1200..1300 ms: joins the first (gap 200)
    pcm[2 * RATE: 2 * RATE + 960, :] = 20000  # a 20 ms click at 2000 ms: dropped
    pcm[2 * RATE + 48_000 // 2:, 0] = 40     # -58 dBFS hum: below the threshold
    runs = voiced_runs(pcm, 1000)
    assert runs[:2] == [[1500, 2000], [2200, 2300]]
    assert smooth(join_runs([runs]), 4000) == [[1500, 2300 + HANGOVER_MS]]
    assert join_runs([[[0, 20]], [[20, 60]], [[100, 120]]]) == [[0, 60], [100, 120]]
