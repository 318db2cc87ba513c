"""Benchmark: chunk status writes per second into `temp_recordings` (PostgreSQL or SQLite).

`--sessions` concurrent recording sessions (default 50) each mirror `--chunks` chunks of
`--speakers` speakers; every chunk track goes queued → in_progress → done through
`RecordingService.upsert_chunk_status` (one transaction per write, as the operator does).
The server is a fresh Debian PostgreSQL 15 (`voicetrack_local.postgres.PostgresServer`)
with its durable defaults (fsync on) unless `--fast`; with `--engine sqlite`, a file in a
temporary directory with the engine's settings (WAL, synchronous=FULL). Prints the setup,
per-write latency percentiles, and last the throughput: `sql_mirror: N writes/s`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicetrack.db.migrate import upgrade_head
from voicetrack.db.schema import TranscodeStatus
from voicetrack.db.service import RecordingService
from voicetrack_local.postgres import PostgresServer

GUILD = "100000000000000001"
CHANNEL = "200000000000000002"


async def run_session(
    svc: RecordingService, session: int, chunks: int, speakers: int, latencies: list[float]
) -> None:
    meeting = f"bench{session:011d}"
    uid = f"uid-{session}"
    await svc.create_meeting(meeting, GUILD, CHANNEL, datetime.now(UTC))
    for index in range(chunks):
        for speaker in range(speakers):
            user = f"3000000000000{speaker:05d}"
            key = f"rec/{GUILD}/{meeting}/chunks/{index:06d}/{user}"
            for status in ("queued", "in_progress", "done"):
                done = status == "done"
                t0 = time.perf_counter()
                row = await svc.upsert_chunk_status(
                    uid, index, user, meeting, GUILD, f"{key}.opus", "ogg-opus", status,
                    job_name=f"s{session}-tx-{index:06d}",
                    mp3_path=f"{key}.mp3" if done else None,
                    sha256=hashlib.sha256(key.encode()).hexdigest() if done else None,
                    duration_ms=10_000 if done else None,
                )
                latencies.append(time.perf_counter() - t0)
                if row.transcode_status is not TranscodeStatus(status):
                    raise RuntimeError(f"{key}: expected {status}, got {row.transcode_status}")


async def bench(url: str, sessions: int, chunks: int, speakers: int) -> tuple[float, list[float]]:
    svc = RecordingService.from_url(url, pool_size=sessions, max_overflow=0)
    latencies: list[float] = []
    try:
        await svc.write_heartbeat("bench", "warm-up")
        t0 = time.perf_counter()
        await asyncio.gather(
            *(run_session(svc, s, chunks, speakers, latencies) for s in range(sessions))
        )
        elapsed = time.perf_counter() - t0
    finally:
        await svc.close()
    return elapsed, latencies


@contextmanager
def database(engine: str, durable: bool) -> Iterator[str]:
    """A fresh, migrated database URL on `engine` (`postgresql` or `sqlite`)."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="vt-bench-") as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            upgrade_head(url)
            yield url
        return
    with PostgresServer(durable=durable) as server:
        url = server.create_database("bench")
        upgrade_head(url)
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--speakers", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="PostgreSQL fsync off (not durable)")
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()

    with database(args.engine, durable=not args.fast) as url:
        elapsed, latencies = asyncio.run(bench(url, args.sessions, args.chunks, args.speakers))
    writes = len(latencies)
    expected = args.sessions * args.chunks * args.speakers * 3
    assert writes == expected, (writes, expected)
    lat_ms = sorted(x * 1000 for x in latencies)
    p = statistics.quantiles(lat_ms, n=100)
    setup = ("sqlite WAL synchronous=FULL" if args.engine == "sqlite"
             else f"postgresql 15, durable={not args.fast}")
    print(f"{setup}, {args.sessions} concurrent sessions, "
          f"{args.chunks} chunks x {args.speakers} speakers each, queued->in_progress->done")
    print(f"writes: {writes} in {elapsed:.2f} s")
    print(f"latency per write: p50 {p[49]:.1f} ms, p95 {p[94]:.1f} ms, p99 {p[98]:.1f} ms")
    print(f"sql_mirror: {writes / elapsed:.0f} writes/s")


if __name__ == "__main__":
    main()
