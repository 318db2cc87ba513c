"""Benchmark: what a live-assembly Job ("audio so far") costs as a session grows, the
incremental Job (`liveextend.py`, from `live/state.json`) against the full assembly from
chunk 0 that every Job did before (issue 13).

A session of `--speakers` speakers and the mix, `--chunk-seconds` chunks, MP3
`--bitrate` kbit/s, is "recorded" as synthetic pieces (real LAME frames of a tone,
repeated: the live Job never decodes, so only the sizes matter) on a real SeaweedFS. Every
`--job-every` chunks (the operator's 30 s interval over 10 s chunks: 3) the live Job runs
for the chunks so far, as the operator runs it; its bytes read and uploaded (through a
counting ObjectStore), the bytes copied server-side, its S3 calls and its wall time are
recorded. At a third, two thirds and the end of the session the full assembly of the
same chunks (another meeting holding copies of the piece documents, no state) is
measured the same way: the cost every Job had before. "composed in S3": the size of the
tracks written by server-side compose (their uploaded parts included).

"of old tracks": the bytes of the live objects the Job read. Since the live manifest has
no sha256 of a live track (`liveextend.py`), a Job reads of each old track only the first
5 MiB of its body (the compose's uploaded first part): what a Job reads stays flat as the
session grows, where it used to grow with it (each old track streamed whole for the
sha256). The last line's read figures are the incremental Job's at a third, two thirds
and the end of the session.

Usage: python benchmarks/live.py [--minutes 30] [--speakers 5] [--chunk-seconds 10]
[--job-every 3] [--bitrate 128]
Last line: `live: per Job at M min x S: read OLD -> NEW MB, uploaded OLD -> NEW MB,
S3 calls OLD -> NEW, wall OLD -> NEW s; session total read OLD -> NEW GB; incremental
read per Job at A/B/C min: X/Y/Z MB`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.counting_store import CountingStore  # noqa: E402
from voicetrack.layout import MIX_TRACK, MeetingLayout  # noqa: E402
from voicetrack.manifests import PieceManifest, PieceTrack  # noqa: E402
from voicetrack.objectstore import sha256_hex  # noqa: E402
from voicetrack_local.seaweed import SeaweedServer  # noqa: E402
from voicetrack_transcoder import TOOL_VERSION  # noqa: E402
from voicetrack_transcoder.live import assemble_live  # noqa: E402
from voicetrack_transcoder.mp3grid import encode_frames  # noqa: E402

GUILD = "123456789012345678"
LIVE = MeetingLayout("bench", GUILD, "BeNcHlIvEiNcR001")
REF = MeetingLayout("bench", GUILD, "BeNcHlIvEfUlL001")
MB = 1e6


def _frames(bitrate: int, workdir: Path) -> list[bytes]:
    """50 LAME frames of a stereo tone (steady state)."""
    t = np.arange(48_000 * 2)
    pcm = (np.stack([np.sin(t * 0.03), np.sin(t * 0.05)], axis=1) * 8000).astype(np.int16)
    return encode_frames(pcm, bitrate, workdir, "tone")[10:60]


def _record(store: CountingStore, index: int, chunk_ms: int, tracks: list[str],
            frames: list[bytes], bitrate: int) -> None:
    """Chunk `index`'s piece: every track's frames, its piece.json in both meetings."""
    first, end = index * chunk_ms // 24, (index + 1) * chunk_ms // 24
    data = b"".join(frames[i % len(frames)] for i in range(first, end))
    entries = []
    for track in tracks:
        key = f"{LIVE.root}/outputs/{index:06d}/piece-{track}.mp3"
        store.put_bytes(key, data)
        entries.append(PieceTrack(track=track, channels=2, key=key, frames=end - first,
                                  bytes=len(data), sha256=sha256_hex(data)))
    piece = PieceManifest(
        tool_version=TOOL_VERSION, index=index, mp3_bitrate=bitrate, origin_ms=first * 24,
        paused_ms=0, chunk_end_ms=end * 24, stereo_seen=True, unit_start_ms=first * 24,
        unit_end_ms=end * 24, first_frame=first, end_frame=end, sources=[],
        prev_used=False, tracks=entries)
    for layout in (LIVE, REF):
        store.put_json(layout.piece_manifest_key(index), piece.to_api())


Figures = tuple[int, int, int, int, float, int]


def _job(store: CountingStore, layout: MeetingLayout, chunks: int) -> Figures:
    """One live Job: (bytes read, uploaded, copied server-side, S3 calls, wall s, bytes
    of the old live tracks read)."""
    store.reset()
    start = time.perf_counter()
    assemble_live(store, layout, chunks=chunks)
    wall = time.perf_counter() - start
    old = sum(n for k, n in store.read.items()
              if k.startswith(layout.live_root) and k.endswith(".mp3"))
    return (sum(store.read.values()), sum(store.uploaded.values()),
            sum(store.composed.values()), store.requests, wall, old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--chunk-seconds", type=int, default=10)
    parser.add_argument("--job-every", type=int, default=3)
    parser.add_argument("--bitrate", type=int, default=128)
    args = parser.parse_args()
    chunk_ms = args.chunk_seconds * 1000
    total = args.minutes * 60 // args.chunk_seconds
    tracks = [f"{10**17 + i}" for i in range(args.speakers)] + [MIX_TRACK]
    samples = {total // 3 // args.job_every * args.job_every,
               2 * total // 3 // args.job_every * args.job_every, total}
    new: dict[int, Figures] = {}
    old: dict[int, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="vt-bench-live-") as tmp:
        server = SeaweedServer(Path(tmp) / "seaweedfs", bucket="bench")
        settings = server.start()
        try:
            store = CountingStore(settings)
            frames = _frames(args.bitrate, Path(tmp))
            for index in range(total):
                _record(store, index, chunk_ms, tracks, frames, args.bitrate)
                chunks = index + 1
                if chunks % args.job_every == 0 or chunks == total:
                    new[chunks] = _job(store, LIVE, chunks)
                if chunks in samples:
                    store.delete_prefix(REF.live_root)  # no state: from chunk 0
                    old[chunks] = _job(store, REF, chunks)
                    for key in store.list_keys(LIVE.live_root):
                        if key.endswith(".mp3"):
                            name = key.rsplit("/", 1)[1]
                            assert store.get_bytes(key) == store.get_bytes(
                                f"{REF.live_root}{name}"), f"{name} differs at {chunks}"
        finally:
            server.stop()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.minutes} min x {args.speakers} speakers + mix, {args.chunk_seconds} s "
          f"chunks, {args.bitrate} kbit/s, a Job every {args.job_every} chunks "
          f"({len(new)} Jobs)")
    for chunks in sorted(old):
        o, n = old[chunks], new[chunks]
        print(f"at {chunks * args.chunk_seconds / 60:5.1f} min: read {o[0] / MB:7.1f} -> "
              f"{n[0] / MB:7.1f} MB (of old tracks {n[5] / MB:5.1f}), uploaded "
              f"{o[1] / MB:7.1f} -> {n[1] / MB:6.2f} MB "
              f"(composed in S3 {n[2] / MB:6.1f} MB), S3 calls {o[3]:5d} -> {n[3]:3d}, wall "
              f"{o[4]:5.2f} -> {n[4]:5.2f} s (identical files)")
    # before, every Job cost what the full assembly of its chunks costs: linear in the
    # chunks, so the session's total is the sampled full Jobs' per-chunk cost summed
    per_chunk_read = old[total][0] / total
    old_total = sum(per_chunk_read * c for c in new) / 1e9
    new_total = sum(n[0] for n in new.values()) / 1e9
    o, n = old[total], new[total]
    print(f"live: per Job at {args.minutes} min x {args.speakers}: read {o[0] / MB:.1f} -> "
          f"{n[0] / MB:.1f} MB, uploaded {o[1] / MB:.1f} -> {n[1] / MB:.2f} MB, S3 calls "
          f"{o[3]} -> {n[3]}, wall {o[4]:.2f} -> {n[4]:.2f} s; session total read "
          f"{old_total:.2f} -> {new_total:.2f} GB; incremental read per Job at "
          + "/".join(f"{c * args.chunk_seconds / 60:.0f}" for c in sorted(old))
          + " min: " + "/".join(f"{new[c][0] / MB:.1f}" for c in sorted(old)) + " MB")


if __name__ == "__main__":
    main()
