"""ffmpeg as the encoder: argument builders for each output format, and a streaming sink.

Outputs are written with `-fflags +bitexact -flags:a +bitexact` so the same input gives the
same bytes on every run (no random Ogg serial, no encoder version string): the transcoder's
idempotence rests on it. Raw Ogg Opus is decoded with `-c:a libopus`, which is sample-exact
with pre-skip 0 (ffmpeg 5.1's native `opus` decoder is not bit-identical to libopus).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path
from typing import IO

import numpy as np

from voicetrack.audio import CHANNELS, SAMPLE_RATE
from voicetrack.errors import TemporaryFailure

FFMPEG = "ffmpeg"
FORMATS = ("mp3", "flac", "opus")
"""Output formats: MP3 (libmp3lame, CBR), FLAC, Opus in Ogg (libopus)."""
OPUS_BITRATE_KBPS = 96
"""Bitrate of Opus outputs encoded from PCM, in kbit/s (stereo)."""
CONTENT_TYPES = {"mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/ogg"}
BITEXACT = ["-fflags", "+bitexact", "-flags:a", "+bitexact"]
def pcm_input(channels: int = CHANNELS) -> list[str]:
    """Input options for s16le 48 kHz PCM of `channels` interleaved channels."""
    return ["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(channels)]
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031


def encode_args(fmt: str, mp3_bitrate: int) -> list[str]:
    """Codec and muxer options of one output format (`mp3_bitrate` in kbit/s).

    Raises ValueError for a format outside FORMATS."""
    if fmt == "mp3":
        return ["-c:a", "libmp3lame", "-b:a", f"{mp3_bitrate}k", "-f", "mp3"]
    if fmt == "flac":
        return ["-c:a", "flac", "-f", "flac"]
    if fmt == "opus":
        return ["-c:a", "libopus", "-b:a", f"{OPUS_BITRATE_KBPS}k", "-f", "ogg"]
    raise ValueError(f"unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")


def parse_formats(text: str) -> list[str]:
    """`"mp3,flac"` → `["mp3", "flac"]`, order kept, duplicates dropped.

    Raises ValueError naming an unknown format or an empty list."""
    out: list[str] = []
    for part in text.split(","):
        fmt = part.strip().lower()
        if not fmt:
            continue
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (expected {', '.join(FORMATS)})")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ValueError("no output format given")
    return out


def run(args: list[str], what: str) -> None:
    """Run `ffmpeg -v error -nostdin -y <args>`; a non-zero exit raises TemporaryFailure
    with the last line ffmpeg printed (ffmpeg failing on validated input is not the input's
    fault, so the Job retries)."""
    proc = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-y", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise TemporaryFailure(f"ffmpeg ({what}) exited {proc.returncode}: {tail[0]}")


class DecodeCheck:
    """Measures the samples per channel at 48 kHz that files decode to, by decoding them
    (one ffmpeg run for all) to s16le stereo files and measuring their bytes: the true
    length, not the container's estimate.

    ffmpeg's start-up (about 170 ms for Debian's build, most of a 10 s chunk's work) is
    overlapped with the encoding: the process starts at construction, before the files
    exist, with each input a concat list read from a pipe; `feed()` writes the lists once
    the files are complete, and ffmpeg then opens them as ordinary seekable files (so MP3
    encoder delay and padding are trimmed exactly as for any file). `counts()` waits and
    returns one count per path; raises TemporaryFailure if ffmpeg fails.
    """

    def __init__(self, paths: list[Path], workdir: Path) -> None:
        self.paths = paths
        self.outs = [workdir / f"decoded-{i}.pcm" for i in range(len(paths))]
        self.proc: subprocess.Popen[bytes] | None = None
        self._writers: list[int] = []
        if not paths:
            return
        readers: list[int] = []
        for _ in paths:
            r, w = os.pipe()
            readers.append(r)
            self._writers.append(w)
        args: list[str] = []
        for r in readers:
            args += ["-protocol_whitelist", "file,pipe", "-f", "concat", "-safe", "0",
                     "-i", f"pipe:{r}"]
        for i, out in enumerate(self.outs):
            args += ["-map", f"{i}:a:0", "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS),
                     "-c:a", "pcm_s16le", "-f", "s16le", str(out)]
        try:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-y", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=readers)
        finally:
            for r in readers:
                os.close(r)

    def feed(self) -> None:
        """Tell ffmpeg the files are complete (after writing them; idempotent)."""
        writers, self._writers = self._writers, []
        if not writers:
            return
        for path, w in zip(self.paths, writers, strict=True):
            try:
                os.write(w, f"ffconcat version 1.0\nfile 'file:{path}'\n".encode())
            except BrokenPipeError:
                pass  # ffmpeg already failed; counts() reports it
            finally:
                os.close(w)

    def counts(self) -> list[int]:
        if self.proc is None:
            return []
        self.feed()
        _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise TemporaryFailure(
                f"ffmpeg (decode check) exited {self.proc.returncode}: {tail[0]}")
        counts = []
        for out in self.outs:
            counts.append(out.stat().st_size // (2 * CHANNELS))
            out.unlink()
        return counts

    def kill(self) -> None:
        for w in self._writers:
            os.close(w)
        self._writers = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class EncoderSink:
    """One ffmpeg process encoding s16le 48 kHz PCM of `channels` (1 or 2) channels from
    its stdin into `path`, with as many channels.

    `write()` takes int16 arrays of shape (n, channels); the pipe buffer is raised to 1 MiB so
    several encoders run in parallel while one thread feeds them. `close()` waits for
    ffmpeg and raises TemporaryFailure with its last error line if it failed. `samples`
    counts samples per channel written.
    """

    def __init__(self, path: Path, fmt: str, mp3_bitrate: int, channels: int = CHANNELS
                 ) -> None:
        self.path = path
        self.fmt = fmt
        self.channels = channels
        self.samples = 0
        self._err = path.with_suffix(path.suffix + ".log").open("w+b")
        self.proc = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-y", *pcm_input(channels),
             "-i", "pipe:0",
             *encode_args(fmt, mp3_bitrate), *BITEXACT, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        assert self.proc.stdin is not None
        self._stdin: IO[bytes] = self.proc.stdin
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)

    def write(self, block: np.ndarray) -> None:
        """Append samples (int16, shape (n, channels)). Raises TemporaryFailure if ffmpeg
        died, ValueError for a block of another channel count."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"{self.path.name}: block of shape {block.shape} for "
                             f"{self.channels} channel(s)")
        try:
            self._stdin.write(np.ascontiguousarray(block, dtype="<i2").data)
        except BrokenPipeError:
            self.close()
            raise TemporaryFailure(f"ffmpeg encoding {self.path.name} stopped early") from None
        self.samples += block.shape[0]

    def close(self) -> None:
        """Finish the file: close stdin and wait. Idempotent."""
        if not self._stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
        code = self.proc.wait()
        if self._err.closed:
            return
        self._err.seek(0)
        message = self._err.read().decode(errors="replace").strip().splitlines()
        self._err.close()
        if code != 0:
            tail = message[-1] if message else "(no output)"
            raise TemporaryFailure(f"ffmpeg encoding {self.path.name} exited {code}: {tail}")

    def kill(self) -> None:
        """Stop ffmpeg at once (on an error elsewhere)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait()
        with contextlib.suppress(Exception):
            self._stdin.close()
        self._err.close()
