"""The `voicetrack-transcoder` command (console script → `app`).

    voicetrack-transcoder chunk --chunk-json '<ChunkSpec JSON>' --prefix <prefix>
                                [--formats mp3,flac,opus] [--mp3-bitrate 128]
                                [--tracks perSpeaker|mixed|both]
    voicetrack-transcoder promote --plan-key <key of promotion.json>
    voicetrack-transcoder live --prefix <prefix> --guild-id <id> --meeting-id <id>
                               [--chunks N] [--silent-chunks 3,7]

The bucket and credentials come from VOICETRACK_S3_ENDPOINT, VOICETRACK_S3_ACCESS_KEY,
VOICETRACK_S3_SECRET_KEY and VOICETRACK_S3_BUCKET, and are never printed. Exit codes: 0 done;
2 bad input (`error: <reason>` on stderr and as the termination message; the Job's
podFailurePolicy fails it at once and the raw data is untouched; when one chunk's raw input
fails a promotion, `ChunkInputError`, its termination message is the `TerminationReport`
naming that chunk);
75 S3 away; 1 anything else (the Job retries).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import ChunkInputError, InvalidInputError, ServiceUnavailable
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.termination import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_TEMPORARY,
    write_termination_message,
)
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.ffmpeg import parse_formats
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.promote import promote

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Voicetrack transcoder: chunk transcodes and session promotion.")

T = TypeVar("T")


def _fail(code: int, reason: str, bad_chunk: int | None = None) -> typer.Exit:
    """Report `reason` on stderr and as the termination message (with `bad_chunk`, the
    structured `TerminationReport` naming that chunk); the exit to raise."""
    line = " ".join(reason.split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    write_termination_message(line, bad_chunk)
    return typer.Exit(code)


def _guarded(work: Callable[[], T], name_chunk: bool = False) -> T:
    """Run `work`, mapping InvalidInputError to exit 2 (with `name_chunk`, a
    ChunkInputError's chunk named in the termination message: the promotion's, for the
    operator to leave that chunk out), ServiceUnavailable (S3 away) to exit 75 and any
    other error (an ffmpeg crash too) to exit 1."""
    try:
        return work()
    except ChunkInputError as err:
        raise _fail(EXIT_BAD_INPUT, str(err), err.index if name_chunk else None) from None
    except InvalidInputError as err:
        raise _fail(EXIT_BAD_INPUT, str(err)) from None
    except ServiceUnavailable as err:
        raise _fail(EXIT_TEMPORARY, f"{type(err).__name__}: {err}") from None
    except Exception as err:  # infrastructure, ffmpeg, bugs: let the Job retry
        raise _fail(EXIT_FAILURE, f"{type(err).__name__}: {err}") from None


def _store() -> ObjectStore:
    try:
        return ObjectStore(S3Settings.from_env())
    except RuntimeError as err:
        raise _fail(EXIT_FAILURE, str(err)) from None


@app.command()
def chunk(
    chunk_json: Annotated[str, typer.Option(
        "--chunk-json", envvar="VOICETRACK_CHUNK_JSON",
        help="The RecordingChunk spec (ChunkSpec) as camelCase JSON.")],
    prefix: Annotated[str, typer.Option(
        "--prefix", envvar="VOICETRACK_S3_PREFIX", help="Storage prefix of the session.")],
    formats: Annotated[str, typer.Option(
        "--formats", envvar="VOICETRACK_FORMATS", help="Comma-separated: mp3, flac, opus.")
    ] = "mp3",
    mp3_bitrate: Annotated[int, typer.Option(
        "--mp3-bitrate", envvar="VOICETRACK_MP3_BITRATE", help="MP3 bitrate in kbit/s.")
    ] = 128,
    tracks: Annotated[str | None, typer.Option(
        "--tracks", envvar="VOICETRACK_TRACKS",
        help="Final tracks (perSpeaker, mixed, both) to prepare this chunk's piece of "
             "(incremental promotion); none when absent.")] = None,
) -> None:
    """Transcode one chunk's raw tracks; write outputs and result.json (last), then the
    chunk's piece of the final tracks when --tracks is given."""
    try:
        spec = ChunkSpec.model_validate(json.loads(chunk_json))
        fmts = parse_formats(formats)
        if tracks is not None and tracks not in ("perSpeaker", "mixed", "both"):
            raise ValueError(f"--tracks {tracks!r} is not perSpeaker, mixed or both")
    except (ValueError, ValidationError) as err:
        raise _fail(EXIT_BAD_INPUT, f"bad --chunk-json, --formats or --tracks: {err}"
                    ) from None
    store = _store()
    result = _guarded(lambda: transcode_chunk(store, spec, prefix, fmts, mp3_bitrate,
                                              tracks))
    print(f"chunk {result.index}: {len(result.outputs)} output(s) written", flush=True)


@app.command(name="promote")
def promote_cmd(
    plan_key: Annotated[str, typer.Option(
        "--plan-key", envvar="VOICETRACK_PLAN_KEY", help="S3 key of promotion.json.")],
) -> None:
    """Build the gapless per-speaker and mixed final tracks, waveforms and manifest.json."""
    store = _store()

    def progress(fraction: float) -> None:
        print(f"progress: {int(fraction * 100):d}%", flush=True)

    manifest = _guarded(lambda: promote(store, plan_key, progress), name_chunk=True)
    print(f"promoted {len(manifest.tracks)} track(s), {manifest.duration_ms} ms", flush=True)


@app.command()
def live(
    prefix: Annotated[str, typer.Option(
        "--prefix", envvar="VOICETRACK_S3_PREFIX", help="Storage prefix of the session.")],
    guild_id: Annotated[str, typer.Option("--guild-id", envvar="VOICETRACK_GUILD_ID")],
    meeting_id: Annotated[str, typer.Option("--meeting-id", envvar="VOICETRACK_MEETING_ID")],
    chunks: Annotated[int | None, typer.Option(
        "--chunks", envvar="VOICETRACK_LIVE_CHUNKS", min=1,
        help="Assemble exactly chunks 0..N-1 (the operator's live Job: the chunks it saw "
             "transcoded); fails (exit 1, previous live files kept) when one has no piece. "
             "Absent: the unbroken run of pieces from chunk 0.")] = None,
    silent_chunks: Annotated[str, typer.Option(
        "--silent-chunks", envvar="VOICETRACK_LIVE_SILENT_CHUNKS",
        help="Comma-separated indexes of chunks without a piece that are silence "
             "(failed, or nobody spoke).")] = "",
) -> None:
    """Assemble the audio so far of a live session from its chunks' pieces into
    live/<track>.mp3 and live/manifest.json (replaced each time), extending the last
    run's tracks from live/state.json (only the new chunks' pieces are read) or, without a
    usable state, from chunk 0."""
    try:
        silent = {int(i) for i in silent_chunks.split(",") if i.strip()}
    except ValueError:
        raise _fail(EXIT_BAD_INPUT, f"bad --silent-chunks {silent_chunks!r}: "
                    "comma-separated chunk indexes") from None
    store = _store()
    manifest = _guarded(lambda: assemble_live(store, MeetingLayout(prefix, guild_id,
                                                                   meeting_id), chunks, silent))
    if manifest is None:
        print("no piece yet: nothing assembled", flush=True)
    else:
        print(f"live: {len(manifest.tracks)} track(s), {manifest.duration_ms} ms", flush=True)
