"""Benchmark: stop → final tracks with incremental promotion, against the full promotion.

For a 10 min and a 1 h session of 5 speakers (10 s chunks, the session of
benchmarks/transcode.py: each speaker talks in a third of the chunks, mono-coded, MP3
128 kbit/s, per-speaker and mixed tracks; nobody speaks in every 6th window, `--silent-every`,
as in real meetings: those chunks have no tracks, no Job and no piece):

1. While "recording": every chunk's piece (`pieces.build_piece`, what each chunk's
   transcoder Job adds) and the head of the silence that may follow it
   (`silenthead.build_head_after`), in chunk order; its wall time per chunk (p50, p95)
   is printed. A session reused from `--data-dir` gets the heads it lacks first; their
   wall time and S3 GETs per spoken chunk are printed (what a Job spends on its head).
2. Stop → final, `--runs` times: the last chunk's piece and head (its Job runs after
   stop) plus the promotion (`promote`, which assembles the pieces). p95 over the runs.
   With `--silent-every 7` the 10 min session ends in a window nobody spoke in.
3. The full promotion of the same plan (`promote(..., incremental=False)`): every chunk
   decoded and every track encoded in one pass. ratio_to_single_pass = stop → final p95
   (1 h) / the full promotion's wall time (1 h).
4. Boundary error (10 min session, every track): the assembled track against the
   single-pass encode, decoded: the lag (ms) that best aligns 100 ms around each unit
   boundary (boundary_err_ms, the largest), the correlation of the whole track, and the
   largest sample difference within ±1152 samples of a junction (where two encodes meet,
   `mp3grid`) against the largest elsewhere.

Per stage (the last stop -> final run): when each stage ran (s from the stop), the
wall time its calls add up to, and the CPU seconds of this process and of SeaweedFS over
the whole promotion (on 2 shared cores these bound the wall time).

With `--formats mp3,flac` (or `flac`) every piece also holds FLAC frames (`flacpieces.py`)
and the final FLAC tracks are assembled too (alone with `flac`); for the 10 min session
each assembled FLAC track is compared sample for sample with the full promotion's
(`flac: ...` line: samples that differ, the largest difference in LSB).

Usage: python benchmarks/promote.py [--speakers 5] [--runs 5] [--minutes 10,60] [--silent-every 6]
[--formats mp3] [--data-dir DIR] (`--data-dir`: SeaweedFS keeps its data there between
runs, and a session already recorded there is reused: its pieces are not made again)
Last line: `promote: stop_to_final_p95 S s (1h x 5), boundary_err_ms E,
ratio_to_single_pass X`.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from transcode import GUILD, upload_session  # noqa: E402

from tests.audio_helpers import best_correlation  # noqa: E402
from voicetrack.errors import NotFoundError  # noqa: E402
from voicetrack.layout import MeetingLayout  # noqa: E402
from voicetrack.manifests import PieceManifest, PromotionPlan  # noqa: E402
from voicetrack.objectstore import ObjectStore, S3Settings  # noqa: E402
from voicetrack_local.seaweed import SeaweedServer  # noqa: E402
from voicetrack_transcoder import assembly, pieces, silence, silenthead  # noqa: E402
from voicetrack_transcoder.mp3grid import FRAME, TOTAL_DELAY, owned_end  # noqa: E402
from voicetrack_transcoder.promote import promote  # noqa: E402


class Stages:
    """Wall time of the calls to a few functions, by stage: (calls, summed s, first
    start, last end) with times from `start`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seen: dict[str, tuple[int, float, float, float]] = {}

    def wrap(self, owner: object, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                calls, total, first, last = self.seen.get(stage, (0, 0.0, t0, t1))
                self.seen[stage] = (calls + 1, total + t1 - t0, min(first, t0), max(last, t1))

        setattr(owner, name, timed)

    def report(self) -> str:
        return "; ".join(
            f"{stage} {first - self.start:.1f}..{last - self.start:.1f} s ({calls} calls, "
            f"{total:.1f} s summed)" for stage, (calls, total, first, last)
            in sorted(self.seen.items(), key=lambda kv: kv[1][2]))


def cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat); with
    `children`, those of its children waited for instead (ffmpeg, for this process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def decode(data: bytes, channels: int, suffix: str = ".mp3") -> np.ndarray:
    """An MP3's (or FLAC's) samples (int16 (n, channels)), gapless as ffmpeg reads a
    file."""
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", f.name, "-f", "s16le",
                              "-ac", str(channels), "pipe:1"], capture_output=True,
                             check=True).stdout
    return np.frombuffer(out, dtype="<i2").reshape(-1, channels)


def record_pieces(store: ObjectStore, layout: MeetingLayout, plan: PromotionPlan
                  ) -> list[float]:
    """Each chunk's piece in order, as the chunk Jobs make them; wall s per chunk."""
    times = []
    for chunk in plan.chunks:
        store.put_json(layout.chunk_manifest_key(chunk.index), chunk.to_api())
        if not chunk.tracks:
            continue  # a silent window: the operator marks it done, no Job, no piece
        t0 = time.perf_counter()
        piece = pieces.build_piece(store, chunk, layout.prefix, plan.mp3_bitrate,
                                   plan.tracks, flac="flac" in plan.formats)
        if piece is not None:
            silenthead.build_head_after(store, chunk, piece, layout.prefix,
                                        plan.mp3_bitrate, plan.tracks)
        times.append(time.perf_counter() - t0)
    return times


def record_heads(store: ObjectStore, layout: MeetingLayout, plan: PromotionPlan
                 ) -> tuple[int, list[float], list[int]]:
    """The heads of a session recorded before the Jobs made them (as each spoken chunk's
    Job makes them now), where missing: (how many were made, wall s and S3 GETs of each
    build, made or not)."""
    made, times, gets = 0, [], []
    real_bytes, real_json = store.get_bytes, store.get_json
    count = [0]

    def counted_bytes(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real_bytes(*args, **kwargs)

    def counted_json(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real_json(*args, **kwargs)

    store.get_bytes, store.get_json = counted_bytes, counted_json  # type: ignore[method-assign]
    try:
        for chunk in plan.chunks:
            if not chunk.tracks or store.exists(layout.head_after_key(chunk.index)):
                continue
            piece = PieceManifest.model_validate(
                real_json(layout.piece_manifest_key(chunk.index)))
            count[0] = 0
            t0 = time.perf_counter()
            made += silenthead.build_head_after(store, chunk, piece, layout.prefix,
                                                plan.mp3_bitrate, plan.tracks) is not None
            times.append(time.perf_counter() - t0)
            gets.append(count[0])
    finally:
        del store.get_bytes, store.get_json
    return made, times, gets


def boundary_figures(inc: dict[str, bytes], full: dict[str, bytes],
                     channels: dict[str, int], plan: PromotionPlan
                     ) -> tuple[float, float, int, int]:
    """(largest boundary lag ms, lowest correlation, largest diff near boundaries, largest
    diff elsewhere), over every track (`inc` and `full`: MP3 bytes by track name)."""
    worst_lag, worst_corr, near_max, far_max = 0.0, 1.0, 0, 0
    # where two encodes meet: the first sample the next piece's first frame decodes to
    bounds = [owned_end(c.end_ms * 48) * FRAME - TOTAL_DELAY for c in plan.chunks[:-1]]
    half, win = FRAME, 2400
    for track, data in inc.items():
        n = channels[track]
        x = decode(data, n).astype(np.int64)
        y = decode(full[track], n).astype(np.int64)
        assert x.shape == y.shape, (track, x.shape, y.shape)
        if n == 1:
            x, y = np.repeat(x, 2, axis=1), np.repeat(y, 2, axis=1)
        corr, _ = best_correlation(y, x, 960)
        worst_corr = min(worst_corr, corr)
        diff = np.abs(x - y).max(axis=1)
        mask = np.zeros(diff.size, dtype=bool)
        for at in bounds:
            mask[max(at - half, 0): at + half] = True
            xs = x[at - win: at + win].sum(axis=1).astype(np.float64)
            ys = y[at - win: at + win].sum(axis=1).astype(np.float64)
            if not ys.any():
                continue
            lags = range(-240, 241, 8)
            scores = [float(np.dot(np.roll(xs, lag), ys)) for lag in lags]
            lag_ms = abs(list(lags)[int(np.argmax(scores))]) / 48
            worst_lag = max(worst_lag, lag_ms)
        near_max = max(near_max, int(diff[mask].max()))
        far_max = max(far_max, int(diff[~mask].max()))
    return worst_lag, worst_corr, near_max, far_max


def recorded(store: ObjectStore, layout: MeetingLayout, speakers: int
             ) -> PromotionPlan | None:
    """The plan of a session recorded by an earlier run with `--data-dir` (its plan and
    the piece of its last-but-one chunk are there), else None."""
    try:
        plan = PromotionPlan.model_validate(store.get_json(layout.promotion_plan_key))
        store.get_json(layout.piece_manifest_key(plan.chunks[-2].index))
    except (NotFoundError, IndexError):
        return None
    return plan if len(plan.speakers) == speakers else None


def flac_figures(inc: dict[str, bytes], full: dict[str, bytes],
                 channels: dict[str, int]) -> tuple[int, int]:
    """(samples that differ, largest difference in LSB) of the assembled FLAC tracks
    against the full promotion's, over every track (FLAC bytes by track name)."""
    differ, largest = 0, 0
    for track, data in inc.items():
        x = decode(data, channels[track], ".flac").astype(np.int32)
        y = decode(full[track], channels[track], ".flac").astype(np.int32)
        assert x.shape == y.shape, (track, x.shape, y.shape)
        diff = np.abs(x - y).max(axis=1)
        differ += int(np.count_nonzero(diff))
        largest = max(largest, int(diff.max()))
    return differ, largest


def bench(store: ObjectStore, minutes: int, speakers: int, runs: int, weed_pid: int,
          silent_every: int, formats: list[str]) -> dict[str, float]:
    # one recorded session per format set in --data-dir (their pieces differ)
    kind = "f" if "mp3" in formats and "flac" in formats else "l" if "flac" in formats else "h"
    layout = MeetingLayout("bench", GUILD,
                           f"PrOmOtEbEnC{kind}{minutes:03d}{silent_every % 10}")
    plan = recorded(store, layout, speakers)
    if plan is None:
        plan = upload_session(store, layout, minutes / 60, speakers, True,
                              silent_every).model_copy(update={"prefix": layout.prefix,
                                                               "formats": formats})
        store.put_json(layout.promotion_plan_key, plan.to_api())
        times = record_pieces(store, layout, plan)
    else:
        made, head_s, gets = record_heads(store, layout, plan)
        print(f"{minutes} min: the session recorded earlier in --data-dir is reused "
              f"({made} heads made now" + (
                  f"; per spoken chunk's Job: p50 {statistics.median(head_s):.3f} s, p95 "
                  f"{p95(head_s):.3f} s, S3 GETs {min(gets)}..{max(gets)}"
                  if head_s else "") + ")", flush=True)
        times = [float("nan")]
    last = plan.chunks[-1]
    stops = []
    for _ in range(runs):
        stages = Stages()
        stages.wrap(pieces, "build_piece", "last piece")
        stages.wrap(assembly, "read_pieces", "piece.json reads")
        stages.wrap(assembly, "render", "unit renders (decode)")
        stages.wrap(assembly, "make", "unit encodes")
        stages.wrap(silence, "make", "unit encodes")  # silence after speech: the head
        stages.wrap(assembly, "stored_head", "silent heads made while recording")
        stages.wrap(silenthead, "build_head_after", "last head")
        stages.wrap(store, "get_bytes", "GETs")
        stages.wrap(assembly, "sha256_file", "sha256 of the tracks")
        stages.wrap(store, "put_file", "uploads")
        cpu0, weed0 = cpu_s(os.getpid()), cpu_s(weed_pid)
        kids0 = cpu_s(os.getpid(), children=True)
        t0 = time.perf_counter()
        if last.tracks:  # a silent last window has no Job
            piece = pieces.build_piece(store, last, layout.prefix, plan.mp3_bitrate,
                                       plan.tracks, flac="flac" in plan.formats)
            if piece is not None:
                silenthead.build_head_after(store, last, piece, layout.prefix,
                                            plan.mp3_bitrate, plan.tracks)
        manifest = promote(store, layout.promotion_plan_key)
        stops.append(time.perf_counter() - t0)
        cpu, weed = cpu_s(os.getpid()) - cpu0, cpu_s(weed_pid) - weed0
        kids = cpu_s(os.getpid(), children=True) - kids0
        for owner, name in ((pieces, "build_piece"), (assembly, "read_pieces"),
                            (assembly, "sha256_file"), (assembly, "stored_head"),
                            (silenthead, "build_head_after")):
            setattr(owner, name, getattr(owner, name).__wrapped__)
        for name in ("get_bytes", "put_file"):
            delattr(store, name)
        assert manifest.assembly == "incremental", manifest.fallback_reason
    print(f"{minutes} min x {speakers}: stages of the last stop -> final "
          f"({stops[-1]:.1f} s): {stages.report()}; CPU: this process {cpu:.1f} s, "
          f"its ffmpeg {kids:.1f} s, SeaweedFS {weed:.1f} s; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    inc_tracks = {t.track: store.get_bytes(t.key) for t in manifest.tracks
                  if t.format == "mp3"} if minutes <= 10 else {}
    inc_flac = {t.track: store.get_bytes(t.key) for t in manifest.tracks
                if t.format == "flac"} if minutes <= 10 else {}
    t0 = time.perf_counter()
    full = promote(store, layout.promotion_plan_key, incremental=False)
    full_s = time.perf_counter() - t0
    out = {"piece_p50": statistics.median(times), "piece_p95": p95(times),
           "stop_p50": statistics.median(stops), "stop_p95": p95(stops), "full": full_s}
    print(f"{minutes} min x {speakers}: {len(plan.chunks)} chunks; piece per chunk "
          f"p50 {out['piece_p50']:.2f} s p95 {out['piece_p95']:.2f} s; stop -> final "
          f"p50 {out['stop_p50']:.2f} s p95 {out['stop_p95']:.2f} s ({runs} runs); full "
          f"promotion {full_s:.1f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
    if inc_tracks:
        full_tracks = {t.track: store.get_bytes(t.key) for t in full.tracks
                       if t.format == "mp3"}
        lag, corr, near, far = boundary_figures(
            inc_tracks, full_tracks, {t.track: t.channels for t in full.tracks}, plan)
        print(f"{minutes} min boundaries (every track against the single-pass encode): "
              f"largest lag {lag:.2f} ms, lowest correlation {corr:.4f}, largest sample "
              f"difference within 1152 samples of a junction {near} vs {far} elsewhere", flush=True)
        out.update(lag=lag, corr=corr, near=near, far=far)
    if inc_flac:
        differ, largest = flac_figures(
            inc_flac, {t.track: store.get_bytes(t.key) for t in full.tracks
                       if t.format == "flac"}, {t.track: t.channels for t in full.tracks})
        print(f"{minutes} min flac: assembled against the full promotion, {differ} samples "
              f"differ (every track), largest difference {largest} LSB", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speakers", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--minutes", default="10,60")
    parser.add_argument("--silent-every", type=int, default=6,
                        help="every Nth 10 s window nobody speaks (a chunk without "
                             "tracks, no piece); 0: someone speaks in every window")
    parser.add_argument("--formats", default="mp3",
                        help="output formats: mp3, mp3,flac or flac (FLAC assembled too)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="SeaweedFS data directory kept between runs (sessions "
                             "recorded there are reused)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vt-bench-promote-") as tmp:
        server = SeaweedServer(args.data_dir or Path(tmp) / "seaweedfs", bucket="bench")
        settings: S3Settings = server.start()
        try:
            store = ObjectStore(settings)
            assert server.process is not None
            for minutes in (int(m) for m in args.minutes.split(",")):
                results[minutes] = bench(store, minutes, args.speakers, args.runs,
                                         server.process.pid, args.silent_every,
                                         args.formats.split(","))
        finally:
            server.stop()
    longest = results[max(results)]
    shortest = results[min(results)]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; stop -> final "
          f"p95 {shortest['stop_p95']:.2f} s ({min(results)} min) vs "
          f"{longest['stop_p95']:.2f} s ({max(results)} min)")
    print(f"promote: stop_to_final_p95 {longest['stop_p95']:.1f} s "
          f"({max(results) / 60:g}h x {args.speakers}), boundary_err_ms "
          f"{shortest.get('lag', float('nan')):.1f}, ratio_to_single_pass "
          f"{longest['stop_p95'] / longest['full']:.2f}")


if __name__ == "__main__":
    main()
