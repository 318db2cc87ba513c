"""A final track sent to S3 while assembly writes it (`assembly.py`).

Assembly writes each track front to back into a local file, its head (ID3v2 and the LAME
Info frame) reserved and filled in last, from the frame count and the music CRC. Sending
the file only once it is complete made the upload (~345 MB for 1 h x 5 speakers at
128 kbit/s, bound by SeaweedFS's CPU) a stage of its own after every other. `GrowingUpload`
sends it as an S3 multipart upload while it grows instead: part 2 on as soon as its bytes
are written, part 1 (which holds the head) once the head is filled in (S3 orders parts by
number, not by arrival), and the object is completed only when asked, so that a failure
anywhere leaves nothing at the key (`abort`). The object's bytes are the file's, part by
part; a file too short for two parts is sent whole with one PUT at `commit`.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Executor, Future, wait
from pathlib import Path

from voicetrack.errors import VoicetrackError
from voicetrack.objectstore import MIN_PART_BYTES, ObjectStore

PART_BYTES = 8 * 1024 * 1024
"""Bytes per part (the last excepted): ~8.7 min of a 128 kbit/s track, 8 parts for 1 h."""


class GrowingUpload:
    """The upload of local file `path` to `key` while the file is written front to back.

    `grew(size)` whenever the file's first `size` bytes are written and flushed (parts
    2, 3, … of `part_bytes` (default `PART_BYTES`) each are sent on `pool` as they fill;
    part 1, bytes `[0, part_bytes)`, may still change), `finish(size)` once the file is
    complete (the last part and part 1 are sent; waits for every part; raises the first
    part's error), then `commit()` (the object appears at `key`) or, on any failure,
    `abort()`. Parts are read back from the file when sent, so at most one part per
    running upload is in memory.
    Raises ValueError for `part_bytes` under S3's 5 MiB part minimum; the S3 calls raise
    TemporaryFailure / InvalidInputError (`ObjectStore`)."""

    def __init__(self, store: ObjectStore, key: str, path: Path, content_type: str,
                 pool: Executor, part_bytes: int | None = None) -> None:
        part_bytes = part_bytes or PART_BYTES
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes {part_bytes} < S3's minimum {MIN_PART_BYTES}")
        self.store, self.key, self.path = store, key, path
        self.content_type, self.pool, self.part_bytes = content_type, pool, part_bytes
        self.upload_id: str | None = None
        self.sent = part_bytes  # bytes before this are sent (or are part 1's)
        self.parts: list[Future[str]] = []  # parts 1.. by number (part 1 comes last)
        self.etags: list[str] | None = None
        self.committed = False

    def _send(self, number: int, start: int, end: int) -> str:
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise OSError(f"{self.path}: {len(data)} bytes at {start}, {end - start} expected")
        assert self.upload_id is not None
        return self.store.put_part(self.key, self.upload_id, number, data)

    def _submit(self, number: int, start: int, end: int) -> None:
        if self.upload_id is None:
            self.upload_id = self.store.start_multipart(self.key, self.content_type)
        while len(self.parts) < number:
            self.parts.append(Future())  # a slot; replaced below
        self.parts[number - 1] = self.pool.submit(self._send, number, start, end)

    def grew(self, size: int) -> None:
        """The file's first `size` bytes are written and flushed: send the whole parts
        after part 1 among them (a part sent is never the one that may still grow; if
        the file ends right after it, it is the last part, which S3 lets be any size)."""
        while size - self.sent >= self.part_bytes:
            self._submit(self.sent // self.part_bytes + 1, self.sent,
                         self.sent + self.part_bytes)
            self.sent += self.part_bytes

    def finish(self, size: int) -> None:
        """The file is complete at `size` bytes (its head filled in): send what is left
        (the last parts, then part 1) and wait for every part. Nothing is at `key` yet.
        Raises the first failed part's error."""
        if self.upload_id is None and size <= 2 * self.part_bytes:
            self.etags = []  # one PUT at commit
            return
        while size - self.sent > 0:
            end = min(self.sent + self.part_bytes, size)
            if size - end < MIN_PART_BYTES:  # no short part before the last
                end = size
            self._submit(self.sent // self.part_bytes + 1, self.sent, end)
            self.sent = end
        self._submit(1, 0, self.part_bytes)
        self.etags = [part.result() for part in self.parts]

    def commit(self) -> None:
        """Make the object appear at `key` (CompleteMultipartUpload, or one PUT of a short
        file). Only after `finish`."""
        if self.etags is None:
            raise RuntimeError(f"{self.key}: commit before finish")
        if self.upload_id is None:
            self.store.put_file(self.key, str(self.path), self.content_type)
        else:
            self.store.complete_multipart(self.key, self.upload_id, self.etags)
        self.committed = True

    def abort(self) -> None:
        """Drop the parts sent so far (after waiting for those in flight); nothing appears at
        `key`. Nothing is done once committed. Best effort, for failure paths: S3 errors
        are swallowed (an incomplete upload left behind holds no object; a bucket
        lifecycle rule may expire it)."""
        if self.committed:
            return
        for part in self.parts:
            part.cancel()
        wait([p for p in self.parts if p.running()])
        if self.upload_id is not None:
            with contextlib.suppress(VoicetrackError):
                self.store.abort_multipart(self.key, self.upload_id)
