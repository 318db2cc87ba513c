"""``voicetrack local build|up|status|down``, ``voicetrack local discord up|down`` and
``voicetrack demo``: the local harness from
the command line, plugged into the ``voicetrack`` command by :func:`register` (entry point
group ``voicetrack.cli``).

Every option also reads a ``VOICETRACK_*`` variable (``VOICETRACK_STATE_DIR``,
``VOICETRACK_K8S_TIMEOUT``); failures are one-line errors with exit code 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from voicetrack.errors import VoicetrackError
from voicetrack_local import build as k8sbuild
from voicetrack_local import cluster as k8scluster

app = typer.Typer(no_args_is_help=True, help="The local control plane (the embedded default).")

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="VOICETRACK_STATE_DIR",
        help="Where the cluster keeps its state (default ~/.local/state/voicetrack/local).",
        show_default=False,
    ),
]


def _err(msg: str) -> None:
    typer.secho(msg, err=True)


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


@app.command()
def build(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            envvar="VOICETRACK_K8S_FORCE_BUILD",
            help="Rebuild even if the binaries exist.",
        ),
    ] = False,
    regen_gomod: Annotated[
        bool,
        typer.Option(
            "--regen-gomod",
            envvar="VOICETRACK_K8S_REGEN_GOMOD",
            help="Re-derive voicetrack_local/k8s/go.mod from kubernetes' go.mod first.",
        ),
    ] = False,
) -> None:
    """Build etcd, kube-apiserver, kube-controller-manager and kube-scheduler from the Go
    module proxy into ~/.cache/voicetrack/k8s-v<version>/, and helm into
    ~/.cache/voicetrack/helm-v<version>/helm (each reused when present). The Kubernetes
    directory is printed on stdout; helm's path on stderr."""
    try:
        if regen_gomod:
            k8sbuild.regen_gomod(log=_err)
        if not force and k8sbuild.binaries_present():
            typer.echo(f"{k8sbuild.bin_dir()} (already built)")
        else:
            result = k8sbuild.build(force=force, log=_err)
            _err(f"built {', '.join(result.built) or 'nothing'} in {result.seconds:.0f} s")
            typer.echo(str(result.bin_dir))
        _build_helm(force)
    except VoicetrackError as e:
        raise _fail(e) from e


def _build_helm(force: bool) -> None:
    """Build helm (`voicetrack_local.build.build_helm`) unless present; its path to stderr."""
    present = not force and k8sbuild.helm_present()
    path = k8sbuild.build_helm(force=force, log=_err)
    _err(f"helm: {path}{' (already built)' if present else ''}")


@app.command()
def up(
    state_dir: StateDir = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", envvar="VOICETRACK_K8S_TIMEOUT", help="Seconds to wait for readiness."
        ),
    ] = 120,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            envvar="VOICETRACK_NODE_RUNTIME",
            help="How the node runs containers: process (local processes from this checkout, "
            "fast; the default) or podman (each container in its image, `make images`). "
            "Default: the running cluster's.",
            show_default=False,
        ),
    ] = None,
    fake_nodes: Annotated[
        int,
        typer.Option("--fake-nodes", envvar="VOICETRACK_FAKE_NODES", min=0,
                     help="Also run kwok with this many fake Nodes (tainted "
                          "voicetrack.dev/node-pool=kwok:NoSchedule) for scale runs."),
    ] = 0,
    nodes: Annotated[
        int,
        typer.Option("--nodes", envvar="VOICETRACK_NODES", min=1, max=9,
                     help="Real node agents to run, each its own Node (voicetrack-local, "
                          "voicetrack-local-2, ...); the scheduler spreads pods over them."),
    ] = 1,
    kube_api_qps: Annotated[
        float | None,
        typer.Option("--kube-api-qps", envvar="VOICETRACK_KUBE_API_QPS",
                     help="API client QPS of the controller-manager and scheduler "
                          "(default: upstream's 20 and 50)."),
    ] = None,
    kube_api_burst: Annotated[
        int | None,
        typer.Option("--kube-api-burst", envvar="VOICETRACK_KUBE_API_BURST",
                     help="API client burst of the controller-manager and scheduler "
                          "(default: upstream's 30 and 100)."),
    ] = None,
    concurrent_job_syncs: Annotated[
        int | None,
        typer.Option("--concurrent-job-syncs", envvar="VOICETRACK_CONCURRENT_JOB_SYNCS",
                     help="Jobs the controller-manager syncs at once (default: upstream's 5)."),
    ] = None,
) -> None:
    """Start the cluster (build first if needed) or reuse the running one; prints the path
    of the admin kubeconfig."""
    t0 = time.monotonic()
    try:
        c = k8scluster.up(state_dir, timeout=timeout, log=_err, runtime=runtime,
                          fake_nodes=fake_nodes, nodes=nodes,
                          limits=k8scluster.ClientLimits(kube_api_qps, kube_api_burst,
                                                         concurrent_job_syncs))
    except VoicetrackError as e:
        raise _fail(e) from e
    if not c.owned:
        _err(f"local: already running at {c.server}")
    else:
        _err(f"local: up in {time.monotonic() - t0:.1f} s at {c.server}")
    typer.echo(str(c.kubeconfig))


@app.command()
def status(state_dir: StateDir = None) -> None:
    """Show each process of the cluster and whether the API and the node are ready;
    exit code 0 when all runs, 3 otherwise."""
    st = k8scluster.status(state_dir)
    for comp in st.components:
        mark = "running" if comp.alive else "stopped"
        typer.echo(f"{comp.name:<24} {mark:<8} pid {comp.pid or '-':<8} log {comp.log}")
    typer.echo(f"{'api':<24} {'ready' if st.api_ready else 'not ready':<8} {st.server or '-'}")
    typer.echo(f"{'node':<24} {'ready' if st.node_ready else 'not ready'}")
    if st.running:
        typer.echo(f"kubeconfig {st.state_dir / 'kubeconfig'}")
    raise typer.Exit(0 if st.running else 3)


@app.command()
def down(
    state_dir: StateDir = None,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            envvar="VOICETRACK_K8S_PURGE",
            help="Also delete the state directory (etcd data, PKI).",
        ),
    ] = False,
) -> None:
    """Stop every process `up` started in the state directory, and only those."""
    stopped = k8scluster.down(state_dir, purge=purge)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


discord_app = typer.Typer(no_args_is_help=True,
                          help="The local Discord (docs/local-discord.md).")

DISCORD_STATE_DIR = Path.home() / ".local/state/voicetrack/discord"
DiscordStateDir = Annotated[
    Path,
    typer.Option("--state-dir", envvar="VOICETRACK_DISCORD_STATE_DIR",
                 help="Where the local Discord keeps discord.json, its PKI, pid file and log."),
]


@discord_app.command("up")
def discord_up(
    state_dir: DiscordStateDir = DISCORD_STATE_DIR,
    users: Annotated[str, typer.Option("--users", envvar="VOICETRACK_DISCORD_USERS",
                                       help="Member names, comma-separated.")
                     ] = "alice,bob,carol",
) -> None:
    """Start the local Discord in the background (or reuse the running one); prints the
    path of its discord.json."""
    from voicetrack_local.discord import launcher

    try:
        info = launcher.up(state_dir, ["--users", users])
    except VoicetrackError as e:
        raise _fail(e) from e
    typer.echo(str(info))


@discord_app.command("down")
def discord_down(
    state_dir: DiscordStateDir = DISCORD_STATE_DIR,
) -> None:
    """Stop the local Discord started from the state directory, and only it."""
    from voicetrack_local.discord import launcher

    typer.echo("stopped: local-discord" if launcher.down(state_dir) else "nothing was running")


app.add_typer(discord_app, name="discord")


@app.command("web")
def web(
    discord_state_dir: DiscordStateDir = DISCORD_STATE_DIR,
    database_url: Annotated[str, typer.Option("--database-url", envvar="VOICETRACK_DATABASE_URL",
                                              help="The database the page reads.")] = "",
    port: Annotated[int, typer.Option("--port", envvar="VOICETRACK_WEB_PORT")] = 0,
    log: Annotated[Path, typer.Option("--log", help="The web process's log.")
                   ] = Path("out/web.log"),
) -> None:
    """The web page against the local Discord (started when not running), the database and
    S3 of VOICETRACK_S3_*; prints the URL and the log-in link, serves until Ctrl-C."""
    from voicetrack.objectstore import S3Settings
    from voicetrack_local.web import serve

    if not database_url:
        raise typer.BadParameter("give --database-url or VOICETRACK_DATABASE_URL")
    try:
        serve(discord_state_dir, S3Settings.from_env(), database_url, log, port or None,
              echo=typer.echo)
    except (VoicetrackError, RuntimeError) as e:
        raise _fail(e) from e


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
    from voicetrack_local.demo import run_demo

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


def register(root: typer.Typer) -> None:
    """Plug `local …` and `demo` into the `voicetrack` command (entry point
    `voicetrack.cli: local`)."""
    root.add_typer(app, name="local", help="The local control plane (the embedded default).")
    root.command(name="demo")(demo)
