"""Incremental promotion, the assembly: the final MP3 tracks and/or FLAC ones
(`flacassembly.py`), waveforms, timeline and manifest joined from the chunks' pieces
(`pieces.py`, whose module docstring describes units, pieces and assembly) after stop.
The MP3 pieces are read for every plan (their peaks and voice activity); a FLAC-only plan
gets no MP3 final track (nothing written, none in the manifest).

Consent (docs/consent.md, "Promotion"): a piece made from the audio of a member the plan
excludes (in `sources`, `prevSources` or as a track of its own) is never used: assembly
raises PiecesUnusable and promotion runs in full from the plan's raw tracks, which leave
the excluded members out.

What assembly renders (`pieces.render`) reads each chunk's raw tracks by
`rawtracks.load_raw`: the frozen copy the chunk's Job stored, `chunks/<index>/` only for a
chunk transcoded before frozen copies existed or one whose frozen copy is damaged.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from voicetrack.audio import FRAME_MS, Channels, ms_to_samples, samples_to_ms
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import (
    FinalManifest,
    FinalTrack,
    PieceManifest,
    PieceTrack,
    PromotionPlan,
    SpeechTimeline,
)
from voicetrack.objectstore import ObjectStore, sha256_file
from voicetrack.resources import pieced
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.ffmpeg import CONTENT_TYPES
from voicetrack_transcoder.flacassembly import FlacContext, fetch_verified, flac_tracks
from voicetrack_transcoder.flacassembly import check_pieces as check_flac
from voicetrack_transcoder.flacpieces import READABLE_SAMPLES
from voicetrack_transcoder.infotag import MP3_BITRATES, MusicCrc, frame_bytes, info_head
from voicetrack_transcoder.mp3grid import (
    FRAME,
    WARMUP_FRAMES,
    owned_end,
    silent_frames,
    total_frames,
)
from voicetrack_transcoder.piececheck import Unit, around, plan_units, read_pieces
from voicetrack_transcoder.pieces import (
    Made,
    PiecesUnusable,
    Work,
    checked_bytes,
    make,
    render,
)
from voicetrack_transcoder.silence import head_plan, settled_made, silent_made
from voicetrack_transcoder.silenthead import stored_head
from voicetrack_transcoder.speech import (
    HANGOVER_MS,
    MERGE_GAP_MS,
    MIN_SPEECH_MS,
    THRESHOLD_DBFS,
    join_runs,
    smooth,
)
from voicetrack_transcoder.streams import UndecodableOpus
from voicetrack_transcoder.waveform import overview_png, peaks_json

T = TypeVar("T")
R = TypeVar("R")

PREFETCH_PIECES = 16
"""Most piece objects of one track fetched ahead of the one being written (a 10 s piece at
128 kbit/s is ~160 KB). The assembly's memory does not grow with the session's length:
the pieces of a 4 h meeting of 5 speakers are ~1.4 GB, more than a promotion Job's
768 MiB limit."""
PREFETCH_BYTES = 128 * 1024 * 1024
"""Bytes of pieces fetched ahead, all tracks together: fewer pieces ahead when pieces are
large (a 300 s chunk at 320 kbit/s stereo is a ~12 MB piece)."""


RENDERS_AT_ONCE = 2
"""Units rendered at once at assembly (`render` + `make`). One holds the PCM of up to two
chunk windows of every track and the mix's working copies: ~320 MB for 5 speakers at
`chunkSeconds` 60, against the promotion Job's 768 MiB limit (second review). Silent
units (`silent_made`) need no render and are not counted."""

UPLOADERS = 6
"""Final objects uploaded at once (each in parts, `ObjectStore.put_file`)."""


def prefetch_depth(largest_piece: int, tracks: int) -> int:
    """Pieces to fetch ahead for one of `tracks` tracks assembled at once whose largest
    piece is `largest_piece` bytes: `PREFETCH_BYTES` shared, 1 to `PREFETCH_PIECES`."""
    share = PREFETCH_BYTES // max(tracks, 1)
    return max(1, min(PREFETCH_PIECES, share // max(largest_piece, 1)))


def fetched_in_order(pool: Executor, items: Iterable[T], fetch: Callable[[T], R],
                     ahead: int | None = None) -> Generator[R, None, None]:
    """`fetch(item)` for each of `items`, yielded in order, run on `pool` with at most
    `ahead` (default `PREFETCH_PIECES`) calls started and not yet yielded; a result is
    released once yielded. An error of `fetch` is raised where its result is due. Closing
    the iterator early cancels the calls not yet started."""
    ahead = max(ahead if ahead is not None else PREFETCH_PIECES, 1)
    pending: deque[Future[R]] = deque()
    source = iter(items)
    try:
        for item in source:
            pending.append(pool.submit(fetch, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def assemble(store: ObjectStore, plan: PromotionPlan, speakers: list[str],
             channels: dict[str, Channels], mix_channels: Channels,
             progress: Callable[[float], None] | None = None) -> FinalManifest:
    """The final MP3 and/or FLAC tracks (the plan's formats), waveforms, timeline and
    manifest from the chunks' pieces.

    Raises PiecesUnusable (nothing written) when a piece is missing, does not match the
    plan, or holds audio of a member the plan excludes (`piececheck.holds_excluded`), when
    audio it must render holds a packet libopus rejects (the full promotion conceals and
    counts it), for formats other than MP3, FLAC or both (`resources.pieced`; a piece
    without FLAC frames when the plan asks for FLAC; FLAC of `flacpieces.READABLE_SAMPLES`
    or more) or a bitrate no MPEG-1 frame has (the MP3 pieces', FLAC-only plans too);
    InvalidInputError / TemporaryFailure as the full promotion does. Each track's FLAC
    (`flacassembly.py`) is listed beside its MP3 in the plan's format order; a FLAC-only
    plan lists (and writes) only the FLAC tracks, with the waveforms of the MP3 pieces'
    peaks."""
    if not pieced(plan.formats):
        raise PiecesUnusable(f"formats {plan.formats}: only MP3, FLAC, or both, are "
                             "assembled from pieces")
    if plan.mp3_bitrate not in MP3_BITRATES:  # LAME rounded it: the full encode does too
        raise PiecesUnusable(f"mp3 bitrate {plan.mp3_bitrate} kbit/s is no MPEG-1 Layer III "
                             "bitrate: only those are assembled from pieces")
    layout = MeetingLayout(plan.prefix, plan.guild_id, plan.meeting_id)
    units, placed = plan_units(plan)
    total_ms = units[-1].end_ms if units else 0
    n_total = ms_to_samples(total_ms)
    want_speakers = plan.tracks in ("perSpeaker", "both")
    want_mix = plan.tracks in ("mixed", "both") and bool(speakers)
    names = ([*speakers] if want_speakers else []) + ([MIX_TRACK] if want_mix else [])
    track_channels = {**channels, MIX_TRACK: mix_channels}

    # 1. the pieces: read and check every manifest against the plan
    want_flac = "flac" in plan.formats
    want_mp3 = "mp3" in plan.formats  # else the MP3 pieces' peaks only, no MP3 written
    if want_flac and n_total >= READABLE_SAMPLES:
        raise PiecesUnusable(f"FLAC of {n_total} samples: ffmpeg stops reading an assembled "
                             "(variable-blocksize) FLAC at sample 2^31")
    pieces = read_pieces(store, layout, plan, units, names, track_channels)
    if want_flac:
        check_flac(units, pieces, lambda pos: plan.chunks[pos].index)

    with tempfile.TemporaryDirectory(prefix="vt-assemble-") as tmp, \
            ThreadPoolExecutor(8, thread_name_prefix="pieces") as pool, \
            ThreadPoolExecutor(UPLOADERS, thread_name_prefix="upload") as uploader:
        work = Path(tmp)

        # 2. how a piece's frames are fetched (verified), a few ahead per track in step 4
        def fetch(t: PieceTrack) -> bytes:
            return checked_bytes(store, t.key, t.bytes, t.sha256)

        def own_piece(unit: Unit) -> PieceManifest | None:
            return pieces.get(plan.chunks[unit.chunk_pos].index) \
                if unit.chunk_pos is not None else None

        # 3. what has no piece: units without one, and the frames after the last piece
        computed: dict[int, Made] = {}
        tasks: list[tuple[int, Work]] = []
        for u, unit in enumerate(units):
            last = u == len(units) - 1
            first = owned_end(ms_to_samples(unit.start_ms)) if unit.start_ms else 0
            if unit.chunk_pos is None:  # the last one runs to the stream's last frame
                tasks.append((u, Work(first, total_frames(n_total) if last else owned_end(
                    ms_to_samples(unit.end_ms)), unit.start_ms, unit.end_ms)))
            elif last:
                tasks.append((len(units), Work(owned_end(n_total), None, total_ms,
                                               total_ms)))
        silence = silent_frames(plan.mp3_bitrate, {track_channels[n] for n in names}, work)
        rendering = threading.BoundedSemaphore(RENDERS_AT_ONCE)

        def compute(item: tuple[int, Work]) -> tuple[int, Made]:
            task, w = item
            start = max(w.first - WARMUP_FRAMES, 0) * FRAME
            from_ms = min(samples_to_ms(start) // FRAME_MS * FRAME_MS, w.unit_start_ms)
            to_ms = total_ms if w.end is None else w.unit_end_ms
            near = around(placed, from_ms - 1000, to_ms)
            if not any(p.chunk.tracks for p in near):  # digital silence from the warm-up
                # on (silent chunks, or a gap after one): LAME's silent frame, no encode
                end = total_frames(n_total) if w.end is None else w.end
                return task, silent_made(silence, w, end - w.first, names, track_channels)
            if near:
                from_ms = min(from_ms, near[0].out_start_ms)
            hp = head_plan(w, placed)  # silence after speech: its first second is enough
            if hp is not None:  # made while recording, by the Job of the chunk before?
                made = stored_head(store, layout, w, hp, plan.mp3_bitrate, track_channels,
                                   names, silence, set(plan.excluded))
                if made is not None:
                    return task, made
            with rendering:  # PCM of up to two chunk windows per track, a few at once
                if hp is not None:
                    rendered = render(store, layout, hp.placed, hp.from_ms, hp.head_ms,
                                      speakers, channels, mix_channels if want_mix else None)
                    rendered.wanted = set(names)
                    own = work / f"unit-{task}-head"
                    own.mkdir()
                    made = settled_made(rendered, w, hp.head_ms, plan.mp3_bitrate, own,
                                        speakers,
                                        {n: silence[track_channels[n]] for n in names})
                    if made is not None:
                        return task, made
                rendered = render(store, layout, near, from_ms, to_ms, speakers, channels,
                                  mix_channels if want_mix else None)
                rendered.wanted = set(names)
                own = work / f"unit-{task}"  # encode_many's files are named by track
                own.mkdir()
                return task, make(rendered, w, plan.mp3_bitrate, own, speakers)

        def compute_or_fall_back(item: tuple[int, Work]) -> tuple[int, Made]:
            try:
                return compute(item)
            except UndecodableOpus as err:  # the full promotion conceals and counts it
                raise PiecesUnusable(f"a packet does not decode ({err})") from None

        computed.update(pool.map(compute_or_fall_back, tasks))  # ffmpeg runs, side by side
        if progress:
            progress(0.5)

        # 4. each track: frames in order, an Info tag, peaks, speech
        uploads: list[tuple[str, Path, str]] = []

        def upload(key: str, path: Path, content_type: str) -> None:
            uploads.append((key, path, content_type))
        speech: dict[str, list[list[list[int]]]] = {u: [] for u in speakers}
        for unit_no, unit in enumerate(units):
            done = pieces.get(plan.chunks[unit.chunk_pos].index) \
                if unit.chunk_pos is not None else None
            for user in speakers:
                speech[user].append(done.speech.get(user, []) if done is not None
                                    else computed[unit_no].speech.get(user, []))
        def finish(name: str) -> FinalTrack:
            """One final track, written once: its head (ID3v2 and Info frame) reserved,
            its frames in order behind it, the head filled in from the frame count and
            the music CRC kept along the way; its waveforms (uploaded once every track
            is complete)."""
            n_ch = track_channels[name]
            path = work / f"{name}.mp3"
            want_frames = total_frames(n_total)
            head_bytes = len(info_head(want_frames, plan.mp3_bitrate, n_ch, n_total, 0))
            frame_size = frame_bytes(plan.mp3_bitrate)
            music = MusicCrc()
            mins: list[np.ndarray] = []
            maxs: list[np.ndarray] = []
            frames = 0
            mine = [t for own in map(own_piece, units) if own is not None
                    for t in own.tracks if t.track == name] if want_mp3 else []
            blobs = fetched_in_order(pool, mine, fetch, prefetch_depth(
                max((t.bytes for t in mine), default=1), len(names)))

            def put(data: bytes) -> None:
                if want_mp3:
                    out.write(data)
                    music.update(data)

            with path.open("wb") as out, contextlib.closing(blobs):
                out.write(bytes(head_bytes))
                for u, unit in enumerate(units):
                    own = own_piece(unit)
                    if own is not None:
                        t = next((t for t in own.tracks if t.track == name), None)
                        count = own.end_frame - own.first_frame
                        if t is None:
                            put(silence[n_ch] * count)
                            pixels = -(-ms_to_samples(unit.end_ms - unit.start_ms)
                                       // 480)
                            mins.append(np.zeros(pixels, np.int8))
                            maxs.append(np.zeros(pixels, np.int8))
                        else:
                            if t.frames != count or t.bytes != count * frame_size:
                                raise PiecesUnusable(f"{t.key}: {t.frames} frames of "
                                                     f"{t.bytes} bytes, the piece owns "
                                                     f"{count} of {frame_size} bytes")
                            if want_mp3:
                                put(next(blobs))
                            pk = np.asarray(t.peaks, dtype=np.int8)
                            mins.append(pk[0::2])
                            maxs.append(pk[1::2])
                        frames += count
                    else:
                        made = computed[u]
                        put(b"".join(made.frames[name]))
                        frames += len(made.frames[name])
                        mins.append(made.peaks[name][0])
                        maxs.append(made.peaks[name][1])
                if len(units) in computed:
                    tail = computed[len(units)].frames[name]
                    put(b"".join(tail))
                    frames += len(tail)
                written = out.tell() - head_bytes if want_mp3 else frames * frame_size
                if frames != want_frames or written != frames * frame_size:
                    raise PiecesUnusable(f"track {name}: {frames} frames ({out.tell()} "
                                         f"bytes) assembled, one encode of {n_total} "
                                         f"samples has {want_frames}")
                out.seek(0)
                out.write(info_head(frames, plan.mp3_bitrate, n_ch, n_total, music.value))
            key = layout.final_key(name, "mp3")
            if want_mp3:
                upload(key, path, CONTENT_TYPES["mp3"])
            mn, mx = np.concatenate(mins), np.concatenate(maxs)
            peaks_key = layout.waveform_key(name, "json")
            overview_key = layout.waveform_key(name, "png")
            peaks_path = work / f"waveform-{name}.json"
            peaks_path.write_text(json.dumps(peaks_json(mn, mx), separators=(",", ":")))
            upload(peaks_key, peaks_path, "application/json")
            png_path = work / f"waveform-{name}.png"
            png_path.write_bytes(overview_png(mn, mx))
            upload(overview_key, png_path, "image/png")
            return FinalTrack(
                track=name, kind="mixed" if name == MIX_TRACK else "speaker",
                user_id=None if name == MIX_TRACK else name, format="mp3", key=key,
                channels=n_ch, bytes=path.stat().st_size, sha256=sha256_file(path),
                duration_ms=total_ms, peaks_key=peaks_key, overview_key=overview_key)

        with ThreadPoolExecutor(max(len(names), 1), thread_name_prefix="track") as tp:
            final_tracks = list(tp.map(finish, names))
        if want_flac:
            largest = max((t.flac.bytes for p in pieces.values() for t in p.tracks
                           if t.flac is not None), default=1)
            final_tracks = flac_tracks(FlacContext(
                store, layout, plan, units, placed, pieces, names, speakers,
                track_channels, want_mix), final_tracks, pool, work, upload,
                lambda items: fetched_in_order(
                    pool, items, lambda f: fetch_verified(store, f),
                    prefetch_depth(largest, 1)))
        list(uploader.map(lambda item: store.put_file(item[0], str(item[1]), item[2]),
                          uploads))
        if progress:
            progress(0.9)
        timeline = speech_timeline(
            total_ms, {u: join_runs(parts) for u, parts in speech.items()})
    store.put_json(layout.timeline_key, timeline.to_api())
    paused_ms = sum(g.end_ms - g.start_ms for g in plan.gaps if g.cause == "paused")
    manifest = FinalManifest(
        tool_version=TOOL_VERSION, meeting_id=plan.meeting_id, duration_ms=total_ms,
        recorded_ms=sum(c.duration_ms for c in plan.chunks), paused_ms=paused_ms,
        tracks=final_tracks, gaps=[g for g in plan.gaps if g.end_ms > g.start_ms],
        timeline_key=layout.timeline_key, consent_key=write_consent(store, layout, plan),
        assembly="incremental")
    store.put_json(layout.final_manifest_key, manifest.to_api())
    return manifest


def speech_timeline(duration_ms: int, raw: dict[str, list[list[int]]]) -> SpeechTimeline:
    """The timeline document from each speaker's raw voiced runs (output ms)."""
    return SpeechTimeline(
        duration_ms=duration_ms, threshold_dbfs=THRESHOLD_DBFS, merge_gap_ms=MERGE_GAP_MS,
        min_speech_ms=MIN_SPEECH_MS, hangover_ms=HANGOVER_MS,
        speakers={u: smooth(runs, duration_ms) for u, runs in raw.items()})


def write_consent(store: ObjectStore, layout: MeetingLayout, plan: PromotionPlan
                  ) -> str | None:
    """Write the plan's consent record to `final/consent.json` and return its key; None
    (nothing written) for a plan without one (made by an operator that predates consent).
    The record is the plan's as it is (`ConsentRecord`: who was recorded, who opted out,
    and `consentDegraded` when role opt-outs were not enforced as asked).
    Raises TemporaryFailure for S3 failures."""
    if plan.consent is None:
        return None
    store.put_json(layout.consent_key, plan.consent.to_api())
    return layout.consent_key
