"""`voicetrack-recorder`: the recorder pod's entry point.

Everything comes from the environment the operator's pod manifest sets (each option also
reads its VOICETRACK_* variable); S3 credentials and the bot token come from Secrets.
Exit codes: 0 after a clean stop (SIGTERM, limits, session gone), 2 for input it cannot
record (a bad spec or token: the error line says which), 1 for anything else. The pod's
restartPolicy OnFailure restarts it after either (with the kubelet's back-off); a restarted
recorder continues at the next chunk index.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import typer

from voicetrack.errors import InvalidInputError
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.files_source import FilesSource
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import (
    Recorder,
    Source,
    meeting_id_of,
    session_layout,
    start_pause_watch,
)
from voicetrack_recorder.uploader import ChunkUploader

app = typer.Typer(no_args_is_help=True, help="Voicetrack recorder: capture one session.")


def _build_source(spec: SessionSpec, store: ObjectStore, clock: SessionClock,
                  recorder: Recorder, origin_slot: int) -> Source:
    if spec.source.type == "files":
        return FilesSource(spec.source.speakers, store, clock, recorder,
                           origin_slot=origin_slot, bitrate_kbps=64)
    from voicetrack_recorder.discord.source import DiscordSource

    token = os.environ.get("VOICETRACK_DISCORD_TOKEN")
    if not token:
        raise InvalidInputError("VOICETRACK_DISCORD_TOKEN is not set (the bot token Secret)")
    return DiscordSource(token=token, guild_id=spec.guild_id, channel_id=spec.channel_id,
                         clock=clock, sink=recorder)


async def _record(namespace: str, session: str, started_at_ms: int) -> int:
    kube = RecorderKube(load_api_client(), namespace, session)
    obj = await asyncio.to_thread(kube.get_session)
    spec = SessionSpec.model_validate(obj["spec"])
    layout = session_layout(spec, meeting_id_of(obj))
    store = ObjectStore(S3Settings.from_env(bucket=spec.storage.bucket))
    await asyncio.to_thread(store.ensure_bucket)
    uploader = ChunkUploader(store, kube, layout, session, obj["metadata"]["uid"],
                             spec.storage.raw_format)
    clock = SessionClock(started_at_ms)
    kube.paused = bool(spec.paused)
    watch_stop = start_pause_watch(kube)
    recorder = Recorder(kube, uploader, spec, clock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, recorder.stop.set)
    try:
        origin = await recorder.prepare()
        result = await recorder.run(_build_source(spec, store, clock, recorder, origin))
    finally:
        watch_stop.set()
    logging.getLogger(__name__).info("done: %s", result)
    if result.error is not None:  # the open chunk is flushed; now fail the pod
        raise result.error
    return 0


@app.command()
def run(
    namespace: str = typer.Option(..., envvar="VOICETRACK_NAMESPACE"),
    session: str = typer.Option(..., envvar="VOICETRACK_SESSION_NAME"),
    started_at_ms: int = typer.Option(..., envvar="VOICETRACK_SESSION_STARTED_AT_MS",
                                      help="Session start, Unix ms (status.startedAt)."),
    log_level: str = typer.Option("INFO", envvar="VOICETRACK_LOG_LEVEL"),
) -> None:
    """Record session SESSION in NAMESPACE until SIGTERM."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = asyncio.run(_record(namespace, session, started_at_ms))
    except InvalidInputError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except Exception as err:  # the pod restarts and continues at the next index
        print(f"error: {err}", file=sys.stderr)
        code = 1
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
    sync_guilds: str = typer.Option("", envvar="VOICETRACK_BOT_SYNC_GUILDS",
                                    help="Comma-separated guild ids to sync /record to "
                                         "(instant); default: global sync."),
    kubeconfig: str = typer.Option("", envvar="KUBECONFIG",
                                   help="Kubeconfig path (default: in-cluster)."),
    log_level: str = typer.Option("INFO", envvar="VOICETRACK_LOG_LEVEL"),
) -> None:
    """Run the Discord bot: /record start|stop|pause|resume|status (docs/bot.md)."""
    import json

    from voicetrack_recorder.bot.app import ControlPolicy, RecordCommands, VoicetrackBot
    from voicetrack_recorder.bot.sessions import BotSessions, check_spec_defaults

    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            parsed = json.loads(spec_defaults or "{}")
        except ValueError as err:
            raise InvalidInputError(f"VOICETRACK_BOT_SPEC_DEFAULTS is not JSON: {err}"
                                    ) from err
        defaults = check_spec_defaults(parsed)
        policy = ControlPolicy.parse(roles, everyone)
        guilds = [int(g) for g in (p.strip() for p in sync_guilds.split(",")) if g]
        bad = [g for g in guilds if not 15 <= len(str(g)) <= 20]
        if bad:
            raise InvalidInputError(f"VOICETRACK_BOT_SYNC_GUILDS: {bad[0]} is not a guild id")
        sessions = BotSessions(load_api_client(kubeconfig or None), namespace,
                               spec_defaults=defaults)
    except ValueError as err:
        print(f"error: VOICETRACK_BOT_SYNC_GUILDS: {err}", file=sys.stderr)
        raise typer.Exit(2) from err
    except InvalidInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2) from err
    VoicetrackBot(RecordCommands(sessions, policy), guilds).run(token, log_handler=None)


@app.command()
def version() -> None:
    """Print the recorder's version."""
    from voicetrack import __version__

    print(__version__)
