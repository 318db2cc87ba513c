"""`voicetrack-recorder`: the recorder pod's entry point.

Everything comes from the environment the operator's pod manifest sets (each option also
reads its VOICETRACK_* variable); S3 credentials and the bot token come from Secrets.
Exit codes: 0 after a clean stop (SIGTERM, limits, session gone; a SIGTERM before
recording started, while it waits for the API server or S3, is `stopped before start`), 2
for input it cannot record (a bad spec, token, bucket, S3 credentials or channel
permission), 1 for anything else. The pod's restartPolicy OnFailure restarts it after
either (with the kubelet's back-off); a restarted recorder continues at the next chunk
index. Start-up waits for the API server and S3 (retrying without a count limit until
SIGTERM) instead of exiting.

Every exit writes one line to the termination message file (`/dev/termination-log`, or
$VOICETRACK_TERMINATION_LOG; `$TMPDIR/termination-log` when neither can be written): the
reason (`invalid input: storage: AccessDenied: …`) and the chunks acknowledged
(`acknowledged 0-11 (12 chunks, …)`), which the operator shows as the session's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from kubernetes.client import ApiClient
from pydantic import ValidationError

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.names import session_meeting_id
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec
from voicetrack.termination import write_termination_message
from voicetrack.uploadgrant import GRANT_SECRET_ENV, UploadGrant
from voicetrack_recorder.clock import SessionClock, SessionOrigin, session_origin
from voicetrack_recorder.faults import (
    EXIT_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    retry_async,
)
from voicetrack_recorder.files_source import FilesSource
from voicetrack_recorder.grant import RenewingGrantWriter, SecretGrantSource
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.logs import configure_logging
from voicetrack_recorder.recorder import Recorder, Source
from voicetrack_recorder.spool import Spool, spool_settings_from_env
from voicetrack_recorder.uploader import ChunkUploader, GrantWriter, RawWriter

app = typer.Typer(no_args_is_help=True, help="Voicetrack recorder: capture one session.")


def start_pause_watch(kube: RecorderKube) -> threading.Event:
    """Start the session watch thread; returns the event that stops it."""
    stop = threading.Event()
    threading.Thread(target=kube.watch_paused, args=(stop,), daemon=True,
                     name="session-watch").start()
    return stop


def session_layout(spec: SessionSpec, meeting_id: str) -> MeetingLayout:
    """The S3 key layout of the session's meeting (`<prefix>/<guildId>/<meetingId>/…`)."""
    return MeetingLayout(prefix=spec.storage.prefix, guild_id=spec.guild_id,
                         meeting_id=meeting_id)


def meeting_id_of(obj: dict[str, Any]) -> str:
    """The meeting id of session object `obj`: VOICETRACK_MEETING_ID when the operator set
    it in the pod, else the project's one derivation (`session_meeting_id`: the recorded
    `status.meetingId`, else `spec.meetingId`, else from the session's uid), so it is known
    before the session has a status."""
    return os.environ.get("VOICETRACK_MEETING_ID") or session_meeting_id(obj)


async def _storage(spec: SessionSpec, stop: asyncio.Event, api: ApiClient, namespace: str
                   ) -> tuple[ObjectStore | None, RawWriter]:
    """(the store to read from, the writer of raw tracks). With an upload grant
    ($VOICETRACK_S3_UPLOAD_GRANT, the operator's per-session POST policy) raw tracks go
    through it, and S3 keys, when set too (the files source reads its speakers), are
    used only for reading; renewed grants are read through `api` from the Secret that
    `GRANT_SECRET_ENV` names (`voicetrack_recorder.grant`). Without one, the S3 keys do
    both (and the bucket is made)."""
    grant = UploadGrant.from_env()
    keyed = bool(os.environ.get("VOICETRACK_S3_ACCESS_KEY"))
    store = ObjectStore(S3Settings.from_env(bucket=spec.storage.bucket)) \
        if keyed or grant is None else None
    if store is not None:  # its keys are checked at start (a wrong one exits 2 at once)
        await retry_async(lambda: asyncio.to_thread(store.ensure_bucket),
                          f"bucket {spec.storage.bucket}", stop)
    if grant is not None:
        endpoint = os.environ.get("VOICETRACK_S3_ENDPOINT", "")
        if not endpoint:
            raise InvalidInputError("VOICETRACK_S3_ENDPOINT is not set")
        secret = os.environ.get(GRANT_SECRET_ENV)
        return store, (RenewingGrantWriter(endpoint, grant, SecretGrantSource(
            api, namespace, secret)) if secret else GrantWriter(endpoint, grant))
    assert store is not None
    return store, store


def _build_source(spec: SessionSpec, store: ObjectStore | None, clock: SessionClock,
                  recorder: Recorder, origin_slot: int) -> Source:
    if spec.source.type == "files":
        assert store is not None  # checked by _record
        return FilesSource(spec.source.speakers, store, clock, recorder,
                           origin_slot=origin_slot, bitrate_kbps=64)
    from voicetrack_recorder.discord.endpoint import DiscordEndpoint
    from voicetrack_recorder.discord.source import DiscordSource

    token = os.environ.get("VOICETRACK_DISCORD_TOKEN")
    if not token:
        raise InvalidInputError("VOICETRACK_DISCORD_TOKEN is not set (the bot token Secret)")
    return DiscordSource(token=token, guild_id=spec.guild_id, channel_id=spec.channel_id,
                         clock=clock, sink=recorder, endpoint=DiscordEndpoint.from_env(),
                         empty_channel_s=spec.limits.empty_channel_seconds,
                         consent=recorder.consent)


def _parse_spec(obj: dict[str, Any]) -> SessionSpec:
    """The session's spec. Raises InvalidInputError naming the first bad field."""
    try:
        return SessionSpec.model_validate(obj.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(f"spec.{field}: {first['msg']}") from err


@dataclass
class Outcome:
    """What a run leaves for its termination message: why it ended, and its chunks."""

    reason: str = "starting"
    summary: str = "acknowledged - (0 by this run, 0 bytes)"


def _origin(session: dict[str, Any], started_at_ms: int, offset_ms: int | None
            ) -> SessionOrigin:
    """The session's time origin on this node (`clock.session_origin`: `startedAt` on the
    API server's clock, from the session's `creationTimestamp` and `offset_ms`, this
    node's clock minus the API server's), what was corrected logged as warnings."""
    stamp = str(session["metadata"].get("creationTimestamp") or "")
    try:
        created = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except ValueError:
        created = None
    origin = session_origin(started_at_ms, created, offset_ms)
    for note in origin.notes:
        logging.getLogger(__name__).warning("session clock: %s", note)
    return origin


STOPPED_BEFORE_START = "stopped before start"
"""The termination reason of a recorder stopped (SIGTERM: its pod deleted) before it began
recording: nothing recorded, exit 0."""


@dataclass
class Prepared:
    """What `_prepare` readies for a run: the recorder (its first window open unless
    paused), what it records from, and the session watch's stop event."""

    recorder: Recorder
    source: Source
    watch_stop: threading.Event


async def _prepare(api: ApiClient, kube: RecorderKube, namespace: str, session: str,
                   started_at_ms: int, stop: asyncio.Event, outcome: Outcome) -> Prepared:
    """Read the session, reach storage, build the spool, uploader, clock and recorder,
    continue after the session's chunks (`Recorder.prepare`) and build the source;
    `outcome.summary` is set when it fails after the uploader exists.
    Raises TemporaryFailure when `stop` is set while it waits for the API server or S3,
    InvalidInputError for a session it cannot record."""
    obj = await retry_async(lambda: asyncio.to_thread(kube.get_session),
                            "get RecordingSession", stop)
    spec = _parse_spec(obj)
    layout = session_layout(spec, meeting_id_of(obj))
    store, writer = await _storage(spec, stop, api, namespace)
    root, max_bytes = spool_settings_from_env(session)
    spool = Spool(root, max_bytes, layout, session, spec.storage.raw_format)
    uploader = ChunkUploader(writer, kube, spool, obj["metadata"]["uid"])
    session_t0 = _origin(obj, started_at_ms, kube.clock_offset_ms)
    clock = SessionClock(session_t0.t0_ms, offset_ms=session_t0.measured_ms)
    kube.paused = bool(spec.paused)
    watch_stop = start_pause_watch(kube)
    recorder = Recorder(kube, uploader, spec, clock)
    recorder.stop = stop
    try:
        origin = await recorder.prepare()
        if store is None and spec.source.type == "files":
            raise InvalidInputError("the files source reads its speakers from S3: "
                                    "VOICETRACK_S3_ACCESS_KEY/SECRET_KEY are not set")
        source = _build_source(spec, store, clock, recorder, origin)
    except BaseException:
        watch_stop.set()
        outcome.summary = uploader.stats.summary()  # acks of earlier runs in this pod
        if stop.is_set() and spool.adopted:
            logging.getLogger(__name__).warning(
                "stopped before start: %d chunk(s) a previous run left in the spool are "
                "not uploaded", len(spool.adopted))
        raise
    return Prepared(recorder, source, watch_stop)


async def _record(namespace: str, session: str, started_at_ms: int, outcome: Outcome) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = load_api_client()
    kube = RecorderKube(api, namespace, session)
    try:
        ready = await _prepare(api, kube, namespace, session, started_at_ms, stop, outcome)
    except TemporaryFailure:
        if not stop.is_set():
            raise
        # SIGTERM while waiting for the API server or S3 (the session, the bucket, the
        # session's chunks): the pod is deleted before it recorded anything. Before, the
        # wait for the chunk list ended in exit 1 (a failed container, an alert).
        outcome.reason = STOPPED_BEFORE_START
        logging.getLogger(__name__).info(
            "stopped before recording started (SIGTERM while preparing): nothing recorded")
        return EXIT_OK
    recorder, source = ready.recorder, ready.source
    try:
        result = await recorder.run(source)
    finally:
        ready.watch_stop.set()
        outcome.summary = recorder.uploader.stats.summary()
    degraded = getattr(source, "degraded", None)  # e.g. GUILD_MEMBERS refused (4014)
    outcome.reason = f"{result.reason} ({degraded})" if degraded else result.reason
    logging.getLogger(__name__).info("done: %s; %s", result, outcome.summary)
    if result.error is not None:  # the open chunk is flushed; now fail the pod
        raise result.error
    return EXIT_OK


@app.command()
def run(
    namespace: str = typer.Option(..., envvar="VOICETRACK_NAMESPACE"),
    session: str = typer.Option(..., envvar="VOICETRACK_SESSION_NAME"),
    started_at_ms: int = typer.Option(..., envvar="VOICETRACK_SESSION_STARTED_AT_MS",
                                      help="Session start, Unix ms (status.startedAt)."),
    log_level: str = typer.Option("INFO", envvar="VOICETRACK_LOG_LEVEL"),
) -> None:
    """Record session SESSION in NAMESPACE until SIGTERM."""
    configure_logging(log_level)
    outcome = Outcome()
    try:
        code = asyncio.run(_record(namespace, session, started_at_ms, outcome))
        message = f"{outcome.reason}: {outcome.summary}"
    except InvalidInputError as err:
        message = f"invalid input: {err}; {outcome.summary}"
        code = EXIT_INVALID_INPUT
    except Exception as err:  # the pod restarts and continues at the next index
        message = f"failed: {type(err).__name__}: {err}; {outcome.summary}"
        code = EXIT_FAILED
    if code != EXIT_OK:
        print(f"error: {message}", file=sys.stderr)
    path = write_termination_message(message)
    logging.getLogger(__name__).info("termination message (%s): %s", path, message)
    raise typer.Exit(code)


@app.command()
def bot(
    token: str = typer.Option(..., envvar="VOICETRACK_DISCORD_TOKEN", show_default=False,
                              help="Discord bot token (from a Secret)."),
    namespace: str = typer.Option(..., envvar="VOICETRACK_NAMESPACE",
                                  help="Namespace of the RecordingSessions."),
    roles: str = typer.Option("", envvar="VOICETRACK_BOT_ROLES",
                              help="Comma-separated role ids that may start/stop/pause/resume "
                                   "(besides Manage Server)."),
    everyone: bool = typer.Option(False, envvar="VOICETRACK_BOT_EVERYONE",
                                  help="Let every member start/stop/pause/resume."),
    spec_defaults: str = typer.Option("", envvar="VOICETRACK_BOT_SPEC_DEFAULTS",
                                      help="JSON partial RecordingSession spec for new "
                                           "sessions, e.g. '{\"chunkSeconds\": 30}'."),
    allowed_guilds: str = typer.Option("", envvar="VOICETRACK_BOT_GUILDS",
                                       help="Comma-separated guild ids the bot serves "
                                            "(default: every guild)."),
    follow_seconds: float = typer.Option(13 * 60, envvar="VOICETRACK_BOT_FOLLOW_SECONDS",
                                         min=0, max=14 * 60,
                                         help="How long /record stop edits its reply while "
                                              "the promotion runs (the token lasts 15 min)."),
    sync_guilds: str = typer.Option("", envvar="VOICETRACK_BOT_SYNC_GUILDS",
                                    help="Comma-separated guild ids to sync /record to "
                                         "(instant); default: global sync."),
    kubeconfig: str = typer.Option("", envvar="KUBECONFIG",
                                   help="Kubeconfig path (default: in-cluster)."),
    log_level: str = typer.Option("INFO", envvar="VOICETRACK_LOG_LEVEL"),
) -> None:
    """Run the Discord bot: /record start|stop|pause|resume|status|list|get (docs/bot.md)."""
    import json

    from voicetrack_recorder.bot.access import ControlPolicy, GuildAllowList
    from voicetrack_recorder.bot.app import RecordCommands
    from voicetrack_recorder.bot.archive import MeetingArchive
    from voicetrack_recorder.bot.client import VoicetrackBot
    from voicetrack_recorder.bot.sessions import BotSessions
    from voicetrack_recorder.bot.sessionspec import check_spec_defaults
    from voicetrack_recorder.discord.endpoint import DiscordEndpoint

    configure_logging(log_level)
    try:
        try:
            parsed = json.loads(spec_defaults or "{}")
        except ValueError as err:
            raise InvalidInputError(f"VOICETRACK_BOT_SPEC_DEFAULTS is not JSON: {err}"
                                    ) from err
        defaults = check_spec_defaults(parsed)
        policy = ControlPolicy.parse(roles, everyone)
        allowed = GuildAllowList.parse(allowed_guilds)
        archive = MeetingArchive.from_env(defaults)
        guilds = [int(g) for g in (p.strip() for p in sync_guilds.split(",")) if g]
        bad = [g for g in guilds if not 15 <= len(str(g)) <= 20]
        if bad:
            raise InvalidInputError(f"VOICETRACK_BOT_SYNC_GUILDS: {bad[0]} is not a guild id")
        endpoint = DiscordEndpoint.from_env()
        sessions = BotSessions(load_api_client(kubeconfig or None), namespace,
                               spec_defaults=defaults)
    except ValueError as err:
        print(f"error: VOICETRACK_BOT_SYNC_GUILDS: {err}", file=sys.stderr)
        raise typer.Exit(2) from err
    except InvalidInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2) from err

    async def serve() -> None:
        endpoint.apply()  # before the client exists; its connector inside the loop
        bot = VoicetrackBot(RecordCommands(sessions, policy, archive=archive,
                                           guilds=allowed, follow_s=follow_seconds), guilds,
                            connector=endpoint.connector())
        async with bot:
            await bot.start(token)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@app.command()
def version() -> None:
    """Print the recorder's version."""
    from voicetrack import __version__

    print(__version__)
