"""`voicetrack recordings zip|download` leave no partial file behind, however they end, on
a real promotion in SeaweedFS, real ffmpeg and the database on PostgreSQL and SQLite:

- `RecordingsReader.bundle`: a cancellation that arrives just as the zip is finished (the
  writer's thread has returned, the build is cancelled while awaiting it) and a failure
  of the final rename both delete the hidden `.part` zip, and `out` is left as it was
  (before, the whole `.part` stayed next to `out` for ever);
- `download` (`ObjectStore.get_file`) whose writes fail in the middle of a file leaves
  none of the S3 client's temp files (before, `.<name>.part.<etag>.part.minio` stayed).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_recordings_cli import (  # noqa: F401 (the fixtures)
    BIN,
    DONE,
    World,
    promoted,
    world,
)
from voicetrack.db.service import RecordingService
from voicetrack.objectstore import sha256_file
from voicetrack.recordings import service
from voicetrack.recordings.service import RecordingsReader

pytestmark = pytest.mark.integration


async def _with_reader(world: World, fn: Any) -> Any:  # noqa: F811 (not the fixture)
    db = RecordingService.from_url(world.db_url)
    try:
        return await fn(RecordingsReader(db, world.store))
    finally:
        await db.close()


def test_a_cancel_as_the_zip_is_finished_leaves_no_part(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    out = tmp_path / "zips" / "bundle.zip"
    out.parent.mkdir()
    out.write_bytes(b"an older zip")  # what a cancelled build must leave as it was
    real = service._write_zip
    whole: list[bool] = []

    async def go(reader: RecordingsReader) -> None:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def cancel() -> None:
            task.cancel()
            cancelled.set()

        def writer(*args: Any) -> list[str]:
            members = real(*args)  # the zip is whole at its part file now
            whole.append(Path(args[0]).is_file())
            loop.call_soon_threadsafe(cancel)  # the build is cancelled while awaiting us
            assert cancelled.wait(10), "the cancellation was never delivered"
            return members

        monkeypatch.setattr(service, "_write_zip", writer)
        task = asyncio.ensure_future(reader.bundle(DONE, out))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(_with_reader(world, go))
    assert whole == [True]
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == ["bundle.zip"], f"a cancelled bundle left {left} (no part, no scratch dir)"
    assert out.read_bytes() == b"an older zip"


def test_a_failed_rename_leaves_no_part_and_out_as_it_was(world: World,  # noqa: F811
                                                          tmp_path: Path) -> None:
    out = tmp_path / "zips" / "bundle.zip"
    out.mkdir(parents=True)  # a directory where the zip goes: the final rename fails
    (out / "keep.txt").write_text("mine")
    with pytest.raises(IsADirectoryError):
        asyncio.run(_with_reader(world, lambda reader: reader.bundle(DONE, out)))
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == ["bundle.zip"], f"a failed bundle left {left}"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_two_zips_of_one_meeting_into_one_file_both_finish_whole(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two `zip` runs with the same OUT (two terminals, or a retry while the first still
    runs): each builds through its own part file, so both finish and OUT is a whole zip.
    Before, both wrote `.bundle.zip.part`; the first rename took it and the second run
    failed (FileNotFoundError), or renamed a file the other was still writing."""
    out = tmp_path / "zips" / "bundle.zip"
    out.parent.mkdir()
    real = service._write_zip
    both_written = threading.Barrier(2, timeout=60)
    parts: list[str] = []

    def writer(*args: Any) -> list[str]:
        members = real(*args)
        parts.append(str(args[0]))
        both_written.wait()  # neither renames before the other's zip is whole
        return members

    monkeypatch.setattr(service, "_write_zip", writer)

    async def go(reader: RecordingsReader) -> list[Any]:
        return list(await asyncio.gather(reader.bundle(DONE, out), reader.bundle(DONE, out)))

    bundles = asyncio.run(_with_reader(world, go))
    assert len(set(parts)) == 2, parts
    assert [b.path for b in bundles] == [out, out]
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == sorted(bundles[0].members), z.namelist()
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle.zip"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain create makes it


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A child's set-up: files it writes stop growing at `limit` bytes (RLIMIT_FSIZE; the
    write fails with EFBIG, as one on a full disk fails with ENOSPC)."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death, past the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_a_download_the_disk_fails_leaves_no_partial_file(world: World,  # noqa: F811
                                                          tmp_path: Path) -> None:
    sizes = sorted(t.bytes or 0 for t in world.manifest.tracks)
    limit = sizes[-1] // 2  # the biggest track cannot be written whole
    assert limit > 40 * 1024, sizes  # the CLI's own small files (SQLite's 32 KiB shm) fit
    dest = tmp_path / "dest"
    proc = subprocess.run([str(BIN / "voicetrack"), "recordings", "download", DONE,
                           str(dest)], env=world.env(), capture_output=True, text=True,
                          timeout=300, check=False, preexec_fn=_file_size_limit(limit))
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]  # one line, as any error
    left = sorted(p.name for p in dest.iterdir())
    partial = [n for n in left if n.startswith(".") or "part" in n]
    assert not partial, f"a failed download left {partial} in DEST"
    kept = {Path(t.key).name: t.sha256 for t in world.manifest.tracks}
    for name in left:  # what was saved whole is verified
        assert sha256_file(dest / name) == kept[name], name
