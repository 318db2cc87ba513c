"""`voicetrack recordings list|show|url|download|zip`: the meetings and their audio, from any
cluster's database and S3.

Settings are the operator's: `VOICETRACK_DATABASE_URL` and `VOICETRACK_S3_ENDPOINT`,
`VOICETRACK_S3_ACCESS_KEY`, `VOICETRACK_S3_SECRET_KEY`, `VOICETRACK_S3_BUCKET`,
`VOICETRACK_S3_PUBLIC_ENDPOINT` (links are signed for it; without the two keys,
credentials come from the standard AWS chain), each overridable by an option of
the group (`voicetrack recordings --database-url … list`). Plugged into the `voicetrack`
command by `register` (entry point `voicetrack.cli: recordings`, extra `sql`).

MEETING is a meeting id or `namespace/session-name` (the newest meeting of that session).
Failures are one line on stderr with exit code 1; progress bars go to stderr, so stdout
holds only the answer (a table, or JSON with `--json`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from voicetrack.db.engine import DATABASE_URL_ENV, parse_url
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, VoicetrackError
from voicetrack.objectstore import DEFAULT_LINK_S, ObjectStore, S3Settings
from voicetrack.recordings.expiry import parse_expiry
from voicetrack.recordings.live import LiveAudio, download_live, live_audio, live_links
from voicetrack.recordings.models import MeetingDetail, TrackLink
from voicetrack.recordings.service import RecordingsReader
from voicetrack.recordings.text import chunks_cell, hms, reason_cell, show_live, show_text

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True,
                  help="Recorded meetings: list, show, links, verified downloads, Audacity zip.")
PIPE_WIDTH = 240
"""Table width (characters) when stdout is not a terminal and COLUMNS is unset: piped
output keeps ids and reasons on one line instead of folding them at 80 columns."""


def _out_console() -> Console:
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH if piped else None)


out = _out_console()
err = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Settings:
    """Where the history and the audio are (the group's options)."""

    database_url: str | None
    s3_endpoint: str | None
    s3_access_key: str | None
    s3_secret_key: str | None
    bucket: str
    s3_public_endpoint: str | None

    def database(self) -> str:
        """The database URL. InvalidInputError when unset, or for a SQLite file that does
        not exist (the CLI reads a database; it never creates an empty one)."""
        if not self.database_url:
            raise InvalidInputError(f"--database-url / {DATABASE_URL_ENV} is not set")
        url = parse_url(self.database_url)
        if url.get_backend_name() == "sqlite" and not Path(
                str(url.database)).expanduser().is_file():
            raise InvalidInputError(
                f"--database-url: no SQLite database at {url.database}")
        return self.database_url

    def s3(self) -> S3Settings | None:
        """The S3 settings, None when no endpoint is given. Without keys, credentials come
        from the AWS chain (`voicetrack.s3credentials.credentials_provider`), as the
        operator's do. InvalidInputError naming the missing option when keys are given
        without an endpoint, or one key without the other."""
        keys = {"--s3-access-key / VOICETRACK_S3_ACCESS_KEY": self.s3_access_key,
                "--s3-secret-key / VOICETRACK_S3_SECRET_KEY": self.s3_secret_key}
        if not self.s3_endpoint:
            if any(keys.values()):
                raise InvalidInputError("S3 settings incomplete: set --s3-endpoint / "
                                        "VOICETRACK_S3_ENDPOINT")
            return None
        missing = [name for name, value in keys.items() if not value]
        if len(missing) == 1:
            raise InvalidInputError(f"S3 settings incomplete: set {missing[0]}, or neither "
                                    "key to use the AWS credential chain")
        return S3Settings(endpoint=self.s3_endpoint, access_key=self.s3_access_key or "",
                          secret_key=self.s3_secret_key or "", bucket=self.bucket,
                          public_endpoint=self.s3_public_endpoint or None)


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar=DATABASE_URL_ENV, show_envvar=True,
        help="The operator's database (postgresql+psycopg://… or sqlite+aiosqlite:///…).",
    )] = None,
    s3_endpoint: Annotated[str | None, typer.Option(
        "--s3-endpoint", envvar="VOICETRACK_S3_ENDPOINT", show_envvar=True,
        help="S3 endpoint URL (http://host:port).")] = None,
    s3_access_key: Annotated[str | None, typer.Option(
        "--s3-access-key", envvar="VOICETRACK_S3_ACCESS_KEY", show_envvar=True)] = None,
    s3_secret_key: Annotated[str | None, typer.Option(
        "--s3-secret-key", envvar="VOICETRACK_S3_SECRET_KEY", show_envvar=True,
        show_default=False)] = None,
    bucket: Annotated[str, typer.Option(
        "--bucket", envvar="VOICETRACK_S3_BUCKET", show_envvar=True,
        help="The bucket the sessions write to (spec.storage.bucket).")] = "voicetrack",
    s3_public_endpoint: Annotated[str | None, typer.Option(
        "--s3-public-endpoint", envvar="VOICETRACK_S3_PUBLIC_ENDPOINT", show_envvar=True,
        help="The URL people reach S3 at; links are signed for it.")] = None,
) -> None:
    """Recorded meetings and their audio, from the operator's database and S3."""
    ctx.obj = Settings(database_url, s3_endpoint, s3_access_key, s3_secret_key, bucket,
                       s3_public_endpoint)


def _run(ctx: typer.Context, call: Callable[[RecordingsReader], Awaitable[T]],
         s3: bool = True) -> T:
    """Run `call` on a reader built from the group's settings; a Voicetrack error, or an
    OSError of this machine (a full disk, a file too large, no permission on DIR), is one
    line on stderr and exit code 1."""
    settings: Settings = ctx.obj

    async def go() -> T:
        db = RecordingService.from_url(settings.database())
        try:
            s3_settings = settings.s3() if s3 else None
            store = ObjectStore(s3_settings) if s3_settings else None
            return await call(RecordingsReader(db, store))
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except (VoicetrackError, OSError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False)
        raise typer.Exit(1) from e


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


@app.command("list")
def list_meetings(
    ctx: typer.Context,
    guild: Annotated[str | None, typer.Option(
        "--guild", envvar="VOICETRACK_GUILD_ID", help="Only this guild's meetings.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000,
                                       help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Meetings, newest first, with their state and why one failed.

    Start (UTC), duration, speakers, state, session (namespace/name), chunk progress of
    live ones (done/total from temp_recordings), failure reason, and `consent degraded
    (<reason>)` when role opt-outs were not enforced as asked."""
    records = _run(ctx, lambda r: r.list_meetings(guild, limit), s3=False)
    now = datetime.now(UTC)
    if as_json:
        _print_json([r.as_dict(now) for r in records])
        return
    table = Table("MEETING", "STARTED (UTC)", "DURATION", "SPEAKERS", "STATE", "SESSION",
                  "CHUNKS", "REASON")
    for column in table.columns[:-1]:
        column.no_wrap = True
    for r in records:
        duration = hms(r.duration_ms if r.duration_ms is not None else r.elapsed_ms(now))
        table.add_row(r.meeting_id, r.started_at.strftime("%Y-%m-%d %H:%M:%S"), duration,
                      str(len(r.speakers)), r.status, r.session or "-", chunks_cell(r),
                      reason_cell(r))
    out.print(table)


@app.command()
def show(
    ctx: typer.Context,
    meeting: Annotated[str, typer.Argument(help="Meeting id, or namespace/session-name.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
) -> None:
    """A meeting's tracks, sizes, sha256, durations and gaps.

    Each speaker and the mix in every format, with channels; the gaps of its output
    (paused: cut; others: silence) from final/manifest.json. A live meeting also lists its
    audio so far (live tracks with their duration so far)."""

    async def go(reader: RecordingsReader) -> tuple[MeetingDetail, LiveAudio | str | None]:
        detail = await reader.show(meeting)
        if not detail.record.live:
            return detail, None
        try:
            return detail, await live_audio(reader, detail.record.meeting_id)
        except InvalidInputError as e:  # live, nothing assembled yet: said, not an error
            return detail, str(e)

    detail, live = _run(ctx, go)
    now = datetime.now(UTC)
    if as_json:
        doc = detail.as_dict(now)
        if live is not None:
            doc["live"] = live.as_dict() if isinstance(live, LiveAudio) else {"error": live}
        _print_json(doc)
    else:
        show_text(out, detail)
        if live is not None:
            show_live(out, live)


def _expiry(value: str | int) -> int:
    try:
        return parse_expiry(str(value))
    except InvalidInputError as e:
        raise typer.BadParameter(str(e).removeprefix("--expires: ")) from e


@app.command()
def url(
    ctx: typer.Context,
    meeting: Annotated[str, typer.Argument(help="Meeting id, or namespace/session-name.")],
    track: Annotated[str | None, typer.Argument(
        help="A speaker's user id, or mix; all tracks when left out.")] = None,
    expires: Annotated[int, typer.Option(
        "--expires", envvar="VOICETRACK_LINK_EXPIRES", parser=_expiry, metavar="DURATION",
        help="How long the links work: 900, 900s, 15m, 2h, 1d (1 s .. 7 days).",
    )] = DEFAULT_LINK_S,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="mp3, flac or opus; default mp3 when the track has it.")] = None,
    live: Annotated[bool, typer.Option(
        "--live", help="The audio so far of a live meeting (MP3, up to the last chunk "
                       "assembled) instead of the final tracks.")] = False,
) -> None:
    """Presigned download links, minted now and never stored.

    JSON: for TRACK one {url, expires_in_seconds, format}, else one per track keyed by
    track name (user id or mix)."""
    if live and fmt is not None and fmt.lower() != "mp3":
        raise typer.BadParameter(f"the audio so far is MP3 only, not {fmt!r}",
                                 param_hint="--format")

    async def go(reader: RecordingsReader) -> list[TrackLink]:
        if live:
            return (await live_links(reader, meeting, track, expires))[1]
        return await reader.links(meeting, track, fmt, expires)

    links = _run(ctx, go)
    if track is not None:
        _print_json(links[0].as_dict())
    else:
        _print_json({link.track: link.as_dict() for link in links})


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[current]}"), console=err, transient=True)


@app.command()
def download(
    ctx: typer.Context,
    meeting: Annotated[str, typer.Argument(help="Meeting id, or namespace/session-name.")],
    dest: Annotated[Path, typer.Argument(help="Directory to save the tracks in.",
                                         file_okay=False)],
    live: Annotated[bool, typer.Option(
        "--live", help="The audio so far of a live meeting (MP3, up to the last chunk "
                       "assembled), verified by size and S3 ETag.")] = False,
) -> None:
    """Download every track into DEST, each verified against its sha256.

    The sha256 and size are the recordings row's. A file that does not match is not kept
    and is named in the error (exit code 1). With --live, the audio so far instead, as
    <meeting>-live-<track>.mp3: a live track has no sha256 (it grows every interval), so
    each is verified by the live manifest's size and the ETag of the object the live Job
    wrote, and its bytes by their MD5 when the ETag is one (else, multipart or SSE-KMS/C,
    by the track's LAME Info tag CRCs). A track replaced meanwhile is fetched again once
    the live manifest names the new object (up to 60 s); one not fetched (replaced
    again, or S3 failing on it), like a damaged one, is named in the error after the
    others are saved, and so are the files saved."""
    if live:
        _download_live(ctx, meeting, dest)
        return

    async def go(reader: RecordingsReader) -> Any:
        total = len(await reader.tracks(await reader.resolve(meeting)))
        with _bar() as bar:
            task = bar.add_task("downloading", total=total, current="")
            return await reader.download(
                meeting, dest, lambda name: bar.update(task, advance=1, current=name))

    for f in _run(ctx, go):
        note = "verified" if f.verified else "UNVERIFIED (no sha256 in SQL)"
        out.print(f"{f.path}  {f.sha256}  {note}{' (already there)' if f.reused else ''}",
                  markup=False)


def _download_live(ctx: typer.Context, meeting: str, dest: Path) -> None:
    """`download --live`: each file with how it was verified."""
    async def go(reader: RecordingsReader) -> Any:
        with _bar() as bar:
            task = bar.add_task("downloading", total=None, current="")
            return await download_live(
                reader, meeting, dest, lambda name: bar.update(task, advance=1, current=name))

    _, files = _run(ctx, go)
    for f in files:
        out.print(f"{f.path}  live, verified by {f.check}", markup=False)


@app.command("zip")
def zip_bundle(
    ctx: typer.Context,
    meeting: Annotated[str, typer.Argument(help="Meeting id, or namespace/session-name.")],
    out_file: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="The zip to write (default voicetrack-<meeting>.zip).",
    )] = None,
) -> None:
    """An Audacity bundle: equal-length FLAC per track and a .lof project.

    FLAC per speaker and the mix, all from t = 0 and of the output's length; a .lof that
    Audacity opens as one multi-track project; manifest.json; timeline.json when present."""

    async def go(reader: RecordingsReader) -> Any:
        record = await reader.resolve(meeting)
        target = out_file or Path(f"voicetrack-{record.meeting_id}.zip")
        total = len({t.track for t in await reader.tracks(record)})
        with _bar() as bar:
            task = bar.add_task("rendering FLAC", total=total, current="")
            return await reader.bundle(
                record.meeting_id, target,
                lambda name: bar.update(task, advance=1, current=name))

    bundle = _run(ctx, go)
    out.print(f"{bundle.path}  ({len(bundle.members)} files, {hms(bundle.duration_ms)} each "
              "track; open the .lof in Audacity)", markup=False)


def register(root: typer.Typer) -> None:
    """Plug `recordings …` into the `voicetrack` command (entry point
    `voicetrack.cli: recordings`)."""
    root.add_typer(app, name="recordings", help="Recorded meetings and their audio.")


__all__ = ["app", "register"]
