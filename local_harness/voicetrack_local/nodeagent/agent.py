"""The node agent process: registers the node (:mod:`.node`), watches the pods bound to it
(re-listing after watch time-outs, ``410 Gone`` and connection errors), runs each in its own
:class:`~voicetrack_local.nodeagent.worker.PodWorker` thread, and serves container logs
(:mod:`.logs`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import watch as k8s_watch

from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.kube import Kube, now_iso
from voicetrack_local.nodeagent.logs import LogServer
from voicetrack_local.nodeagent.node import NodeRegistration
from voicetrack_local.nodeagent.podips import NoFreeIP, PodIPs, reported_first
from voicetrack_local.nodeagent.podman import Podman, PodmanContainer
from voicetrack_local.nodeagent.podspec import ConfigError
from voicetrack_local.nodeagent.worker import PodWorker
from voicetrack_local.state import agent_dir, kubelet_port_key, node_name

log = logging.getLogger("voicetrack.nodeagent")

#: the container runtimes: ``process`` (each container a local process from the checkout,
#: its image ignored) and ``podman`` (each container in its image, see :mod:`.podman`)
RUNTIMES = ("process", "podman")
#: file in the state directory naming the runtime (written by ``voicetrack local up``)
RUNTIME_FILE = "runtime"


def read_runtime(state_dir: Path) -> str:
    """The runtime recorded in ``state_dir`` (:data:`RUNTIME_FILE`), ``process`` when none.

    Raises:
        ValueError: the file names no known runtime."""
    f = state_dir / RUNTIME_FILE
    runtime = f.read_text().strip() if f.exists() else "process"
    if runtime not in RUNTIMES:
        raise ValueError(f"{f}: unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    return runtime


def pod_ips_dir(state_dir: Path) -> Path:
    """Where the node agents of the cluster in ``state_dir`` hold their pods' IPs
    (:class:`~voicetrack_local.nodeagent.podips.PodIPs`): ``agent/pod-ips/``, one for all."""
    return agent_dir(state_dir, 1) / "pod-ips"


class NodeAgent:
    """Registers the node, keeps its Lease, watches its pods and runs them (one
    :class:`PodWorker` thread each), serves container logs.  :meth:`run` blocks until
    :meth:`shutdown` (SIGTERM/SIGINT in ``main``).

    Args:
        runtime: ``process`` or ``podman`` (:data:`RUNTIMES`); default: the state
            directory's (:func:`read_runtime`).
        index: which node of the cluster (1-based, ``up(nodes=N)``): its Node name
            (:func:`~voicetrack_local.state.node_name`), kubelet port (``cluster.json``
            ports, :func:`~voicetrack_local.state.kubelet_port_key`) and pods directory
            (:func:`~voicetrack_local.state.agent_dir`) are its own; pod IPs are handed
            out by all the cluster's agents together (:func:`pod_ips_dir`).

    Raises:
        RuntimeError: ``podman`` asked for and not installed."""

    def __init__(self, state_dir: Path, runtime: str | None = None, index: int = 1) -> None:
        cfg = json.loads((state_dir / "cluster.json").read_text())
        self.state_dir = state_dir
        self.index = index
        self.node: str = cfg["node"] if index == 1 else node_name(index)
        self.port: int = cfg["ports"][kubelet_port_key(index)]
        #: the API server as containers reach it (host network: 127.0.0.1)
        self.api_host, self.api_port = "127.0.0.1", int(cfg["ports"]["apiserver"])
        self.server = f"https://127.0.0.1:{cfg['ports']['apiserver']}"
        self.runtime = runtime or read_runtime(state_dir)
        # one id per node: an agent removes the containers its id left at start
        agent_id = hashlib.sha256(
            str(state_dir if index == 1 else state_dir / self.node).encode()).hexdigest()[:16]
        self.podman = Podman(agent_id) if self.runtime == "podman" else None
        self.kube = Kube(state_dir / "kubeconfig")
        self.watch_kube = Kube(state_dir / "kubeconfig", pool=4)
        self.pods_dir = agent_dir(state_dir, index) / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        #: pod IPs, held in one directory by every agent of the cluster (no two pods share one)
        self.pod_ips = PodIPs(pod_ips_dir(state_dir), self.node)
        self.ca_pem = (state_dir / "pki" / "ca.crt").read_bytes()
        self.workers: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.events = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")
        #: seconds a pod watch lasts before the agent re-lists (tests shorten it)
        self.watch_timeout = int(os.environ.get("VOICETRACK_AGENT_WATCH_TIMEOUT", "240"))
        mem_kib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        disk = shutil.disk_usage(state_dir)
        self.capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_kib}Ki",
            "pods": "250",
            "ephemeral-storage": f"{disk.total // 1024}Ki",
        }
        self.node_reg = NodeRegistration(self.kube, self.node, self.port, self.capacity)
        self.logs = LogServer(
            self,
            self.port,
            state_dir / "pki" / "kubelet.crt",
            state_dir / "pki" / "kubelet.key",
            state_dir / "pki" / "ca.crt",
        )

    # ---- used by workers / log server
    def new_container(self, spec: dict[str, Any], init: bool) -> Container:
        """The runtime state of container ``spec`` (a :class:`PodmanContainer` with the
        podman runtime)."""
        if self.podman is not None:
            return PodmanContainer(spec["name"], spec, init, podman=self.podman)
        return Container(spec["name"], spec, init)

    def pod_token(self, pod: dict[str, Any]) -> str:
        """A TokenRequest token for the pod's ServiceAccount, bound to the pod.  3607 s is
        the kubelet's value, which the apiserver extends (``--service-account-extend-token-
        expiration``, on by default) so it stays valid for the pod's life.

        Raises:
            ConfigError: the ServiceAccount does not exist or the request failed."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        code, body = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 3607,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            },
        )
        if code >= 300:
            raise ConfigError(
                f"token for serviceaccount {meta['namespace']}/{sa}: HTTP {code}: "
                f"{(body or {}).get('message')}"
            )
        return str(body["status"]["token"])

    def event(self, ns: str, ref: dict[str, Any], reason: str, message: str, etype: str) -> None:
        """Post a core/v1 Event about ``ref`` from this node (in the background; errors are
        only logged: events are best effort, as in the kubelet)."""
        t = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref['name']}.", "namespace": ns},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": etype,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": t,
            "lastTimestamp": t,
            "count": 1,
        }

        def send() -> None:
            try:
                self.kube.request("POST", f"/api/v1/namespaces/{ns}/events", body=body)
            except Exception as e:
                log.debug("event %s: %s", reason, e)

        self.events.submit(send)

    def worker_for(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            uid = self.by_name.get((ns, name))
            return self.workers.get(uid) if uid else None

    def worker_done(self, worker: PodWorker) -> None:
        """Called by a worker thread as it ends: forget it and remove its directory and
        free its pod IP once the pod is gone (or was finally deleted)."""
        with self.lock:
            ended = worker.gone or worker.final_deleted or worker.crashed
            if self.workers.get(worker.uid) is worker and ended:
                del self.workers[worker.uid]
                if self.by_name.get((worker.ns, worker.pod_name)) == worker.uid:
                    del self.by_name[(worker.ns, worker.pod_name)]
        if worker.gone or worker.final_deleted:
            shutil.rmtree(worker.dir, ignore_errors=True)
            self.pod_ips.release(worker.uid)

    # ---- pods
    def _dispatch(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if w is None:
                try:
                    w = PodWorker(self, pod)
                except (OSError, NoFreeIP) as err:  # no pod IP: this pod waits, not the node
                    log.warning("pod %s/%s: no pod IP (%s); tried again at its next event "
                                "or list", meta["namespace"], meta["name"], err)
                    return
                self.workers[uid] = w
                self.by_name[(meta["namespace"], meta["name"])] = uid
                w.start()
                return
        w.update(pod)

    def _gone(self, uid: str) -> None:
        with self.lock:
            w = self.workers.get(uid)
        if w is not None:
            w.mark_gone()

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stop_event.is_set():
            try:
                code, lst = self.watch_kube.request(
                    "GET", "/api/v1/pods", query={"fieldSelector": selector}
                )
                if code != 200:
                    raise RuntimeError(f"list pods: HTTP {code}")
                seen = set()
                for pod in reported_first(lst.get("items") or []):
                    seen.add(pod["metadata"]["uid"])
                    self._dispatch(pod)
                with self.lock:
                    stale = [u for u in self.workers if u not in seen]
                    running = set(self.workers)
                self.pod_ips.keep_only(seen | running)  # pods deleted while the agent was away
                for u in stale:
                    self._gone(u)
                rv = lst["metadata"]["resourceVersion"]
                w = k8s_watch.Watch()
                for ev in w.stream(
                    self.watch_kube.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_timeout,
                    _request_timeout=(10, 300),
                    deserialize=False,
                ):
                    if self.stop_event.is_set():
                        w.stop()
                        break
                    typ, obj = ev.get("type"), ev.get("object") or {}
                    if typ in ("ADDED", "MODIFIED"):
                        self._dispatch(obj)
                    elif typ == "DELETED":
                        self._gone(obj["metadata"]["uid"])
                # a timed-out watch simply re-lists (level-based: nothing is lost)
            except Exception as e:  # 410 Gone, connection errors, apiserver restarts
                if self.stop_event.is_set():
                    break
                log.info("pod watch restarts: %s", e)
                self.stop_event.wait(1)

    def run(self) -> None:
        """Register, then serve until :meth:`shutdown`; finally stop every pod process
        (with podman, containers a killed agent of this state directory left are removed
        first)."""
        if self.podman is not None:
            left = self.podman.remove_all()
            if left:
                log.info("removed %d container(s) left by an earlier agent", len(left))
        for attempt in range(100):
            try:
                self.node_reg.register()
                self.node_reg.renew_lease()
                break
            except Exception as e:
                if attempt == 99 or self.stop_event.is_set():
                    raise
                log.info("register: %s (retrying)", e)
                self.stop_event.wait(0.5)
        threading.Thread(target=self.logs.serve_forever, name="logs", daemon=True).start()
        beat = threading.Thread(
            target=self.node_reg.heartbeat_loop,
            args=(self.stop_event,),
            name="heartbeat",
            daemon=True,
        )
        beat.start()
        log.info("node %s ready; kubelet endpoint 127.0.0.1:%s", self.node, self.port)
        watcher = threading.Thread(target=self._watch_loop, name="watch", daemon=True)
        watcher.start()
        self.stop_event.wait()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stop()
        for w in workers:
            w.join(timeout=10)
        if self.podman is not None:
            self.podman.remove_all()
        self.logs.shutdown()

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop (safe from a signal handler)."""
        self.stop_event.set()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m voicetrack_local.nodeagent --state-dir DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m voicetrack_local.nodeagent", description="Voicetrack local node agent"
    )
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="container runtime (default: the state directory's, else process)")
    parser.add_argument("--index", type=int, default=1,
                        help="which node (1-based): node 1 is cluster.json's node, node N "
                             "voicetrack-local-N with its own kubelet port and pods directory")
    parser.add_argument("--verbose", action="store_true")
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    agent = NodeAgent(ns.state_dir.resolve(), ns.runtime, ns.index)
    signal.signal(signal.SIGTERM, lambda *_: agent.shutdown())
    signal.signal(signal.SIGINT, lambda *_: agent.shutdown())
    agent.run()
