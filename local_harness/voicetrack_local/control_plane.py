"""Starting the local control plane's processes: the command line of each component (pure
functions of the binaries, ports and PKI), their kubeconfigs, and :func:`start_all`, which
starts them in order and waits for each to be ready."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voicetrack_local import build as k8sbuild
from voicetrack_local import kwok
from voicetrack_local.kubeconfig import write_kubeconfig
from voicetrack_local.kubectl import kubectl
from voicetrack_local.pki import SERVICE_CLUSTER_IP_RANGE, Pki, ensure_pki
from voicetrack_local.ports import free_port, port_free
from voicetrack_local.procs import ProcRecord, spawn
from voicetrack_local.state import (
    NODE_NAME,
    ClusterError,
    agent_component,
    http_get,
    kubelet_port_key,
    log_tail,
    node_name,
    node_ready,
    pid_file,
    read_config,
    ssl_context,
)

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
"""Service-account token issuer, also the API audience (as kubeadm sets it)."""


def choose_ports(state_dir: Path, nodes: int = 1) -> dict[str, int]:
    """Ports for etcd (client, peer), the apiserver and each node's kubelet endpoint
    (``kubelet``, ``kubelet_2``, ...): the ones of the last run (``cluster.json``) while
    still free, else new free ones."""
    old = read_config(state_dir).get("ports", {})
    ports: dict[str, int] = {}
    kubelets = [kubelet_port_key(i) for i in range(1, nodes + 1)]
    for name in ("etcd", "etcd_peer", "apiserver", *kubelets):
        p = old.get(name)
        ports[name] = p if isinstance(p, int) and port_free(p) else free_port()
    if len(set(ports.values())) != len(ports):  # a kernel pick collided with a kept port
        return {n: free_port() for n in ports}
    return ports


def etcd_command(bins: Path, state_dir: Path, ports: dict[str, int]) -> list[str]:
    """etcd on 127.0.0.1 (one member, no fsync: a throw-away local cluster)."""
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    return [
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
    ]


def apiserver_command(bins: Path, pki: Pki, ports: dict[str, int]) -> list[str]:
    """kube-apiserver on 127.0.0.1 with Node,RBAC authorization, service-account tokens
    issued as :data:`SA_ISSUER`, and the kubelet client certificate for ``kubectl logs``."""
    return [
        str(bins / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
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
    ]


@dataclass(frozen=True)
class ClientLimits:
    """Client-side rate limits of the controller-manager and the scheduler towards the API
    (their ``--kube-api-qps`` requests/s and ``--kube-api-burst``); None keeps upstream's
    defaults (controller-manager 20/30, scheduler 50/100), which cap a scale run at about
    11 Job pods/s and 50 binds/s."""

    qps: float | None = None
    burst: int | None = None
    job_syncs: int | None = None
    """The controller-manager's ``--concurrent-job-syncs`` (upstream: 5): Jobs it syncs at
    once. On a loaded 2-core machine 5 left a Job's first pod 77 s behind at 50 sessions."""

    def flags(self) -> list[str]:
        """The flags for these limits (none for a default), for both components."""
        out = [] if self.qps is None else [f"--kube-api-qps={self.qps:g}"]
        return out + ([] if self.burst is None else [f"--kube-api-burst={self.burst}"])

    def controller_manager_flags(self) -> list[str]:
        """:meth:`flags` plus the controller-manager's own."""
        extra = [] if self.job_syncs is None else [f"--concurrent-job-syncs={self.job_syncs}"]
        return self.flags() + extra


def controller_manager_command(bins: Path, pki: Pki, kubeconfig: Path,
                               limits: ClientLimits | None = None) -> list[str]:
    """kube-controller-manager (every controller, per-controller ServiceAccounts, the
    cluster CA as signer, a 1 s node monitor period so a new node is untainted sooner),
    with ``limits`` on its API client when given."""
    return [
        str(bins / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca.crt}",
        f"--cluster-signing-cert-file={pki.ca.crt}",
        f"--cluster-signing-key-file={pki.dir / 'ca.key'}",
        "--controllers=*",
        "--node-monitor-period=1s",  # untaints the new node sooner (default 5 s)
        *(limits or ClientLimits()).controller_manager_flags(),
    ]


def scheduler_command(bins: Path, kubeconfig: Path,
                      limits: ClientLimits | None = None) -> list[str]:
    """kube-scheduler without leader election or a serving port, with ``limits`` on its
    API client when given."""
    return [
        str(bins / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        *(limits or ClientLimits()).flags(),
    ]


def node_agent_command(state_dir: Path, index: int = 1) -> list[str]:
    """Node agent ``index`` (1-based), run by this Python:
    ``python -m voicetrack_local.nodeagent``."""
    return [sys.executable, "-m", "voicetrack_local.nodeagent", f"--state-dir={state_dir}",
            *([] if index == 1 else [f"--index={index}"])]


def write_kubeconfigs(state_dir: Path, pki: Pki, server: str) -> dict[str, Path]:
    """Write the admin kubeconfig (``state_dir/kubeconfig``) and those of the
    controller-manager and scheduler (``kubeconfigs/``); returns them by component."""
    kcfg = state_dir / "kubeconfigs"
    ca = pki.ca.crt
    return {
        "admin": write_kubeconfig(
            state_dir / "kubeconfig", server, ca, user="voicetrack-admin",
            cert=pki.admin.crt, key=pki.admin.key,
        ),
        "kube-controller-manager": write_kubeconfig(
            kcfg / "controller-manager.kubeconfig", server, ca,
            user="system:kube-controller-manager",
            cert=pki.controller_manager.crt, key=pki.controller_manager.key,
        ),
        "kube-scheduler": write_kubeconfig(
            kcfg / "scheduler.kubeconfig", server, ca, user="system:kube-scheduler",
            cert=pki.scheduler.crt, key=pki.scheduler.key,
        ),
    }  # fmt: skip


@dataclass
class _Launcher:
    """Starts components (recording each in ``state_dir/pids``) and waits for them."""

    state_dir: Path
    deadline: float
    timeout: float

    def start(self, name: str, cmd: list[str]) -> ProcRecord:
        _, rec = spawn(name, cmd, self.state_dir / "logs" / f"{name}.log")
        rec.save(pid_file(self.state_dir, name))
        return rec

    def failed(self, name: str, what: str) -> ClusterError:
        tail = log_tail(self.state_dir / "logs" / f"{name}.log")
        return ClusterError(f"{name} {what}; its log ends:\n{tail}")

    def wait(self, name: str, rec: ProcRecord, ok: Callable[[], bool]) -> None:
        while not ok():
            if not rec.alive():
                raise self.failed(name, "exited during start-up")
            if time.monotonic() > self.deadline:
                raise self.failed(name, f"not ready after {self.timeout:.0f} s")
            time.sleep(0.1)


def start_all(
    state_dir: Path, bins: Path, timeout: float, log: Callable[[str], None],
    limits: ClientLimits | None = None, nodes: int = 1,
) -> tuple[Path, str]:
    """Start etcd, the apiserver (waits for ``/readyz``), the controller-manager, the
    scheduler (both with ``limits`` on their API clients) and ``nodes`` node agents (each
    its own Node, :func:`voicetrack_local.state.node_name`), and wait until every Node is
    Ready and untainted and the ``default`` ServiceAccount exists.  Returns
    (admin kubeconfig, apiserver URL).

    Raises:
        ClusterError: a component exited or was not ready within ``timeout`` seconds (the
            caller stops what was started)."""
    t0 = time.monotonic()
    pki = ensure_pki(state_dir)
    ports = choose_ports(state_dir, nodes)
    (state_dir / "cluster.json").write_text(
        json.dumps({"version": k8sbuild.K8S_VERSION, "node": NODE_NAME, "nodes": nodes,
                    "ports": ports,
                    "limits": dataclasses.asdict(limits or ClientLimits())}, indent=1)
    )
    server = f"https://127.0.0.1:{ports['apiserver']}"
    cfgs = write_kubeconfigs(state_dir, pki, server)
    (state_dir / "pids").mkdir(parents=True, exist_ok=True)
    run = _Launcher(state_dir, t0 + timeout, timeout)

    etcd = run.start("etcd", etcd_command(bins, state_dir, ports))
    run.wait("etcd", etcd, lambda: http_get(f"http://127.0.0.1:{ports['etcd']}/health")[0] == 200)
    api = run.start("kube-apiserver", apiserver_command(bins, pki, ports))
    ctx = ssl_context(pki)

    def api_ready() -> bool:
        code, body = http_get(f"{server}/readyz", ctx)
        return code == 200 and body.strip() == b"ok"

    run.wait("kube-apiserver", api, api_ready)
    log(f"local: apiserver ready at {server} ({time.monotonic() - t0:.1f} s)")

    kcm_cmd = controller_manager_command(bins, pki, cfgs["kube-controller-manager"], limits)
    kcm = run.start("kube-controller-manager", kcm_cmd)
    sched = run.start("kube-scheduler", scheduler_command(bins, cfgs["kube-scheduler"], limits))
    agents = {agent_component(i): run.start(agent_component(i),
                                            node_agent_command(state_dir, i))
              for i in range(1, nodes + 1)}

    def ready() -> bool:
        nonlocal kcm
        if not kcm.alive():  # exits at once if RBAC was not bootstrapped yet (issue 3)
            log("local: kube-controller-manager exited early; restarting it")
            kcm = run.start("kube-controller-manager", kcm_cmd)
        for name, rec in (("kube-scheduler", sched), *agents.items()):
            if not rec.alive():
                raise run.failed(name, "exited during start-up")
        if not all(node_ready(server, ctx, node_name(i)) for i in range(1, nodes + 1)):
            return False
        sa = f"{server}/api/v1/namespaces/default/serviceaccounts/default"
        return http_get(sa, ctx)[0] == 200

    run.wait("node-agent", agents["node-agent"], ready)
    log(f"local: cluster ready in {time.monotonic() - t0:.1f} s; kubeconfig {cfgs['admin']}")
    return cfgs["admin"], server


def start_fake_nodes(
    state_dir: Path, kubeconfig: Path, server: str, count: int, timeout: float,
    log: Callable[[str], None], timings: kwok.KwokTimings | None = None,
) -> list[str]:
    """Start kwok (unless it runs already) and make ``count`` fake Nodes
    (:func:`voicetrack_local.kwok.fake_node`; existing ones are kept), then wait until all
    are Ready.  Returns their names.

    Raises:
        ClusterError: kwok exited, or a Node was not Ready within ``timeout`` seconds (kwok
            is left running: :func:`voicetrack_local.cluster.down` stops it)."""
    t0 = time.monotonic()
    binary = kwok.ensure_kwok(log=log)
    run = _Launcher(state_dir, t0 + timeout, timeout)
    rec = ProcRecord.load(pid_file(state_dir, "kwok"))
    if rec is None or not rec.alive():
        config = kwok.write_config(state_dir / "kwok" / "stages.yaml",
                                   timings or kwok.KwokTimings())
        rec = run.start("kwok", kwok.kwok_command(binary, kubeconfig, config))
    nodes = [kwok.fake_node(i) for i in range(count)]
    kubectl(kubeconfig, "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
    names = [n["metadata"]["name"] for n in nodes]
    ctx = ssl_context(ensure_pki(state_dir))
    run.wait("kwok", rec, lambda: all(node_ready(server, ctx, n) for n in names))
    cfg = read_config(state_dir)
    (state_dir / "cluster.json").write_text(json.dumps({**cfg, "fake_nodes": count}, indent=1))
    log(f"local: kwok and {count} fake node(s) ready in {time.monotonic() - t0:.1f} s")
    return names
