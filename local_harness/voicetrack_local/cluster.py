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
    agent/pods/...      the node agent's per-pod directories (see nodeagent.py)

Usage: ``up(state_dir) -> LocalCluster`` (reuses a running cluster), ``cluster.stop()`` /
``down(state_dir)``, ``status(state_dir)``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicetrack.errors import VoicetrackError
from voicetrack_local import build as k8sbuild
from voicetrack_local.pki import SERVICE_CLUSTER_IP_RANGE, Pki, ensure_pki
from voicetrack_local.ports import free_port, port_free
from voicetrack_local.procs import ProcRecord, spawn, terminate

NODE_NAME = "voicetrack-local"
"""Name of the one Node the agent registers."""

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
"""Service-account token issuer, also the API audience (as kubeadm sets it)."""

#: stop order: the agent first (it stops the pods), etcd last.
_COMPONENTS = ("node-agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


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


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster.

    Attributes:
        state_dir: its state directory (layout in the module docstring).
        kubeconfig: admin kubeconfig (``state_dir/kubeconfig``; user in system:masters).
        server: the apiserver URL, ``https://127.0.0.1:<port>``.
        node_name: the Node the agent runs pods on.
        owned: True when this object started the processes (``stop`` then stops them);
            False for a cluster found already running (``stop`` leaves it running unless
            ``force``).
    """

    state_dir: Path
    kubeconfig: Path
    server: str
    node_name: str = NODE_NAME
    owned: bool = True

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


# ---------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def _ssl_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.crt))
    ctx.load_cert_chain(str(pki.admin.crt), str(pki.admin.key))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return 0, b""


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "pids" / f"{name}.json"


def _records(state_dir: Path) -> dict[str, ProcRecord]:
    out: dict[str, ProcRecord] = {}
    for name in _COMPONENTS:
        rec = ProcRecord.load(_pid_file(state_dir, name))
        if rec:
            out[name] = rec
    return out


def _pod_records(state_dir: Path) -> list[ProcRecord]:
    pods = state_dir / "agent" / "pods"
    recs = [ProcRecord.load(p) for p in pods.glob("*/pids/*.json")] if pods.exists() else []
    return [r for r in recs if r]


def _read_config(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / "cluster.json").read_text()))
    except (OSError, ValueError):
        return {}


def _node_ready(server: str, ctx: ssl.SSLContext, node: str) -> bool:
    code, body = _get(f"{server}/api/v1/nodes/{node}", ctx)
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


# ---------------------------------------------------------------------------------------
# public API


def status(state_dir: Path | None = None) -> ClusterStatus:
    """Report the cluster in ``state_dir`` (default :func:`default_state_dir`): which recorded
    processes still run, whether ``/readyz`` answers ok and whether the node is Ready."""
    state_dir = (state_dir or default_state_dir()).resolve()
    st = ClusterStatus(state_dir=state_dir)
    recs = _records(state_dir)
    for name in _COMPONENTS:
        rec = recs.get(name)
        st.components.append(
            ComponentStatus(
                name,
                rec.pid if rec else None,
                bool(rec and rec.alive()),
                state_dir / "logs" / f"{name}.log",
            )
        )
    cfg = _read_config(state_dir)
    if cfg.get("ports") and (state_dir / "pki" / "ca.crt").exists():
        st.server = f"https://127.0.0.1:{cfg['ports']['apiserver']}"
        ctx = _ssl_context(ensure_pki(state_dir))
        code, body = _get(f"{st.server}/readyz", ctx)
        st.api_ready = code == 200 and body.strip() == b"ok"
        st.node_ready = st.api_ready and _node_ready(st.server, ctx, cfg.get("node", NODE_NAME))
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
    with _locked(state_dir):
        recs = _records(state_dir)
        if "node-agent" in recs:
            if recs["node-agent"].alive():
                stopped.append("node-agent")
            terminate([recs["node-agent"]], grace=20)
        pods = _pod_records(state_dir)
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
        for name in _COMPONENTS:
            _pid_file(state_dir, name).unlink(missing_ok=True)
    if purge:
        shutil.rmtree(state_dir, ignore_errors=True)
    for name in stopped:
        log(f"stopped {name}")
    return stopped


def up(
    state_dir: Path | None = None,
    *,
    timeout: float = 120,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> LocalCluster:
    """Start the local cluster in ``state_dir`` (default :func:`default_state_dir`), or
    return the one already running there (then ``owned`` is False).

    Builds the binaries first if they are missing (:func:`voicetrack_local.build.ensure_built`),
    then starts etcd, the apiserver (waits for ``/readyz``), the controller-manager and
    scheduler, and the node agent, and waits until the Node is Ready and untainted and the
    ``default`` ServiceAccount exists.  Every process runs detached (it outlives the caller)
    and is recorded in ``state_dir/pids``; :func:`down` stops them.

    Raises:
        ClusterError: a component exited or was not ready within ``timeout`` seconds (the
            processes started so far are stopped again).
        voicetrack_local.build.BuildError: the Go build failed.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    bins = k8sbuild.ensure_built(log=log)
    with _locked(state_dir):
        current = status(state_dir)
        if current.running and current.server:
            return LocalCluster(state_dir, state_dir / "kubeconfig", current.server, owned=False)
    if any(c.alive for c in current.components):
        log("local: a partly running cluster found; stopping it first")
        down(state_dir)
    with _locked(state_dir):
        try:
            return _start(state_dir, bins, timeout, log)
        except BaseException:
            _stop_recorded(state_dir)
            raise


def _stop_recorded(state_dir: Path) -> None:
    recs = _records(state_dir)
    terminate([recs[n] for n in _COMPONENTS if n in recs], grace=3)
    terminate(_pod_records(state_dir), grace=1)
    for name in _COMPONENTS:
        _pid_file(state_dir, name).unlink(missing_ok=True)


def _ports(state_dir: Path) -> dict[str, int]:
    old = _read_config(state_dir).get("ports", {})
    ports: dict[str, int] = {}
    for name in ("etcd", "etcd_peer", "apiserver", "kubelet"):
        p = old.get(name)
        ports[name] = p if isinstance(p, int) and port_free(p) else free_port()
    if len(set(ports.values())) != len(ports):  # a kernel pick collided with a kept port
        return {n: free_port() for n in ports}
    return ports


def _start(state_dir: Path, bins: Path, timeout: float, log: Callable[[str], None]) -> LocalCluster:
    t0 = time.monotonic()
    deadline = t0 + timeout
    pki = ensure_pki(state_dir)
    ports = _ports(state_dir)
    (state_dir / "cluster.json").write_text(
        json.dumps({"version": k8sbuild.K8S_VERSION, "node": NODE_NAME, "ports": ports}, indent=1)
    )
    server = f"https://127.0.0.1:{ports['apiserver']}"
    kcfg = state_dir / "kubeconfigs"
    admin = write_kubeconfig(
        state_dir / "kubeconfig",
        server,
        pki.ca.crt,
        user="voicetrack-admin",
        cert=pki.admin.crt,
        key=pki.admin.key,
    )
    kcm_cfg = write_kubeconfig(
        kcfg / "controller-manager.kubeconfig",
        server,
        pki.ca.crt,
        user="system:kube-controller-manager",
        cert=pki.controller_manager.crt,
        key=pki.controller_manager.key,
    )
    sched_cfg = write_kubeconfig(
        kcfg / "scheduler.kubeconfig",
        server,
        pki.ca.crt,
        user="system:kube-scheduler",
        cert=pki.scheduler.crt,
        key=pki.scheduler.key,
    )
    (state_dir / "pids").mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    pki_dir = pki.dir

    def start(name: str, cmd: list[str]) -> ProcRecord:
        _, rec = spawn(name, cmd, logs / f"{name}.log")
        rec.save(_pid_file(state_dir, name))
        return rec

    def wait(name: str, rec: ProcRecord, ok: Callable[[], bool]) -> None:
        while not ok():
            if not rec.alive():
                raise ClusterError(
                    f"{name} exited during start-up; its log ends:\n"
                    f"{_log_tail(logs / f'{name}.log')}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not ready after {timeout:.0f} s; its log ends:\n"
                    f"{_log_tail(logs / f'{name}.log')}"
                )
            time.sleep(0.1)

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd = start(
        "etcd",
        [
            str(bins / "etcd"),
            "--name=default",
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ],
    )
    wait("etcd", etcd, lambda: _get(f"{etcd_url}/health")[0] == 200)

    api = start(
        "kube-apiserver",
        [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki.apiserver.crt}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.crt}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--api-audiences={SA_ISSUER}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.crt}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.crt}",
            "--kubelet-preferred-address-types=InternalIP",
            # the apiserver's own Endpoints would carry 127.0.0.1, which validation refuses
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=1h",
        ],
    )
    ctx = _ssl_context(pki)
    wait(
        "kube-apiserver",
        api,
        lambda: (lambda r: r[0] == 200 and r[1].strip() == b"ok")(_get(f"{server}/readyz", ctx)),
    )
    log(f"local: apiserver ready at {server} ({time.monotonic() - t0:.1f} s)")

    kcm_cmd = [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kcm_cfg}",
        "--secure-port=0",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca.crt}",
        f"--cluster-signing-cert-file={pki.ca.crt}",
        f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
        "--controllers=*",
        "--node-monitor-period=1s",  # untaints the new node sooner (default 5 s)
    ]
    kcm = start("kube-controller-manager", kcm_cmd)
    sched = start(
        "kube-scheduler",
        [
            str(bins / "kube-scheduler"),
            f"--kubeconfig={sched_cfg}",
            "--secure-port=0",
            "--leader-elect=false",
        ],
    )
    agent = start(
        "node-agent",
        [
            sys.executable,
            "-m",
            "voicetrack_local.nodeagent",
            f"--state-dir={state_dir}",
        ],
    )

    def ready() -> bool:
        nonlocal kcm
        if not kcm.alive():  # exits at once if RBAC was not bootstrapped yet (issue 3)
            log("local: kube-controller-manager exited early; restarting it")
            kcm = start("kube-controller-manager", kcm_cmd)
        for name, rec in (("kube-scheduler", sched), ("node-agent", agent)):
            if not rec.alive():
                raise ClusterError(
                    f"{name} exited during start-up; its log ends:\n"
                    f"{_log_tail(logs / f'{name}.log')}"
                )
        if not _node_ready(server, ctx, NODE_NAME):
            return False
        return _get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", ctx)[0] == 200

    wait("node-agent", agent, ready)
    log(f"local: cluster ready in {time.monotonic() - t0:.1f} s; kubeconfig {admin}")
    return LocalCluster(state_dir, admin, server, owned=True)
