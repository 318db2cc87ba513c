"""The `voicetrack` command: one typer group; every option also reads a VOICETRACK_* variable."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True,
                  help="Voicetrack: record Discord voice channels on Kubernetes.")


def _register() -> None:
    from voicetrack.local.cli import app as local_app

    app.add_typer(local_app, name="local", help="The local control plane (the embedded default).")


_register()


@app.command()
def demo(
    audio: list[Path] = typer.Option([], "--audio", envvar="VOICETRACK_DEMO_AUDIO",
                                     exists=True, dir_okay=False,
                                     help="One audio file per speaker (any format ffmpeg "
                                          "reads); default: three espeak-ng voices."),
    offset_ms: list[int] = typer.Option([], "--offset-ms", envvar="VOICETRACK_DEMO_OFFSETS",
                                        help="Start of each speaker in session time (ms)."),
    out: Path = typer.Option(Path("out/demo"), "--out", envvar="VOICETRACK_DEMO_OUT",
                             file_okay=False, help="Where final tracks and manifest go."),
    postgres: bool = typer.Option(False, "--postgres/--sqlite", envvar="VOICETRACK_DEMO_POSTGRES",
                                  help="PostgreSQL server instead of a SQLite file."),
    pause: bool = typer.Option(True, "--pause/--no-pause", envvar="VOICETRACK_DEMO_PAUSE",
                               help="Pause and resume once while recording."),
    chunk_seconds: int = typer.Option(5, "--chunk-seconds", min=5, max=300,
                                      envvar="VOICETRACK_DEMO_CHUNK_SECONDS"),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="VOICETRACK_STATE_DIR",
                                          help="Local cluster state directory."),
    keep_cluster: bool = typer.Option(False, "--keep-cluster",
                                      envvar="VOICETRACK_DEMO_KEEP_CLUSTER",
                                      help="Leave a cluster this demo started running."),
) -> None:
    """Run the main job end to end on the local cluster and write the results to OUT."""
    from voicetrack.demo import run_demo

    if offset_ms and len(offset_ms) != len(audio):
        raise typer.BadParameter("give one --offset-ms per --audio", param_hint="--offset-ms")
    try:
        manifest = run_demo(audio, offset_ms, out, postgres=postgres, pause=pause,
                            chunk_seconds=chunk_seconds, state_dir=state_dir,
                            keep=keep_cluster)
    except Exception as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from err
    typer.echo(str(manifest))
