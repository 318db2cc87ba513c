"""The local cluster's state directory and how to probe what runs from it: the process
records ``up`` wrote, ``cluster.json``, component logs, and HTTPS checks of the apiserver
and the Node (the layout is in :mod:`voicetrack_local.cluster`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voicetrack.errors import VoicetrackError
from voicetrack_local.pki import Pki
from voicetrack_local.procs import ProcRecord

NODE_NAME = "voicetrack-local"
"""Name of the first Node (the only one by default); node N > 1 is ``voicetrack-local-N``."""
MAX_NODES = 9
"""Most node agents ``up(nodes=...)`` starts."""

#: stop order: the agent first (it stops the pods), etcd last.
COMPONENTS = ("node-agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")

#: components started only on request (``up(fake_nodes=N)``), stopped before the others
OPTIONAL_COMPONENTS = ("kwok",)


class ClusterError(VoicetrackError):
    """The local control plane could not be started or reached (message says which part,
    with the tail of its log)."""


def default_state_dir() -> Path:
    """``$VOICETRACK_STATE_DIR`` or ``$XDG_STATE_HOME/voicetrack/local``
    (``~/.local/state/voicetrack/local``)."""
    env = os.environ.get("VOICETRACK_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return (base / "voicetrack" / "local").resolve()


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock (``state_dir/lock``, flock) for the block."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ssl_context(pki: Pki) -> ssl.SSLContext:
    """A client TLS context trusting the cluster CA, authenticating as the admin."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.crt))
    ctx.load_cert_chain(str(pki.admin.crt), str(pki.admin.key))
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2) -> tuple[int, bytes]:
    """GET ``url``; returns (HTTP status, body), or ``(0, b"")`` when nothing answered."""
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a component log, or ``(no log)``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pid_file(state_dir: Path, name: str) -> Path:
    """Where the process record of component ``name`` is kept."""
    return state_dir / "pids" / f"{name}.json"


def records(state_dir: Path) -> dict[str, ProcRecord]:
    """The recorded processes of the components (:data:`COMPONENTS`,
    :data:`OPTIONAL_COMPONENTS` and the node agents 2.., :func:`extra_agents`) by name."""
    out: dict[str, ProcRecord] = {}
    for name in (*OPTIONAL_COMPONENTS, *extra_agents(), *COMPONENTS):
        rec = ProcRecord.load(pid_file(state_dir, name))
        if rec:
            out[name] = rec
    return out


def node_name(index: int) -> str:
    """The Node that agent ``index`` (1-based) registers: :data:`NODE_NAME`, then
    ``voicetrack-local-2``, ..."""
    return NODE_NAME if index == 1 else f"{NODE_NAME}-{index}"


def agent_component(index: int) -> str:
    """The process name of node agent ``index`` (``node-agent``, ``node-agent-2``, ...)."""
    return "node-agent" if index == 1 else f"node-agent-{index}"


def kubelet_port_key(index: int) -> str:
    """The key of agent ``index``'s kubelet endpoint port in ``cluster.json`` ports."""
    return "kubelet" if index == 1 else f"kubelet_{index}"


def agent_dir(state_dir: Path, index: int) -> Path:
    """Node-local state of agent ``index``: ``agent/`` for the first node (as it always
    was), ``agent/nodes/<node>/`` for the others (each holds ``pods/``)."""
    base = state_dir / "agent"
    return base if index == 1 else base / "nodes" / node_name(index)


def node_count(state_dir: Path) -> int:
    """How many node agents the cluster in ``state_dir`` runs (``cluster.json``; 1)."""
    return int(read_config(state_dir).get("nodes", 1))


def extra_agents() -> tuple[str, ...]:
    """The process names of node agents 2..:data:`MAX_NODES`, stopped with the first."""
    return tuple(agent_component(i) for i in range(2, MAX_NODES + 1))


def pod_records(state_dir: Path) -> list[ProcRecord]:
    """The recorded container processes of every node agent's pods."""
    agent = state_dir / "agent"
    paths = [*agent.glob("pods/*/pids/*.json"), *agent.glob("nodes/*/pods/*/pids/*.json")]
    return [r for r in (ProcRecord.load(p) for p in paths) if r]


def read_config(state_dir: Path) -> dict[str, Any]:
    """``cluster.json`` (version, node, ports), or {} when missing or unreadable."""
    try:
        return dict(json.loads((state_dir / "cluster.json").read_text()))
    except (OSError, ValueError):
        return {}


def node_ready(server: str, ctx: ssl.SSLContext, node: str) -> bool:
    """True when Node ``node`` has Ready=True and neither the not-ready nor the
    unreachable taint."""
    code, body = http_get(f"{server}/api/v1/nodes/{node}", ctx)
    if code != 200:
        return False
    obj = json.loads(body)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )
    tainted = any(  # what the node lifecycle controller sets while Ready is False / Unknown
        t.get("key") in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
        for t in obj.get("spec", {}).get("taints") or []
    )
    return ready and not tainted
