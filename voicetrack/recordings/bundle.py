"""The Audacity bundle's parts: the `.lof` list and the equal-length FLAC render (ffmpeg).

Audacity opens a `.lof` ("list of files") as one project with one track per line
(Audacity manual, "Importing Audio: LOF files"): `file "<path>" offset <seconds>`, paths
relative to the `.lof` itself. Every track of a Voicetrack bundle starts at t = 0 and has
the same length, so the speakers line up sample for sample.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from voicetrack.audio import SAMPLE_RATE
from voicetrack.errors import InvalidInputError

FFMPEG_TIMEOUT_S = 600
"""The longest one FLAC render may take (s); hours of audio take well under a minute."""


@dataclass(frozen=True)
class LofEntry:
    """One line of a `.lof`: a file name relative to the list, and where the track starts
    (seconds from the project's start, >= 0)."""

    name: str
    offset_s: float = 0.0


def lof_text(entries: Sequence[LofEntry]) -> str:
    """The `.lof` for `entries`, one `file "<name>" offset <s>` line each, in order, ending
    with a newline. Raises InvalidInputError (naming `entries[i]`) for no entries, a name
    that is empty, absolute, climbs out (`..`) or holds a quote or a line break (the format
    has no escapes), or an offset that is negative or not finite."""
    if not entries:
        raise InvalidInputError("entries: a .lof needs at least one file")
    lines = []
    for i, entry in enumerate(entries):
        name = entry.name
        path = PurePosixPath(name)
        if (not name.strip() or path.is_absolute() or ".." in path.parts
                or any(c in name for c in '"\r\n\\')):
            raise InvalidInputError(
                f"entries[{i}].name: {name!r} is not a relative file name a .lof can hold "
                "(no quotes, backslashes, line breaks, leading / or ..)")
        if not math.isfinite(entry.offset_s) or entry.offset_s < 0:
            raise InvalidInputError(
                f"entries[{i}].offset_s: {entry.offset_s!r} is not a time >= 0 s")
        offset = f"{entry.offset_s:.6f}".rstrip("0").rstrip(".")
        lines.append(f'file "{name}" offset {offset}')
    return "\n".join(lines) + "\n"


def ffmpeg_path(name: str = "ffmpeg") -> str:
    """The ffmpeg executable. Raises InvalidInputError when it is not installed."""
    found = shutil.which(name)
    if found is None:
        raise InvalidInputError(f"{name} not found on PATH: install ffmpeg to build a bundle")
    return found


def render_flac(src: Path, dst: Path, samples: int, ffmpeg: str | None = None) -> None:
    """Decode `src` (any format ffmpeg reads: the final MP3, FLAC or Ogg Opus) and write
    `dst` as 48 kHz FLAC of exactly `samples` samples per channel (padded with silence or
    cut at the end), the channel count kept. Raises InvalidInputError naming `src` when
    `samples` < 1, ffmpeg fails (with its last error line) or runs past
    `FFMPEG_TIMEOUT_S`."""
    if samples < 1:
        raise InvalidInputError(f"samples: {samples} for {src.name}; a track needs >= 1")
    cmd = [ffmpeg or ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-i", str(src), "-vn", "-map", "0:a:0",
           "-af", f"aresample={SAMPLE_RATE},apad=whole_len={samples},atrim=end_sample={samples}",
           "-ar", str(SAMPLE_RATE), "-c:a", "flac", "-f", "flac", str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as err:
        raise InvalidInputError(
            f"{src.name}: ffmpeg took over {FFMPEG_TIMEOUT_S} s to render FLAC") from err
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = " ".join(lines[-2:]) if lines else f"exit code {proc.returncode}"
        raise InvalidInputError(f"{src.name}: ffmpeg could not render FLAC: {why}")
