"""The Audacity bundle's parts: the `.lof` list and the equal-length FLAC render (ffmpeg).

Audacity opens a `.lof` ("list of files") as one project with one track per line
(Audacity manual, "Importing Audio: LOF files"): `file "<path>" offset <seconds>`, paths
relative to the `.lof` itself. Every track of a Voicetrack bundle starts at t = 0 and has
the same length, so the speakers line up sample for sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from voicetrack.audio import SAMPLE_RATE
from voicetrack.errors import InvalidInputError

FFMPEG_TIMEOUT_S = 600
"""The longest one FLAC render may take (s); hours of audio take well under a minute."""
FFMPEG_STOP_GRACE_S = 2.0
"""How long (s) a render's ffmpeg, stopped early, gets to exit after SIGTERM before it is
sent SIGKILL."""
T = TypeVar("T")


class BuildStopped(Exception):
    """A step of a bundle's build saw its stop flag set and gave up (the build was
    cancelled)."""


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


async def render_flac(src: Path, dst: Path, samples: int, ffmpeg: str | None = None) -> None:
    """Decode `src` (any format ffmpeg reads: the final MP3, FLAC or Ogg Opus) and write
    `dst` as 48 kHz FLAC of exactly `samples` samples per channel (padded with silence or
    cut at the end), the channel count kept. Raises InvalidInputError naming `src` when
    `samples` < 1, ffmpeg fails (with its last error line) or runs past
    `FFMPEG_TIMEOUT_S`. Cancelled (or timed out), it stops ffmpeg (`stop_process`) before
    it returns, so no ffmpeg outlives the render."""
    if samples < 1:
        raise InvalidInputError(f"samples: {samples} for {src.name}; a track needs >= 1")
    cmd = [ffmpeg or ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-i", str(src), "-vn", "-map", "0:a:0",
           "-af", f"aresample={SAMPLE_RATE},apad=whole_len={samples},atrim=end_sample={samples}",
           "-ar", str(SAMPLE_RATE), "-c:a", "flac", "-f", "flac", str(dst)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(FFMPEG_TIMEOUT_S):
            _, stderr = await proc.communicate()
    except TimeoutError as err:
        await stop_process(proc)
        raise InvalidInputError(
            f"{src.name}: ffmpeg took over {FFMPEG_TIMEOUT_S} s to render FLAC") from err
    except BaseException:
        await stop_process(proc)
        raise
    if proc.returncode != 0:
        lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines()
                 if ln.strip()]
        why = " ".join(lines[-2:]) if lines else f"exit code {proc.returncode}"
        raise InvalidInputError(f"{src.name}: ffmpeg could not render FLAC: {why}")


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM `proc`, SIGKILL it when it has not exited `FFMPEG_STOP_GRACE_S` later, and
    reap it; returns once it is gone, even when cancelled meanwhile (the cancellation is
    raised then)."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    waiting = asyncio.ensure_future(proc.wait())
    grace: float | None = FFMPEG_STOP_GRACE_S
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.wait({waiting}, timeout=grace)
        except asyncio.CancelledError:
            cancelled = True
            continue
        if not waiting.done() and grace is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            grace = None
    if cancelled:
        raise asyncio.CancelledError()


async def in_thread(stop: threading.Event, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a worker thread, its result or error. Cancelled while it runs, it
    sets `stop` (for `fn` to check between its steps and raise BuildStopped) and waits for
    the thread to return before the cancellation is raised: the step never outlives the
    build (a thread cannot be killed; `asyncio.to_thread` alone would leave it running)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        while not work.done():
            try:
                await asyncio.wait({work})
            except asyncio.CancelledError:
                continue
        if not work.cancelled():
            work.exception()  # retrieved: the build is cancelled, its step's end is moot
        raise
