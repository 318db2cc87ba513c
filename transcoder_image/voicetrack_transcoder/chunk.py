"""`voicetrack-transcoder chunk`: one chunk's raw tracks → MP3 (FLAC, Opus) with integrity data.

Order of work, which makes the command safe to run again: read and validate every raw track
first (bad input stops here, before anything is written); encode all tracks and formats with
one ffmpeg run; hash and upload the outputs while one more ffmpeg run decodes them to measure
their true length; store the verified raw tracks and the spec as the chunk's frozen copies
(`voicetrack.layout`, "Who writes where": outside the recorder's upload grant, so
overwriting the raw track after this changes nothing promotion reads); write `result.json`
last, so its presence means every output it lists and every frozen copy is in place.
Outputs are
bit-exact functions of the raw input, so a second run writes the same keys and bytes.
A chunk's own outputs are its window as stored, not delayed by the tracks'
`phaseSamples` (under a slot: they span exactly the window); the final tracks are
(`streams.py`, "Phase").
Then, for an MP3, FLAC, or MP3 and FLAC session, the chunk's piece of the final tracks
(`pieces.py`; MP3 always, and FLAC frames beside it when FLAC is asked for:
`flacpieces.py`): an
optimisation only, so its failure is logged and leaves the chunk done (promotion then
runs in full); and the head of a silent unit that may follow the chunk (a window nobody
speaks in, a failed chunk's gap, the time up to stop: `silenthead.py`), made before anyone
knows what follows, an optimisation too (assembly then computes that unit).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from voicetrack.audio import RAW_FORMAT_OGG_OPUS, samples_to_ms
from voicetrack.chunkspec import ChunkOutput, ChunkSpec
from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import TranscodeResult
from voicetrack.objectstore import ObjectStore, sha256_file
from voicetrack.resources import pieced
from voicetrack_transcoder import TOOL_VERSION
from voicetrack_transcoder.ffmpeg import (
    BITEXACT,
    CONTENT_TYPES,
    DecodeCheck,
    encode_args,
    pcm_input,
    run,
)
from voicetrack_transcoder.pieces import build_piece
from voicetrack_transcoder.rawtracks import RawTrack, check_window, load_raw
from voicetrack_transcoder.silenthead import build_head_after

log = logging.getLogger(__name__)


def transcode_chunk(store: ObjectStore, chunk: ChunkSpec, prefix: str, formats: list[str],
                    mp3_bitrate: int = 128, tracks: str | None = None) -> TranscodeResult:
    """Transcode every track of `chunk` into `formats` and write outputs and `result.json`
    under `MeetingLayout(prefix, chunk.guild_id, chunk.meeting_id)`.

    `mp3_bitrate` is in kbit/s. Each output's `durationMs` is its decoded sample count at
    48 kHz in whole ms. Opus output of an Ogg Opus raw track is the received packets
    remuxed (lossless); from PCM it is encoded with libopus. A track with `channels` 1
    (mono-coded packets) is encoded as mono (its left channel, which is what a mono libopus
    decoder returns), else as stereo.
    `tracks` (`perSpeaker`, `mixed`, `both`; None: no piece) asks for the chunk's piece
    of those final tracks when `formats` is MP3, FLAC, or both (`pieced`: the MP3 piece
    at `mp3_bitrate` always, FLAC frames too when `formats` has FLAC; see the module
    docstring).
    The raw tracks are read by `rawtracks.load_raw` (a frozen copy a run before stored,
    else `chunk.tracks[].key`) and stored as frozen copies, with `chunk` itself
    (`MeetingLayout.frozen_spec_key`), before `result.json`.
    Raises InvalidInputError (exit 2) for a bad window, a missing, empty or corrupt raw
    object or a sha256 mismatch, before writing anything; TemporaryFailure (exit 1) for
    S3 or ffmpeg failures.
    """
    check_window(chunk.start_ms, chunk.end_ms, f"chunk {chunk.index}")
    if not 8 <= mp3_bitrate <= 320:
        raise InvalidInputError(f"mp3 bitrate {mp3_bitrate} kbit/s is outside 8..320")
    users = [t.user_id for t in chunk.tracks]
    if len(set(users)) != len(users):
        raise InvalidInputError(f"chunk {chunk.index}: a user id appears twice in tracks")
    layout = MeetingLayout(prefix, chunk.guild_id, chunk.meeting_id)
    raws: list[RawTrack] = [load_raw(store, layout, chunk, t) for t in chunk.tracks]

    outputs: list[ChunkOutput] = []
    with tempfile.TemporaryDirectory(prefix="vt-chunk-") as tmp:
        work = Path(tmp)
        plan: list[tuple[RawTrack, str, Path]] = []
        args: list[str] = []
        for i, raw in enumerate(raws):
            src = work / f"raw-{i}"
            src.write_bytes(raw.data)
            if raw.raw_format == RAW_FORMAT_OGG_OPUS:
                args += ["-c:a", "libopus", "-f", "ogg", "-i", str(src)]
            else:
                args += [*pcm_input(), "-i", str(src)]
        for i, raw in enumerate(raws):
            for fmt in formats:
                out = work / f"out-{i}-{fmt}"
                plan.append((raw, fmt, out))
                if fmt == "opus" and raw.raw_format == RAW_FORMAT_OGG_OPUS:
                    codec = ["-c:a", "copy", "-f", "ogg"]
                else:  # a mono-coded track: its left channel is what a mono decoder gives
                    mono = ["-af", "pan=mono|c0=c0"] if raw.track.channels == 1 else []
                    codec = [*mono, *encode_args(fmt, mp3_bitrate)]
                args += ["-map", f"{i}:a:0", *codec, *BITEXACT, str(out)]
        # The decode check starts now so that ffmpeg's start-up overlaps the encoding; it
        # decodes the outputs (true lengths) while they are hashed and uploaded. result.json,
        # written last, is what makes the outputs count.
        check = DecodeCheck([out for _, _, out in plan], work)
        try:
            if plan:
                run(args, f"chunk {chunk.index}")
            check.feed()
            uploaded = []
            for raw, fmt, out in plan:
                key = layout.chunk_output_key(chunk.index, raw.track.user_id, fmt)
                uploaded.append((key, out.stat().st_size, sha256_file(out)))
                store.put_file(key, str(out), CONTENT_TYPES[fmt])
            counts = check.counts()
        finally:
            check.kill()
        for (raw, fmt, _), (key, size, digest), samples in zip(plan, uploaded, counts,
                                                                strict=True):
            outputs.append(ChunkOutput(
                user_id=raw.track.user_id, format=fmt, key=key, bytes=size, sha256=digest,
                duration_ms=samples_to_ms(samples)))
    for raw in raws:  # the exact bytes verified above, never a copy of what is there now
        if not raw.frozen:
            store.put_bytes(layout.frozen_raw_key(chunk.index, raw.track.user_id,
                                                  raw.raw_format), raw.data)
    store.put_json(layout.frozen_spec_key(chunk.index), chunk.to_api())  # what they match
    result = TranscodeResult(tool_version=TOOL_VERSION, index=chunk.index, outputs=outputs)
    store.put_json(layout.result_key(chunk.index), result.to_api())
    if tracks is not None and pieced(formats):
        try:
            piece = build_piece(store, chunk, prefix, mp3_bitrate, tracks,
                                flac="flac" in formats)
        except Exception as err:  # an optimisation: promotion falls back to the full path
            log.info("chunk %d: no piece: %s: %s", chunk.index, type(err).__name__, err)
            print(f"chunk {chunk.index}: no piece ({type(err).__name__}: {err})", flush=True)
            piece = None
        try:
            if piece is not None:  # without it assembly does not run: no head needed
                build_head_after(store, chunk, piece, prefix, mp3_bitrate, tracks)
        except Exception as err:  # an optimisation: assembly computes the unit then
            log.info("chunk %d: no silent head: %s: %s", chunk.index, type(err).__name__,
                     err)
            print(f"chunk {chunk.index}: no silent head ({type(err).__name__}: {err})",
                  flush=True)
    return result
