"""The `voicetrack` command: one typer group; every option also reads a VOICETRACK_* variable."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Voicetrack: record Discord voice channels on Kubernetes.")


def _register() -> None:
    from voicetrack.local.cli import app as local_app

    app.add_typer(local_app, name="local", help="The local control plane (the embedded default).")


_register()
