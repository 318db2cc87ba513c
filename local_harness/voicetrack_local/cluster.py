"""The local Kubernetes control plane: upstream etcd, kube-apiserver, kube-controller-manager
and kube-scheduler (built by :mod:`voicetrack_local.build`) plus our node agent
(:mod:`voicetrack_local.nodeagent`), all as background processes on 127.0.0.1.

State directory layout (``$VOICETRACK_STATE_DIR``, default
``$XDG_STATE_HOME/voicetrack/local`` i.e. ``~/.local/state/voicetrack/local``)::

    kubeconfig          admin kubeconfig (system:masters), what `up` prints
    cluster.json        version, node name and ports (kept stable across restarts)
    pki/                CA, serving/client certs, service-account key pair (see pki.py)
    etcd/               etcd data
    kubeconfigs/        controller-manager, scheduler and node-agent kubeconfigs
    pids/<name>.json    every process `up` started (pid + start time), what `down` stops
    logs/<name>.log     their stdout/stderr
    agent/pods/...      the node agent's per-pod directories (see the nodeagent package)
    agent/nodes/<node>/pods/...  the same of node agents 2.. (``up(nodes=N)``)
    agent/pod-ips/<ip>  the pod IPs every node agent holds (``nodeagent.podips``)
    volumes/pv-NN/      the static hostPath PersistentVolumes `up` makes (:func:`static_volumes`)

Usage: ``up(state_dir) -> LocalCluster`` (reuses a running cluster), ``cluster.stop()`` /
``down(state_dir)``, ``status(state_dir)``.  The components' command lines and start-up
order are in :mod:`voicetrack_local.control_plane`, the state directory's probes in
:mod:`voicetrack_local.state`, kubeconfig files in :mod:`voicetrack_local.kubeconfig`.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetrack_local import build as k8sbuild
from voicetrack_local import kwok
from voicetrack_local.control_plane import SA_ISSUER, ClientLimits, start_all, start_fake_nodes
from voicetrack_local.kubeconfig import write_kubeconfig
from voicetrack_local.kubectl import kubectl
from voicetrack_local.nodeagent.agent import RUNTIME_FILE, RUNTIMES, read_runtime
from voicetrack_local.pki import ensure_pki
from voicetrack_local.procs import terminate
from voicetrack_local.state import (
    COMPONENTS,
    MAX_NODES,
    NODE_NAME,
    OPTIONAL_COMPONENTS,
    ClusterError,
    default_state_dir,
    extra_agents,
    http_get,
    locked,
    node_count,
    node_name,
    node_ready,
    pid_file,
    pod_records,
    read_config,
    records,
    ssl_context,
)

__all__ = [
    "NODE_NAME",
    "SA_ISSUER",
    "ClientLimits",
    "ClusterError",
    "ClusterStatus",
    "ComponentStatus",
    "LocalCluster",
    "default_state_dir",
    "down",
    "status",
    "up",
    "write_kubeconfig",
]


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster.

    Attributes:
        state_dir: its state directory (layout in the module docstring).
        kubeconfig: admin kubeconfig (``state_dir/kubeconfig``; user in system:masters).
        server: the apiserver URL, ``https://127.0.0.1:<port>``.
        node_name: the first Node (the only one unless ``up(nodes=N)``).
        nodes: how many node agents (Nodes ``voicetrack-local``, ``voicetrack-local-2``, ...)
        owned: True when this object started the processes (``stop`` then stops them);
            False for a cluster found already running (``stop`` leaves it running unless
            ``force``).
    """

    state_dir: Path
    kubeconfig: Path
    server: str
    node_name: str = NODE_NAME
    owned: bool = True
    nodes: int = 1

    @property
    def node_names(self) -> list[str]:
        """Every Node an agent of this cluster registers."""
        return [node_name(i) for i in range(1, self.nodes + 1)]

    def stop(self, *, force: bool = False) -> list[str]:
        """Stop every process of this cluster (see :func:`down`) if ``owned`` or ``force``;
        returns the names of the processes stopped."""
        if not (self.owned or force):
            return []
        return down(self.state_dir)

    def kubectl_args(self) -> list[str]:
        """``[<venv kubectl>, "--kubeconfig", <kubeconfig>]`` for subprocess calls."""
        from voicetrack_local.kubectl import kubectl_path

        return [str(kubectl_path()), "--kubeconfig", str(self.kubeconfig)]


@dataclass
class ComponentStatus:
    """One process of the cluster: name, pid, whether it still runs, its log file."""

    name: str
    pid: int | None
    alive: bool
    log: Path


@dataclass
class ClusterStatus:
    """What :func:`status` reports: components, API readiness, node readiness."""

    state_dir: Path
    components: list[ComponentStatus] = field(default_factory=list)
    server: str | None = None
    api_ready: bool = False
    node_ready: bool = False

    @property
    def running(self) -> bool:
        """True when every component runs, the API is ready and the node is Ready."""
        return (
            bool(self.components)
            and all(c.alive for c in self.components)
            and self.api_ready
            and self.node_ready
        )


def status(state_dir: Path | None = None) -> ClusterStatus:
    """Report the cluster in ``state_dir`` (default :func:`default_state_dir`): which recorded
    processes still run, whether ``/readyz`` answers ok and whether the node is Ready."""
    state_dir = (state_dir or default_state_dir()).resolve()
    st = ClusterStatus(state_dir=state_dir)
    recs = records(state_dir)
    extra = [n for n in extra_agents() if n in recs]
    for name in (*[n for n in OPTIONAL_COMPONENTS if n in recs], *extra, *COMPONENTS):
        rec = recs.get(name)
        st.components.append(
            ComponentStatus(
                name,
                rec.pid if rec else None,
                bool(rec and rec.alive()),
                state_dir / "logs" / f"{name}.log",
            )
        )
    cfg = read_config(state_dir)
    if cfg.get("ports") and (state_dir / "pki" / "ca.crt").exists():
        st.server = f"https://127.0.0.1:{cfg['ports']['apiserver']}"
        ctx = ssl_context(ensure_pki(state_dir))
        code, body = http_get(f"{st.server}/readyz", ctx)
        st.api_ready = code == 200 and body.strip() == b"ok"
        st.node_ready = st.api_ready and all(
            node_ready(st.server, ctx, cfg.get("node", NODE_NAME) if i == 1 else node_name(i))
            for i in range(1, int(cfg.get("nodes", 1)) + 1))
    return st


def down(
    state_dir: Path | None = None,
    *,
    purge: bool = False,
    log: Callable[[str], None] = lambda m: None,
) -> list[str]:
    """Stop every process ``up`` started in ``state_dir`` (and only those: each is matched by
    pid and start time): the node agent and, should it have died, the pods it ran, then the
    scheduler, controller-manager, apiserver (SIGTERM, SIGKILL after 5 s) and etcd.
    With ``purge`` the state directory is removed too.  Returns the names stopped."""
    state_dir = (state_dir or default_state_dir()).resolve()
    if not state_dir.exists():
        return []
    stopped: list[str] = []
    with locked(state_dir):
        recs = records(state_dir)
        optional = [recs[n] for n in OPTIONAL_COMPONENTS if n in recs]
        stopped += [r.name for r in optional if r.alive()]
        terminate(optional, grace=5)
        agents = [recs[n] for n in ("node-agent", *extra_agents()) if n in recs]
        stopped += [r.name for r in agents if r.alive()]
        terminate(agents, grace=20)
        pods = pod_records(state_dir)
        stopped += [f"pod:{r.name}" for r in pods if r.alive()]
        terminate(pods, grace=2)
        middle = [
            recs[n]
            for n in ("kube-scheduler", "kube-controller-manager", "kube-apiserver")
            if n in recs
        ]
        stopped += [r.name for r in middle if r.alive()]
        terminate(middle, grace=5)
        if "etcd" in recs:
            if recs["etcd"].alive():
                stopped.append("etcd")
            terminate([recs["etcd"]], grace=5)
        for name in (*OPTIONAL_COMPONENTS, *extra_agents(), *COMPONENTS):
            pid_file(state_dir, name).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
    for name in stopped:
        log(f"stopped {name}")
    return stopped


#: the default StorageClass of the local cluster: no provisioner, the static hostPath
#: PersistentVolumes below, bound when a pod using the claim is scheduled
STORAGE_CLASS = "local-hostpath"
STATIC_VOLUMES = 4
STATIC_VOLUME_SIZE = "10Gi"


def static_volumes(state_dir: Path) -> list[dict[str, Any]]:
    """The StorageClass :data:`STORAGE_CLASS` (default, ``WaitForFirstConsumer``) and
    :data:`STATIC_VOLUMES` hostPath PersistentVolumes ``local-pv-NN`` of it, each a directory
    ``state_dir/volumes/pv-NN`` (created by the node agent when a pod first uses it).
    Reclaim policy ``Retain``: a released volume keeps its data and is not bound again
    (delete and re-``up``, or delete the PV, to reuse it); ``down`` removes the state
    directory and with it the data."""
    sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
          "metadata": {"name": STORAGE_CLASS, "annotations": {
              "storageclass.kubernetes.io/is-default-class": "true"}},
          "provisioner": "kubernetes.io/no-provisioner", "reclaimPolicy": "Retain",
          "volumeBindingMode": "WaitForFirstConsumer"}  # fmt: skip
    pvs = [{"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"local-pv-{i:02d}", "labels": {"voicetrack.dev/local": "true"}},
            "spec": {"capacity": {"storage": STATIC_VOLUME_SIZE},
                     "accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                     "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": str(state_dir / "volumes" / f"pv-{i:02d}"),
                                  "type": "DirectoryOrCreate"}}}
           for i in range(1, STATIC_VOLUMES + 1)]  # fmt: skip
    return [sc, *pvs]


def _apply_static_volumes(state_dir: Path, kubeconfig: Path) -> None:
    docs = {"apiVersion": "v1", "kind": "List", "items": static_volumes(state_dir)}
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input=json.dumps(docs))


def up(
    state_dir: Path | None = None,
    *,
    timeout: float = 120,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    runtime: str | None = None,
    fake_nodes: int = 0,
    limits: ClientLimits | None = None,
    kwok_timings: kwok.KwokTimings | None = None,
    nodes: int = 1,
) -> LocalCluster:
    """Start the local cluster in ``state_dir`` (default :func:`default_state_dir`), or
    return the one already running there (then ``owned`` is False).

    ``runtime`` is the node agent's container runtime (``process``: each container a local
    process from this checkout; ``podman``: each in its image, see
    :mod:`voicetrack_local.nodeagent.podman`), recorded in ``state_dir/runtime``; None: the
    running cluster's, else ``process``.  A running cluster with another runtime than the
    one asked for is refused.

    Builds the binaries first if they are missing (:func:`voicetrack_local.build.ensure_built`),
    then starts etcd, the apiserver (waits for ``/readyz``), the controller-manager and
    scheduler, and the node agent, and waits until the Node is Ready and untainted and the
    ``default`` ServiceAccount exists; then makes the default StorageClass and its static
    PersistentVolumes (:func:`static_volumes`).  Every process runs detached (it outlives
    the caller) and is recorded in ``state_dir/pids``; :func:`down` stops them.

    ``nodes`` real node agents run (1 to :data:`MAX_NODES`), each registering its own Node
    (``voicetrack-local``, ``voicetrack-local-2``, ...) with its own kubelet port and pods
    directory; the scheduler spreads pods over them.  A running cluster keeps its count.

    ``limits`` sets the controller-manager's and scheduler's API client QPS and burst (a
    running cluster keeps its own: ``down`` first to change them).  With ``fake_nodes`` > 0,
    kwok (built on first use, :mod:`voicetrack_local.kwok`) runs that many fake Nodes, also
    when the cluster was already running; ``kwok_timings`` sets how long its pods take.

    Raises:
        ClusterError: a component exited or was not ready within ``timeout`` seconds (the
            processes started so far are stopped again); an unknown ``runtime``, or a
            running cluster with another one.
        voicetrack_local.build.BuildError: the Go build failed.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"nodes must be 1 to {MAX_NODES}, not {nodes}")
    if runtime is not None and runtime not in RUNTIMES:
        raise ClusterError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    bins = k8sbuild.ensure_built(log=log)
    if fake_nodes:
        kwok.ensure_kwok(log=log)
    with locked(state_dir):
        current = status(state_dir)
        if current.running and current.server:
            if runtime is not None and read_runtime(state_dir) != runtime:
                raise ClusterError(
                    f"the cluster in {state_dir} runs with runtime {read_runtime(state_dir)!r}, "
                    f"not {runtime!r}; `voicetrack local down` it first"
                )
            kubeconfig = state_dir / "kubeconfig"
            if (limits or ClientLimits()) != _running_limits(state_dir):
                log("local: the running cluster keeps its client QPS/burst (`down` first)")
            if nodes != node_count(state_dir):
                log(f"local: the running cluster keeps its {node_count(state_dir)} node(s) "
                    "(`down` first)")
            if fake_nodes:
                start_fake_nodes(state_dir, kubeconfig, current.server, fake_nodes, timeout,
                                 log, kwok_timings)
            return LocalCluster(state_dir, kubeconfig, current.server, owned=False,
                                nodes=node_count(state_dir))
    if any(c.alive for c in current.components):
        log("local: a partly running cluster found; stopping it first")
        down(state_dir)
    with locked(state_dir):
        try:
            # read by the node agent
            (state_dir / RUNTIME_FILE).write_text((runtime or "process") + "\n")
            kubeconfig, server = start_all(state_dir, bins, timeout, log, limits, nodes)
            _apply_static_volumes(state_dir, kubeconfig)
            if fake_nodes:
                start_fake_nodes(state_dir, kubeconfig, server, fake_nodes, timeout, log,
                                 kwok_timings)
            return LocalCluster(state_dir, kubeconfig, server, owned=True, nodes=nodes)
        except BaseException:
            _stop_recorded(state_dir)
            raise


def _running_limits(state_dir: Path) -> ClientLimits:
    raw = read_config(state_dir).get("limits") or {}
    return ClientLimits(qps=raw.get("qps"), burst=raw.get("burst"),
                        job_syncs=raw.get("job_syncs"))


def _stop_recorded(state_dir: Path) -> None:
    recs = records(state_dir)
    names = (*OPTIONAL_COMPONENTS, *extra_agents(), *COMPONENTS)
    terminate([recs[n] for n in names if n in recs], grace=3)
    terminate(pod_records(state_dir), grace=1)
    for name in names:
        pid_file(state_dir, name).unlink(missing_ok=True)
