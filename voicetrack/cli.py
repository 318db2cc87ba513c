"""The `voicetrack` command: one typer group; every option also reads a VOICETRACK_* variable.

Sub-commands that live in optional components (the local harness's `local` group and
`demo`) or need an optional extra (`recordings`, the meeting history and its audio, needs
`sql`) are plugged in through the `voicetrack.cli` entry-point group, so this package never
imports them (the import contract) and the command still works where they are not
installed: each entry point names a function `register(app: typer.Typer) -> None` and the
extra it needs (`voicetrack_local.cli:register [local]`,
`voicetrack.recordings.cli:register [sql]`); it is skipped unless every distribution of
that extra is installed.
"""

from __future__ import annotations

import logging
import re
from importlib.metadata import PackageNotFoundError, distribution, entry_points, requires

import typer

from voicetrack.healthcheck import check
from voicetrack.uninstall import uninstall_cleanup

app = typer.Typer(no_args_is_help=True,
                  help="Voicetrack: record Discord voice channels on Kubernetes.")

PLUGIN_GROUP = "voicetrack.cli"
log = logging.getLogger(__name__)


def register_plugins(target: typer.Typer, group: str = PLUGIN_GROUP) -> list[str]:
    """Add every installed plugin's commands to `target`. A plugin whose dependencies are
    not installed (its extra was not chosen) is skipped. Returns the names registered."""
    names = []
    for ep in entry_points(group=group):
        missing = missing_requirements(ep.extras)
        if missing:
            log.debug("voicetrack: plugin %s needs %s", ep.name, ", ".join(missing))
            continue
        try:
            register = ep.load()
        except ImportError as err:  # e.g. `voicetrack_local` without the `local` extra
            log.debug("voicetrack: plugin %s unavailable: %s", ep.name, err)
            continue
        register(target)
        names.append(ep.name)
    return names


def missing_requirements(extras: list[str], dist: str = "voicetrack") -> list[str]:
    """The distributions that `dist`'s `extras` require and that are not installed (the
    project's own self-references, `voicetrack[...]`, are not followed)."""
    missing = []
    for req in requires(dist) or []:
        name, _, marker = req.partition(";")
        if not any(re.search(rf"extra\s*==\s*[\"']{re.escape(e)}[\"']", marker) for e in extras):
            continue
        match = re.match(r"\s*([A-Za-z0-9._-]+)", name)
        if match is None or match.group(1).lower() == dist:
            continue
        try:
            distribution(match.group(1))
        except PackageNotFoundError:
            missing.append(match.group(1))
    return missing


@app.command()
def version() -> None:
    """Print Voicetrack's version and the optional commands installed here."""
    from importlib.metadata import version as dist_version

    try:
        v = dist_version("voicetrack")
    except PackageNotFoundError:  # run from a checkout without installing
        v = "unknown"
    plugins = sorted(ep.name for ep in entry_points(group=PLUGIN_GROUP))
    typer.echo(f"voicetrack {v} (plugins declared: {', '.join(plugins) or 'none'})")


app.command("check")(check)
app.command("uninstall-cleanup")(uninstall_cleanup)
register_plugins(app)
