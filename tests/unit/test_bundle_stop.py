"""A bundle build's steps stop when it is cancelled, with real ffmpeg and real threads: a
render's ffmpeg is ended (SIGTERM) and reaped before the cancellation is raised; a step
in a thread is told to stop and awaited to its return; a failing ffmpeg still says why."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from voicetrack.audio import SAMPLE_RATE
from voicetrack.errors import InvalidInputError
from voicetrack.recordings.bundle import BuildStopped, ffmpeg_path, in_thread, render_flac

pytestmark = pytest.mark.unit

LONG_SAMPLES = 4 * 3600 * SAMPLE_RATE
"""4 h of output: a render of it takes seconds (padded silence)."""


def my_ffmpegs() -> list[int]:
    """Running (not zombie) ffmpeg processes whose parent is this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            tail = stat[stat.rindex(")") + 2:].split()
            if (stat[stat.index("(") + 1:stat.rindex(")")] == "ffmpeg" and tail[0] != "Z"
                    and int(tail[1]) == os.getpid()):
                found.append(int(entry.name))
    return found


@pytest.fixture
def one_second(tmp_path: Path) -> Path:
    """A 1 s silent 48 kHz stereo FLAC."""
    src = tmp_path / "src.flac"
    subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"anullsrc=r={SAMPLE_RATE}:cl=stereo", "-t", "1", str(src)], check=True)
    return src


def test_a_cancelled_render_ends_its_ffmpeg(one_second: Path, tmp_path: Path) -> None:
    async def go() -> tuple[list[int], float]:
        task = asyncio.ensure_future(render_flac(one_second, tmp_path / "out.flac",
                                                 LONG_SAMPLES))
        deadline = time.monotonic() + 10
        while not (running := my_ffmpegs()):
            assert time.monotonic() < deadline and not task.done(), "ffmpeg never ran"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        t = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not my_ffmpegs(), "ffmpeg outlived its cancelled render"
        return running, time.monotonic() - t

    running, took = asyncio.run(go())
    assert len(running) == 1 and took < 1.5, (running, took)


def test_a_failing_ffmpeg_says_why(tmp_path: Path) -> None:
    src = tmp_path / "not-audio.flac"
    src.write_bytes(b"not audio at all" * 64)
    with pytest.raises(InvalidInputError, match=r"not-audio\.flac: ffmpeg could not render"):
        asyncio.run(render_flac(src, tmp_path / "out.flac", SAMPLE_RATE))
    assert not my_ffmpegs()


def test_a_cancelled_thread_step_is_stopped_and_awaited() -> None:
    stop = threading.Event()
    returned = threading.Event()

    def step() -> None:
        try:
            for _ in range(500):  # 10 s unless told to stop
                if stop.is_set():
                    raise BuildStopped("told to stop")
                time.sleep(0.02)
        finally:
            time.sleep(0.2)  # a step's last write still going on
            returned.set()

    async def go() -> None:
        task = asyncio.ensure_future(in_thread(stop, step))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert returned.is_set(), "the cancellation was raised while the thread still ran"

    t = time.monotonic()
    asyncio.run(go())
    assert stop.is_set() and time.monotonic() - t < 2
