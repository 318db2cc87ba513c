"""Benchmark: the transcoder against bare ffmpeg, and a one-hour five-speaker promotion.

1. `chunk` throughput on one 10 s raw Ogg Opus chunk (one speaker), S3 I/O and hashing
   included: our `transcode_chunk` (fetch and verify the raw from SeaweedFS, encode MP3,
   decode it back for the true duration, hash, upload, write result.json) against bare
   `ffmpeg -c:a libopus -i raw.opus -c:a libmp3lame -b:a 128k out.mp3` on a local file.
   ratio = ffmpeg's time / ours (goal ≥ 0.9). Also printed: the `voicetrack-transcoder
   chunk` command's wall time, interpreter start-up included.
2. `promote` of 1 h × 5 speakers (10 s chunks, each speaker talking in a third of them, in
   turns; MP3 128 kbit/s, per-speaker and mixed tracks): wall time and the peak RSS of the
   whole process tree (Python plus its ffmpeg encoders), sampled every 0.1 s from /proc
   (goals: ≤ 60 s on 2 cores, < 500 MB). Baseline in the same run: bare ffmpeg encoding
   the same final audio (decoded from our MP3s) to MP3, all tracks in parallel: the floor
   LAME sets on this machine at this moment.

Speech for (2) is a pool of 60 s per speaker, encoded once with discord.py's libopus
encoder and reused cyclically: decoding cost per packet is what matters, not novelty.
Packets are mono-coded, as Discord clients send a microphone (`--coding stereo`: as a bot
sending stereo may), so the tracks are mono; the chunk baseline encodes the same way.

Usage: python benchmarks/transcode.py [--hours 1.0] [--speakers 5] [--runs 12]
       [--coding mono|stereo]
Last line: `transcode: ratio R, promote_1h5 S s, rss M MB`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.audio_helpers import Speaker, encode_session  # noqa: E402
from voicetrack.audio import FRAME_MS, OPUS_SILENCE_FRAME, opus_channels  # noqa: E402
from voicetrack.chunkspec import ChunkSpec, ChunkTrack  # noqa: E402
from voicetrack.layout import MeetingLayout  # noqa: E402
from voicetrack.manifests import PromotionPlan  # noqa: E402
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex  # noqa: E402
from voicetrack.oggopus import encode_ogg_opus  # noqa: E402
from voicetrack_local.seaweed import SeaweedServer  # noqa: E402
from voicetrack_transcoder.chunk import transcode_chunk  # noqa: E402

GUILD = "123456789012345678"
CHUNK_MS = 10_000


def speech_packets(user_index: int, seconds: int, mono: bool) -> list[bytes]:
    """`seconds` of continuous voice-like audio as 20 ms Opus packets (no silent slots),
    mono-coded or stereo-coded."""
    speaker = Speaker(str(10**17 + user_index), 150 + 37 * user_index, level=0.3,
                      talks=[(0, seconds * 1000)],
                      markers=list(range(500, seconds * 1000, 1700)))
    return encode_session(speaker.pcm(seconds * 1000), mono=mono)


def bench_chunk(store: ObjectStore, work: Path, runs: int, mono: bool
                ) -> tuple[float, float, float]:
    """(ratio, our median s, bare ffmpeg median s) on one 10 s chunk; also the CLI's."""
    packets = speech_packets(0, CHUNK_MS // 1000, mono)
    raw = encode_ogg_opus(packets)
    layout = MeetingLayout("bench", GUILD, "BeNcHcHuNkBeNcH1")
    user = str(10**17)
    key = layout.raw_key(0, user, "ogg-opus")
    store.put_bytes(key, raw)
    chunk = ChunkSpec(session_name="bench", meeting_id=layout.meeting_id, guild_id=GUILD,
                      index=0, start_ms=0, end_ms=CHUNK_MS, tracks=[ChunkTrack(
                          user_id=user, key=key, frames=len(packets), first_ms=0,
                          last_ms=CHUNK_MS - FRAME_MS, bytes=len(raw), sha256=sha256_hex(raw),
                          channels=opus_channels(packets))])
    local = work / "raw.opus"
    local.write_bytes(raw)
    bare_args = ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y", "-c:a", "libopus",
                 "-i", str(local), *(["-af", "pan=mono|c0=c0"] if mono else []),
                 "-c:a", "libmp3lame", "-b:a", "128k", str(work / "o.mp3")]
    ours, bare = [], []
    transcode_chunk(store, chunk, layout.prefix, ["mp3"], 128)  # warm caches once
    for _ in range(runs):  # interleaved, so both see the same machine load
        t0 = time.perf_counter()
        subprocess.run(bare_args, check=True)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        transcode_chunk(store, chunk, layout.prefix, ["mp3"], 128)
        ours.append(time.perf_counter() - t0)
    env = {**os.environ, **store.settings.env()}
    cli = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "voicetrack-transcoder"), "chunk",
                        "--chunk-json", json.dumps(chunk.to_api()), "--prefix", layout.prefix],
                       env=env, check=True, capture_output=True)
        cli.append(time.perf_counter() - t0)
    o, b = statistics.median(ours), statistics.median(bare)
    c = statistics.median(cli)
    print(f"chunk 10 s: ours {o * 1000:.0f} ms, bare ffmpeg {b * 1000:.0f} ms "
          f"(median of {runs}); CLI with interpreter start-up {c * 1000:.0f} ms")
    return b / o, o, b


def upload_session(store: ObjectStore, layout: MeetingLayout, hours: float, speakers: int,
                   mono: bool, silent_every: int = 0) -> PromotionPlan:
    """Raw chunks of a `hours`-long session: speaker k talks in chunks where
    (index + k) % 3 == 0, the others are absent from them (silence). With `silent_every`
    N > 0, every Nth chunk (index % N == N // 2) is a window in which nobody spoke: a chunk
    without tracks, as the recorder seals it (Discord sends no packets in silence)."""
    pool_s = 60
    pools = [speech_packets(k, pool_s, mono) for k in range(speakers)]
    per_chunk = CHUNK_MS // FRAME_MS
    n_chunks = int(hours * 3600 * 1000) // CHUNK_MS
    users = [str(10**17 + k) for k in range(speakers)]
    chunks = []
    for index in range(n_chunks):
        tracks = []
        for k, user in enumerate(users):
            if (index + k) % 3 or (silent_every and index % silent_every == silent_every // 2):
                continue
            start = (index * per_chunk) % (len(pools[k]) - per_chunk)
            packets = pools[k][start:start + per_chunk]
            packets[-5:] = [OPUS_SILENCE_FRAME] * 5  # the turn ends in silence
            data = encode_ogg_opus(packets, serial=index + 1)
            key = layout.raw_key(index, user, "ogg-opus")
            store.put_bytes(key, data)
            tracks.append(ChunkTrack(user_id=user, key=key, frames=per_chunk - 5,
                                     first_ms=index * CHUNK_MS,
                                     last_ms=(index + 1) * CHUNK_MS - 6 * FRAME_MS,
                                     bytes=len(data), sha256=sha256_hex(data),
                                     channels=opus_channels(packets)))
        chunks.append(ChunkSpec(session_name="bench", meeting_id=layout.meeting_id,
                                guild_id=GUILD, index=index, start_ms=index * CHUNK_MS,
                                end_ms=(index + 1) * CHUNK_MS, tracks=tracks))
    return PromotionPlan(guild_id=GUILD, meeting_id=layout.meeting_id, prefix=layout.prefix,
                         session_end_ms=n_chunks * CHUNK_MS, speakers=users, chunks=chunks,
                         tracks="both", formats=["mp3"], mp3_bitrate=128)


def tree_memory_bytes(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over `pid` and all its descendants, from /proc. RSS counts
    shared library pages once per process (conservative); PSS shares them out."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss, pss, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def bench_promote(store: ObjectStore, hours: float, speakers: int, mono: bool
                  ) -> tuple[float, float, float, float]:
    """(wall s, CPU s, peak tree RSS MB, peak tree PSS MB) of `voicetrack-transcoder
    promote` on the session; CPU counts the process and its ffmpeg children."""
    layout = MeetingLayout("bench", GUILD, "BeNcHpRoMoTeBeN1")
    t0 = time.perf_counter()
    plan = upload_session(store, layout, hours, speakers, mono)
    store.put_json(layout.promotion_plan_key, plan.to_api())
    print(f"promote input: {len(plan.chunks)} chunks, "
          f"{sum(len(c.tracks) for c in plan.chunks)} raw tracks, "
          f"uploaded in {time.perf_counter() - t0:.1f} s", flush=True)
    env = {**os.environ, **store.settings.env()}
    peak_rss = peak_pss = 0
    cpu0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "voicetrack-transcoder"),
                             "promote", "--plan-key", layout.promotion_plan_key],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    own_cpu = 0.0  # the Python process alone: fetch, decode, mix, peaks

    def sample() -> None:
        nonlocal peak_rss, peak_pss, own_cpu
        ticks = os.sysconf("SC_CLK_TCK")
        while not done.is_set():
            rss, pss = tree_memory_bytes(proc.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                own_cpu = (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system
                                                        - cpu0.children_system)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"promote failed ({proc.returncode}): {err.strip()}")
    print(out.strip().splitlines()[-1])
    print(f"promote CPU: Python (fetch, decode, mix, peaks) {own_cpu:.1f} s, "
          f"ffmpeg encoders {cpu - own_cpu:.1f} s")
    return wall, cpu, peak_rss / 2**20, peak_pss / 2**20


def bench_encoder_floor(store: ObjectStore, work: Path) -> tuple[float, float]:
    """(wall s, CPU s) of bare ffmpeg encoding the promoted tracks' audio to MP3 128 kbit/s,
    all tracks in parallel as promotion runs them: the encoder's own cost, measured in the
    same run (the machine's speed varies from run to run). The audio is the final MP3s
    decoded to s16le files first (not timed), at their own channel counts."""
    layout = MeetingLayout("bench", GUILD, "BeNcHpRoMoTeBeN1")
    manifest = store.get_json(layout.final_manifest_key)
    inputs = []
    for i, track in enumerate(manifest["tracks"]):
        mp3, pcm = work / f"floor-{i}.mp3", work / f"floor-{i}.pcm"
        store.get_file(track["key"], str(mp3))
        channels = str(track.get("channels", 2))
        subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y", "-i",
                        str(mp3), "-f", "s16le", "-ac", channels, str(pcm)], check=True)
        mp3.unlink()
        inputs.append((pcm, channels))
    cpu0 = os.times()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y",
                               "-f", "s16le", "-ar", "48000", "-ac", channels, "-i", str(pcm),
                               "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3",
                               str(pcm.with_suffix(".mp3"))])
             for pcm, channels in inputs]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("bare ffmpeg failed")
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    for pcm, _ in inputs:
        pcm.unlink()
        pcm.with_suffix(".mp3").unlink()
    return wall, (cpu1.children_user - cpu0.children_user) + (cpu1.children_system
                                                              - cpu0.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--coding", choices=["mono", "stereo"], default="mono",
                        help="how the speakers' packets are coded (Discord clients: mono)")
    args = parser.parse_args()
    mono = args.coding == "mono"
    with tempfile.TemporaryDirectory(prefix="vt-bench-") as tmp:
        server = SeaweedServer(Path(tmp) / "seaweedfs", bucket="bench")
        settings: S3Settings = server.start()
        try:
            store = ObjectStore(settings)
            ratio, _, _ = bench_chunk(store, Path(tmp), args.runs, mono)
            wall, cpu, rss, pss = bench_promote(store, args.hours, args.speakers, mono)
            floor_wall, floor_cpu = bench_encoder_floor(store, Path(tmp))
        finally:
            server.stop()
    print(f"promote {args.hours:g} h x {args.speakers} {args.coding}-coded speakers: "
          f"{wall:.1f} s wall, "
          f"{cpu:.1f} s CPU (with ffmpeg), peak process-tree RSS {rss:.0f} MB "
          f"(PSS {pss:.0f} MB); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"encoder floor (bare ffmpeg MP3 encodes of the same final audio, in parallel): "
          f"{floor_wall:.1f} s wall, {floor_cpu:.1f} s CPU; promote takes "
          f"{wall / floor_wall:.2f}x the floor's wall time")
    print(f"transcode: ratio {ratio:.2f}, promote_1h5 {wall:.1f} s, rss {rss:.0f} MB")


if __name__ == "__main__":
    main()
