"""An ObjectStore that counts what passes through it, for tests and benchmarks that bound
what a Job reads and writes (`tests/integration/test_transcoder_live_incremental.py`,
`benchmarks/live.py`)."""

from __future__ import annotations

import os
from collections.abc import Generator

from voicetrack.objectstore import ObjectStore, S3Settings


class CountingStore(ObjectStore):
    """An ObjectStore that counts the bytes it reads and uploads (by key), the bytes it
    composes server-side (by destination key) and its calls that reach S3 (`requests`:
    reads, uploads, composes, stats, lists and deletes, one each)."""

    def __init__(self, settings: S3Settings) -> None:
        super().__init__(settings)
        self.reset()

    def reset(self) -> None:
        """Start counting again."""
        self.read: dict[str, int] = {}
        self.uploaded: dict[str, int] = {}
        self.composed: dict[str, int] = {}
        self.requests = 0

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        self.requests += 1
        data = super().get_bytes(key, limit)
        self.read[key] = self.read.get(key, 0) + len(data)
        return data

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None
                   ) -> Generator[bytes, None, None]:
        self.requests += 1
        for block in super().iter_range(key, offset, etag, part, length):
            self.read[key] = self.read.get(key, 0) + len(block)
            yield block

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream"
                  ) -> str:
        self.requests += 1
        self.uploaded[key] = self.uploaded.get(key, 0) + len(data)
        return super().put_bytes(key, data, content_type)

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream"
                 ) -> str:
        self.requests += 1
        self.uploaded[key] = self.uploaded.get(key, 0) + os.path.getsize(path)
        return super().put_file(key, path, content_type)

    def compose(self, key: str, parts: list[tuple[str, int, int, str | None]],
                content_type: str = "application/octet-stream") -> str:
        self.requests += 1
        self.composed[key] = sum(p[2] for p in parts)
        return super().compose(key, parts, content_type)

    def stat(self, key: str) -> tuple[int, str]:
        self.requests += 1
        return super().stat(key)

    def list_keys(self, prefix: str) -> list[str]:
        self.requests += 1
        return super().list_keys(prefix)

    def delete_keys(self, keys: list[str]) -> int:
        self.requests += 1
        return super().delete_keys(keys)
