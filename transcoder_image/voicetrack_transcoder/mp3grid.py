"""MP3 encoded in pieces on one global frame grid, assembled into one gapless file.

Facts used (ISO/IEC 11172-3; LAME's "Mp3 Info Tag rev 1 specifications",
gabriel.mp3-tech.org/mp3infotag.html; ffmpeg's libmp3lame wrapper and mp3 demuxer):
an MPEG-1 Layer III frame holds 1152 samples per channel; LAME delays its input by
ENCODER_DELAY (576) samples and a decoder adds DECODER_DELAY (529), so decoded frame `g` of
a stream started at input sample 0 covers input samples `[g*1152 - 1105, (g+1)*1152 - 1105)`.
The Info tag's 12-bit delay and padding fields tell a gapless decoder to drop `delay + 529`
samples at the start and `padding - 529` at the end, so a file of `F` frames decodes to
`F*1152 - delay - padding` samples.

Hence an encoder started at input sample `S*1152` produces, after a few warm-up frames,
the frames the single-pass encode would have produced from frame `S` on (same grid). A
piece owning global frames `[F, G)` is encoded from `max(F - WARMUP_FRAMES, 0) * 1152`
to at least `G*1152 - 1105 + MARGIN_SAMPLES` and its warm-up frames and the frames after
`G` are dropped. The bit reservoir is off (`-reservoir 0`): with it, a frame's main data
may begin in the frame before, which in the assembled file comes from another encode.
What remains at a boundary is the MDCT overlap of two encodes of the same signal, i.e.
their quantisation noise (measured in the tests and benchmarks/promote.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from voicetrack.audio import SAMPLE_RATE
from voicetrack.errors import TemporaryFailure
from voicetrack_transcoder.ffmpeg import BITEXACT, FFMPEG, pcm_input

FRAME = 1152
"""Samples per channel in one MPEG-1 Layer III frame."""
ENCODER_DELAY = 576
"""LAME's encoder delay in samples (what libmp3lame reports, lame_get_encoder_delay)."""
DECODER_DELAY = 529
"""The decoder delay every gapless decoder adds to the tag's delay (528 + 1)."""
TOTAL_DELAY = ENCODER_DELAY + DECODER_DELAY
WARMUP_FRAMES = 4
"""Frames encoded before a piece's first owned frame and dropped (encoder state)."""
MARGIN_SAMPLES = 2 * FRAME
"""Input a piece needs after the last sample its owned frames decode to (LAME's
look-ahead and MDCT window)."""

_BITRATES = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
_RATES = [44100, 48000, 32000]


def owned_end(t_samples: int) -> int:
    """The first global frame a piece that knows the output only up to `t_samples` (per
    channel, from output start) cannot finish: frames before it decode to samples that
    end at least MARGIN_SAMPLES before `t_samples`."""
    return max(0, (t_samples + TOTAL_DELAY - MARGIN_SAMPLES) // FRAME)


def total_frames(n_samples: int) -> int:
    """Frames LAME (through ffmpeg) writes for `n_samples` samples per channel: enough to
    hold the delay and the decoder delay past the end, at least one frame of padding."""
    return -(-(n_samples + TOTAL_DELAY) // FRAME) + (
        1 if (n_samples + TOTAL_DELAY) % FRAME == 0 else 0)


def split_frames(data: bytes) -> list[bytes]:
    """The MPEG-1 Layer III frames of a tagless stream, in order. Raises ValueError at a
    byte that does not start a frame (ISO/IEC 11172-3 §2.4.1.3 header: sync 0xFFF, ID 1,
    layer 01, bitrate and sampling-frequency indices, padding bit)."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError(f"truncated frame header at byte {pos}")
        b1, b2 = data[pos + 1], data[pos + 2]
        if data[pos] != 0xFF or (b1 & 0xFE) != 0xFA:
            raise ValueError(f"no MPEG-1 Layer III frame at byte {pos}")
        bitrate = _BITRATES[b2 >> 4] if (b2 >> 4) < 15 else 0
        rate_index = (b2 >> 2) & 3
        if not bitrate or rate_index == 3:
            raise ValueError(f"bad bitrate or sampling rate index at byte {pos}")
        size = 144_000 * bitrate // _RATES[rate_index] + ((b2 >> 1) & 1)
        frames.append(data[pos:pos + size])
        pos += size
    return frames


def encode_frames(pcm: np.ndarray, mp3_bitrate: int, workdir: Path, name: str
                  ) -> list[bytes]:
    """Encode int16 samples (n, channels) at 48 kHz with LAME (CBR `mp3_bitrate` kbit/s,
    bit reservoir off) into its frames, no tag. Raises TemporaryFailure if ffmpeg fails."""
    return encode_many({name: pcm}, mp3_bitrate, workdir)[name]


def encode_many(pcms: dict[str, np.ndarray], mp3_bitrate: int, workdir: Path
                ) -> dict[str, list[bytes]]:
    """`encode_frames` of several tracks (name → int16 (n, channels)) in one ffmpeg run,
    one process start-up for all. Raises TemporaryFailure if ffmpeg fails."""
    if not pcms:
        return {}
    args: list[str] = []
    outs: dict[str, Path] = {}
    for name, pcm in pcms.items():
        src = workdir / f"{name}.pcm"
        src.write_bytes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
        args += [*pcm_input(pcm.shape[1]), "-i", str(src)]
        outs[name] = workdir / f"{name}.mp3"
    for i, out in enumerate(outs.values()):
        args += ["-map", f"{i}:a:0", *encode_args_grid(mp3_bitrate), *BITEXACT, str(out)]
    proc = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-y", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    for name in pcms:
        (workdir / f"{name}.pcm").unlink()
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise TemporaryFailure(f"ffmpeg (mp3 pieces) exited {proc.returncode}: {tail[0]}")
    frames = {}
    for name, out in outs.items():
        frames[name] = split_frames(out.read_bytes())
        out.unlink()
    return frames


def encode_args_grid(mp3_bitrate: int) -> list[str]:
    """libmp3lame options of a piece: CBR, no bit reservoir, raw frames (no ID3, no Xing)."""
    return ["-c:a", "libmp3lame", "-b:a", f"{mp3_bitrate}k", "-reservoir", "0",
            "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"]


def owned(frames: list[bytes], start_frame: int, first: int, end: int | None, name: str
          ) -> list[bytes]:
    """Frames `[first, end)` of the global grid (`end` None: through the stream's end) of
    an encode of the output samples from `start_frame * 1152` on, which must reach
    `end*1152 - 1105 + MARGIN_SAMPLES` (or the output's end when `end` is None).
    Raises ValueError when the encode does not hold the frames asked for."""
    a = first - start_frame
    b = len(frames) if end is None else end - start_frame
    if a < 0 or b > len(frames) or a > b:
        raise ValueError(f"{name}: frames [{first}, {end}) not in an encode of "
                         f"{len(frames)} frames from frame {start_frame}")
    return frames[a:b]


def encode_owned(pcm: np.ndarray, start_frame: int, first: int, end: int | None,
                 mp3_bitrate: int, workdir: Path, name: str) -> list[bytes]:
    """`owned` frames of an encode of `pcm` (samples from `start_frame * 1152` on)."""
    return owned(encode_frames(pcm, mp3_bitrate, workdir, name), start_frame, first, end,
                 name)


def crc16_lame(data: bytes) -> int:
    """CRC-16 as LAME computes the Info tag CRC: polynomial 0x8005, reflected (0xA001),
    initial value 0 (LAME's `CRC_update_lookup`, `crc16_lookup` table)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def tag_file(frames_path: Path, out: Path, n_samples: int) -> None:
    """Mux the concatenated frames at `frames_path` into `out` with an Info (Xing) tag
    (ffmpeg's mp3 muxer: frame count, byte count, seek TOC, music CRC), then set the tag's
    delay (ENCODER_DELAY) and padding so that the file decodes to exactly `n_samples`
    samples per channel, and its CRC. Raises TemporaryFailure if ffmpeg fails and
    ValueError when the tag is not where the LAME spec puts it."""
    proc = subprocess.run(
        [FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-y", "-f", "mp3",
         "-i", str(frames_path), "-c:a", "copy", "-write_xing", "1", *BITEXACT, "-f", "mp3",
         str(out)], capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise TemporaryFailure(f"ffmpeg (mp3 tag) exited {proc.returncode}: {tail[0]}")
    with out.open("r+b") as f:
        head = f.read(64 * 1024)
        at = head.find(b"Info")
        if at < 0:
            raise ValueError(f"{out.name}: no Info tag written")
        # the Info frame is the first frame, right after the ID3v2 tag if there is one
        frame_start = 0
        if head[:3] == b"ID3":  # ID3v2 header: size is 4 syncsafe bytes, footer flag 0x10
            size = sum((head[6 + i] & 0x7F) << (7 * (3 - i)) for i in range(4))
            frame_start = 10 + size + (10 if head[5] & 0x10 else 0)
        if head[frame_start] != 0xFF or not frame_start < at < frame_start + 64:
            raise ValueError(f"{out.name}: the Info tag is not in the first frame")
        flags = int.from_bytes(head[at + 4: at + 8], "big")
        pos = at + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) \
            + 4 * bool(flags & 8)
        count = int.from_bytes(head[at + 8: at + 12], "big") if flags & 1 else 0
        lame = pos  # LAME extension: 9 encoder, 1 revision, 1 lowpass, 8 gain, 1 flags,
        delay_at = lame + 21  # 1 bitrate, then 3 bytes delay/padding
        crc_at = lame + 34
        if not count:
            raise ValueError(f"{out.name}: Info tag without a frame count")
        padding = count * FRAME - ENCODER_DELAY - n_samples
        if not 0 <= padding < 4096:
            raise ValueError(f"{out.name}: {count} frames cannot hold {n_samples} samples "
                             f"(padding {padding})")
        tag = bytearray(head[frame_start: crc_at + 2])
        rel = delay_at - frame_start
        tag[rel: rel + 3] = ((ENCODER_DELAY << 12) | padding).to_bytes(3, "big")
        crc = crc16_lame(bytes(tag[: crc_at - frame_start]))
        tag[crc_at - frame_start:] = crc.to_bytes(2, "big")
        f.seek(frame_start)
        f.write(tag)


def silent_frames(mp3_bitrate: int, channels: set[int], workdir: Path) -> dict[int, bytes]:
    """The frame LAME (no reservoir) writes for digital silence in its steady state, per
    channel count in `channels` (one ffmpeg run): every frame of an all-zero input is
    this one (checked by the tests), so a stretch of digital silence is it repeated."""
    encoded = encode_many({f"silence-{c}": np.zeros((20 * FRAME, c), dtype=np.int16)
                           for c in sorted(channels)}, mp3_bitrate, workdir)
    return {c: encoded[f"silence-{c}"][10] for c in channels}


def silent_frame(mp3_bitrate: int, channels: int, workdir: Path) -> bytes:
    """`silent_frames` of one channel count."""
    return silent_frames(mp3_bitrate, {channels}, workdir)[channels]


assert SAMPLE_RATE == 48_000  # the grid and frame sizes above assume it
