"""Kubeconfig files for the local cluster's users (admin, controller-manager, scheduler)
and for each pod's ServiceAccount (written by the node agent)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    *,
    user: str,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a one-context kubeconfig (certificates embedded as base64) to ``path``
    (mode 0600) and return ``path``.  Give either ``cert``+``key`` or ``token``."""
    creds: dict[str, Any] = {}
    if cert and key:
        creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        creds["token"] = token
    ctx: dict[str, Any] = {"cluster": "voicetrack-local", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "voicetrack-local",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "voicetrack-local", "context": ctx}],
        "current-context": "voicetrack-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
