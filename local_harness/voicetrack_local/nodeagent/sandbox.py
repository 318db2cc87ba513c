"""A pod's sandbox on this host: its private directory ``<state>/agent/pods/<ns>_<name>_<uid>/``
(``tmp/``, ``logs/``, ``pids/``, ``termination/``, ``volumes/``), its ServiceAccount token
and kubeconfig, its volumes, and the environment every container of the pod starts from."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicetrack_local.kubeconfig import write_kubeconfig
from voicetrack_local.nodeagent.kube import Kube
from voicetrack_local.nodeagent.podspec import Objects, Refs
from voicetrack_local.nodeagent.volumes import (
    claim_names,
    plan_volumes,
    volume_refs,
    write_volumes,
)

#: variables of the agent's own environment that every container inherits; PYTHONPATH so
#: that the pods of a checkout run on its path (a git worktree beside the editable install)
#: run that checkout's code, as the agent and the tests do, not the installed one's
INHERITED_ENV = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "PYTHONPATH")


def fetch_objects(kube: Kube, ns: str, refs: Refs) -> tuple[Objects, Objects]:
    """Read the Secrets and ConfigMaps ``refs`` names in namespace ``ns``; returns
    ``(secrets, configmaps)``, each name → object, or None when it does not exist.

    Raises:
        RuntimeError: the API answered with an error other than 404 (connection errors
            propagate as urllib3 exceptions)."""
    base = f"/api/v1/namespaces/{ns}"
    return (
        {n: kube.get(f"{base}/secrets/{n}") for n in sorted(refs.secrets)},
        {n: kube.get(f"{base}/configmaps/{n}") for n in sorted(refs.configmaps)},
    )


def fetch_claims(kube: Kube, ns: str, names: set[str]) -> tuple[Objects, Objects]:
    """Read the PersistentVolumeClaims ``names`` in ``ns`` and the PersistentVolumes they are
    bound to; returns ``(claims, volumes)``, each name → object, or None when missing.

    Raises:
        RuntimeError: the API answered with an error other than 404."""
    claims = {n: kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{n}") for n in names}
    bound = {((c or {}).get("spec") or {}).get("volumeName") for c in claims.values()}
    pvs = {v: kube.get(f"/api/v1/persistentvolumes/{v}") for v in sorted(n for n in bound if n)}
    return claims, pvs


def prepare_sandbox(
    pod: dict[str, Any],
    pod_dir: Path,
    kube: Kube,
    *,
    server: str,
    ca_pem: bytes,
    pod_token: Callable[[dict[str, Any]], str],
) -> dict[str, str]:
    """Create ``pod_dir`` (mode 0700) with its sub-directories, the pod's token and
    kubeconfig (unless ``automountServiceAccountToken`` is false) and its volumes; return
    the pod-wide environment: ``PATH`` (this Python's ``bin`` first, where the
    ``voicetrack-*`` console scripts are), ``HOME`` (``pod_dir``), ``HOSTNAME``,
    ``PYTHONUNBUFFERED``, ``KUBECONFIG`` and :data:`INHERITED_ENV`.

    Args:
        server: the apiserver URL; ``ca_pem``: the cluster CA.
        pod_token: mints the pod's ServiceAccount token.

    Raises:
        ConfigError: a missing ServiceAccount, Secret, ConfigMap or key (retried later)."""
    spec = pod["spec"]
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    for sub in ("tmp", "logs", "pids", "volumes", "termination"):
        (pod_dir / sub).mkdir(parents=True, exist_ok=True)
    pod_dir.chmod(0o700)
    token: str | None = None
    if spec.get("automountServiceAccountToken") is not False:
        token = pod_token(pod)
        (pod_dir / "ca.crt").write_bytes(ca_pem)
        sa_name = spec.get("serviceAccountName") or "default"
        write_kubeconfig(
            pod_dir / "kubeconfig",
            server,
            pod_dir / "ca.crt",
            user=f"system:serviceaccount:{ns}:{sa_name}",
            token=token,
            namespace=ns,
        )
    secrets, configmaps = fetch_objects(kube, ns, volume_refs(pod))
    pvcs, pvs = fetch_claims(kube, ns, claim_names(pod))
    plan = plan_volumes(pod, token, secrets, configmaps, pvcs, pvs)
    write_volumes(plan, pod_dir / "volumes")
    venv_bin = str(Path(sys.executable).parent)
    base = {
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
        "HOME": str(pod_dir),
        "HOSTNAME": name,
        "PYTHONUNBUFFERED": "1",
    }
    base.update({k: os.environ[k] for k in INHERITED_ENV if k in os.environ})
    if token is not None:
        base["KUBECONFIG"] = str(pod_dir / "kubeconfig")
    return base


def read_tail(path: Path, limit: int) -> bytes | None:
    """The last ``limit`` bytes of ``path`` (a log, a termination-message file), None when
    it does not exist."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
            return fh.read()
    except FileNotFoundError:
        return None
