"""Synthetic speakers whose audio is known sample by sample, and the raw chunks a recorder
would upload for them.

A speaker is a voice-like tone (fundamental plus two harmonics, slow vibrato) in given
speaking intervals, plus short click markers at known session times (in silence, so they
can be found again). `encode_session` turns it into 20 ms Opus packets with discord.py's
libopus encoder, as a Discord client would send them, and replaces every slot in which the
speaker is silent by the Opus silence frame `F8 FF FE`, as the recorder does for slots
without a packet. `upload_chunks` cuts the packets into chunk windows and writes raw Ogg
Opus (or PCM) tracks and their `ChunkSpec`s.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import discord.opus
import numpy as np

from voicetrack.audio import (
    CHANNELS,
    FRAME_MS,
    FRAME_SAMPLES,
    OPUS_SILENCE_FRAME,
    RAW_FORMAT_OGG_OPUS,
    SAMPLE_RATE,
    ms_to_samples,
    opus_channels,
)
from voicetrack.chunkspec import ChunkSpec, ChunkTrack, Gap
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore
from voicetrack.oggopus import encode_ogg_opus
from voicetrack_recorder.opusenc import code_as_mono

RawFormat = Literal["ogg-opus", "pcm-s16le"]

CLICK_MS = 2
"""Length of a click marker in ms."""
CLICK_LEVEL = 0.6
"""Peak level of a click marker (of full scale)."""


@dataclass
class Speaker:
    """A synthetic speaker: `user_id`, tone pitch `f0` (Hz), level (of full scale),
    speaking intervals `[(start_ms, end_ms)]` and click marker times (ms), session time."""

    user_id: str
    f0: float
    level: float = 0.25
    talks: list[tuple[int, int]] = field(default_factory=list)
    markers: list[int] = field(default_factory=list)
    mono_coded: bool = False
    """Code packets as mono, as a Discord client codes its microphone."""

    def pcm(self, session_ms: int) -> np.ndarray:
        """The speaker's audio over `[0, session_ms)`: int16, shape (session_ms * 48, 2)."""
        n = ms_to_samples(session_ms)
        t = np.arange(n) / SAMPLE_RATE
        out = np.zeros(n)
        phase = 2 * np.pi * self.f0 * t + 0.8 * np.sin(2 * np.pi * 3.0 * t)
        voice = self.level * (0.6 * np.sin(phase) + 0.3 * np.sin(2 * phase)
                              + 0.1 * np.sin(3 * phase))
        fade = ms_to_samples(10)
        for start, end in self.talks:
            a, b = ms_to_samples(start), ms_to_samples(end)
            env = np.ones(b - a)
            ramp = np.linspace(0.0, 1.0, fade)
            env[:fade] = ramp
            env[-fade:] = ramp[::-1]
            out[a:b] = voice[a:b] * env
        click_len = ms_to_samples(CLICK_MS)
        click = CLICK_LEVEL * np.sin(np.linspace(0, 3 * np.pi, click_len))
        for at in self.markers:
            a = ms_to_samples(at)
            out[a:a + click_len] += click
        mono = np.round(out * 32767).astype(np.int16)
        return np.stack([mono, mono], axis=1)


def encode_session(pcm: np.ndarray, mono: bool = False) -> list[bytes]:
    """20 ms Opus packets of `pcm` (int16 stereo, a whole number of frames) from one
    libopus encoder (discord.py's bindings); silent slots become `F8 FF FE`. A slot counts
    as silent when it and the slot before are all zero (the encoder's look-ahead carries
    the end of a sound into the next packet). `mono`: every packet mono-coded (TOC s bit
    clear), as a Discord client sends its microphone."""
    enc = discord.opus.Encoder()
    if mono:
        code_as_mono(enc)
    frames = pcm.shape[0] // FRAME_SAMPLES
    packets = []
    prev_silent = True
    for i in range(frames):
        frame = pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]
        silent = not frame.any()
        packet = enc.encode(np.ascontiguousarray(frame).tobytes(), FRAME_SAMPLES)
        packets.append(OPUS_SILENCE_FRAME if silent and prev_silent else packet)
        prev_silent = silent
    return packets


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Session:
    """A synthetic recorded session: where its objects go and what it holds."""

    layout: MeetingLayout
    session_ms: int
    chunks: list[ChunkSpec]
    gaps: list[Gap]
    sources: dict[str, np.ndarray]
    packets: dict[str, list[bytes]]
    """Ogg Opus sessions: every speaker's packets over the whole session, one per slot."""


def upload_chunks(store: ObjectStore, layout: MeetingLayout, speakers: list[Speaker],
                  windows: list[tuple[int, int]], session_ms: int, gaps: list[Gap],
                  raw_format: RawFormat = "ogg-opus", phases: dict[str, int] | None = None
                  ) -> Session:
    """Write each speaker's raw track for every chunk window in which the speaker makes a
    sound, and return the chunk specs (index = position in `windows`); `phases`: user →
    `phaseSamples` of all their tracks (0 when absent)."""
    sources = {s.user_id: s.pcm(session_ms) for s in speakers}
    packets = {}
    if raw_format == RAW_FORMAT_OGG_OPUS:
        whole = session_ms // FRAME_MS * FRAME_SAMPLES
        packets = {s.user_id: encode_session(sources[s.user_id][:whole], s.mono_coded)
                   for s in speakers}
    mono = {s.user_id: s.mono_coded for s in speakers}
    chunks = []
    for index, (start, end) in enumerate(windows):
        tracks = []
        for user, pcm in sources.items():
            window = pcm[ms_to_samples(start):ms_to_samples(end)]
            if not window.any():
                continue
            channels: Literal[1, 2] = 1 if mono[user] else 2
            if raw_format == RAW_FORMAT_OGG_OPUS:
                window_packets = packets[user][start // FRAME_MS:end // FRAME_MS]
                data = encode_ogg_opus(window_packets, serial=index + 1)
                channels = opus_channels(window_packets)
            else:
                data = np.ascontiguousarray(window, dtype="<i2").tobytes()
            key = layout.raw_key(index, user, raw_format)
            store.put_bytes(key, data)
            nonsilent = [i for i in range(start // FRAME_MS, end // FRAME_MS)
                         if pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].any()]
            tracks.append(ChunkTrack(
                user_id=user, key=key, frames=len(nonsilent),
                first_ms=nonsilent[0] * FRAME_MS, last_ms=nonsilent[-1] * FRAME_MS,
                bytes=len(data), sha256=sha256(data), channels=channels,
                phase_samples=(phases or {}).get(user, 0)))
        chunks.append(ChunkSpec(
            session_name="synthetic", meeting_id=layout.meeting_id, guild_id=layout.guild_id,
            index=index, start_ms=start, end_ms=end, raw_format=raw_format, tracks=tracks))
    for gap in gaps:
        for chunk in chunks:
            if chunk.start_ms == gap.end_ms:
                chunk.gap = gap
    return Session(layout, session_ms, chunks, gaps, sources, packets)


def output_time(pcm: np.ndarray, gaps: list[Gap]) -> np.ndarray:
    """`pcm` in session time with the paused gaps cut out: what a final track must hold."""
    keep = np.ones(pcm.shape[0], dtype=bool)
    for gap in gaps:
        if gap.cause == "paused":
            keep[ms_to_samples(gap.start_ms):ms_to_samples(gap.end_ms)] = False
    return pcm[keep]


def session_to_output_ms(at_ms: int, gaps: list[Gap]) -> int:
    """Where session time `at_ms` lands in the output (paused time before it removed)."""
    cut = sum(min(g.end_ms, at_ms) - g.start_ms for g in gaps
              if g.cause == "paused" and g.start_ms < at_ms)
    return at_ms - cut


def file_channels(data: bytes) -> int:
    """Channels of an audio file's first audio stream (ffprobe)."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
             "stream=channels", "-of", "csv=p=0", f.name],
            capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def decode_file(data: bytes) -> np.ndarray:
    """Decode an audio file's bytes with ffmpeg (libopus for Opus) into int16 (n, 2); a
    mono file's channel is copied into both columns as is (ffmpeg's own up-mix would
    scale it by 1/sqrt 2)."""
    pre = ["-c:a", "libopus"] if b"OpusHead" in data[:64] else []
    channels = file_channels(data)
    with tempfile.NamedTemporaryFile() as f:  # a file, not a pipe: MP3 gapless trimming
        f.write(data)
        f.flush()
        proc = subprocess.run(
            ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", *pre, "-i", f.name,
             "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(min(channels, CHANNELS)),
             "pipe:1"],
            capture_output=True, check=True)
    pcm = np.frombuffer(proc.stdout, dtype="<i2")
    if channels == 1:
        return np.repeat(pcm[:, None], CHANNELS, axis=1)
    return pcm.reshape(-1, CHANNELS)


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Normalised cross-correlation of the mono sums of `a` and `b` (int16 (n, 2)) at the
    lag in [-max_lag, max_lag] samples that maximises it: (correlation, lag), lag > 0
    meaning `b` is late."""
    x = a.astype(np.float64).sum(axis=1)
    y = b.astype(np.float64).sum(axis=1)
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    size = 1 << int(np.ceil(np.log2(n + max_lag + 1)))  # no wrap-around within ±max_lag
    spec = np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size))
    corr = np.fft.irfft(spec, size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = corr[lags % size]
    best = int(np.argmax(values))
    norm = float(np.sqrt(np.dot(x, x) * np.dot(y, y))) or 1.0
    return float(values[best] / norm), int(lags[best])


def find_click(track: np.ndarray, around_ms: int, search_ms: int = 150) -> int:
    """Session-free position (ms in `track`) of the strongest click near `around_ms`: the
    largest absolute first difference within ±`search_ms`."""
    a = max(ms_to_samples(around_ms - search_ms), 0)
    b = min(ms_to_samples(around_ms + search_ms), track.shape[0])
    mono = track[a:b].astype(np.int64).sum(axis=1)
    steps = np.abs(np.diff(mono))
    return (a + int(np.argmax(steps))) // (SAMPLE_RATE // 1000)


def promote_plan(store: ObjectStore, layout: MeetingLayout, plan: PromotionPlan,
                 timeout_s: float = 300) -> FinalManifest:
    """Store `plan` as the meeting's `promotion.json` and run the real promotion
    (`voicetrack-transcoder promote`, beside this interpreter) against `store`; its final
    manifest. Fails the test (AssertionError with ffmpeg's and the transcoder's stderr) on
    a non-zero exit."""
    store.put_json(layout.promotion_plan_key, plan.to_api())
    exe = Path(sys.executable).with_name("voicetrack-transcoder")
    proc = subprocess.run([str(exe), "promote", "--plan-key", layout.promotion_plan_key],
                          env={**os.environ, **store.settings.env()}, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, proc.stderr
    return FinalManifest.model_validate(store.get_json(layout.final_manifest_key))
