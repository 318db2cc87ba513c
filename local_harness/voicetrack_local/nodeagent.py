"""The node agent: plays the kubelet for the local cluster by running each pod's containers
as local processes.

What it does (the kubelet behaviour it follows is cited from kubernetes.io/docs/concepts/
workloads/pods/pod-lifecycle/ and the kubelet's ``pkg/kubelet/kubelet_pods.go``):

* registers Node :data:`voicetrack_local.cluster.NODE_NAME` (Ready, capacity from this
  machine, ``InternalIP 127.0.0.1``, ``daemonEndpoints.kubeletEndpoint.Port``) and renews its
  Lease in ``kube-node-lease`` every 10 s (the node controller marks a node Unknown after
  ``--node-monitor-grace-period``, 50 s, without a renewal it saw), retrying a failed renewal
  within seconds; every heartbeat also reads the Node back and re-posts its status at once
  when it is not Ready (as the kubelet does every ``nodeStatusUpdateFrequency``), else every
  60 s;
* lists and watches the pods bound to it (``spec.nodeName``), re-listing after watch
  time-outs, ``410 Gone`` and connection errors; one worker thread per pod, so no pod
  blocks another;
* per pod: a private directory ``<state>/agent/pods/<ns>_<name>_<uid>/`` (cwd of every
  container; ``volumes/<name>/`` for emptyDir, configMap, secret, projected and downwardAPI
  volumes; ``TMPDIR`` is the emptyDir mounted at ``/tmp``, else the first emptyDir the
  container mounts, else ``tmp/``), a kubeconfig holding a TokenRequest token bound to the
  pod for its ServiceAccount (``KUBECONFIG``), env from ``value`` (with ``$(VAR)``
  expansion), ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``, ``resourceFieldRef`` and
  ``envFrom``;  ``PATH`` starts with the directory of this agent's Python (the venv's
  ``bin``, where the ``voicetrack-*`` console scripts are).  Init containers run in order,
  then all containers at once; command + args are run (the image is ignored; a container
  without ``command`` waits with ``CreateContainerError``), stdout and stderr go to
  ``logs/<container>/<restartCount>.log``;
* status: phase Pending → Running → Succeeded/Failed, containerStatuses (waiting /
  running / terminated with exitCode, reason ``Completed``/``Error``/``StartError``,
  restartCount, lastState), conditions (PodReadyToStartContainers, Initialized,
  ContainersReady, Ready; readiness probes are not run: a running container is ready);
* restartPolicy Always/OnFailure/Never with the kubelet's back-off (10 s doubling to 5 min),
  ``activeDeadlineSeconds`` (Failed, reason DeadlineExceeded), graceful deletion: SIGTERM
  to each container's main process, SIGKILL to its process group after the pod's
  ``deletionGracePeriodSeconds``, terminal phase reported, then the final delete
  (``gracePeriodSeconds=0`` with a uid precondition);
* serves ``GET /containerLogs/<ns>/<pod>/<container>`` (``follow``, ``tailLines``,
  ``previous``, ``limitBytes``) over HTTPS with a CA-signed cert, requiring a client
  certificate from the cluster CA (the apiserver's kubelet client cert), so ``kubectl logs``
  works.

Not done (documented limits): images, probes, exec/attach/port-forward, resource limits,
hostNetwork isolation, service environment variables (``KUBERNETES_SERVICE_HOST`` is *not*
set, so in-cluster clients fall back to ``KUBECONFIG``), volumes other than the above
(a ``mountPath`` is never created; programs find their files through cwd/TMPDIR).

The agent talks to the API with the admin kubeconfig of the state directory (a node
identity with NodeRestriction is not needed for a single-user local cluster).
Run: ``python -m voicetrack_local.nodeagent --state-dir DIR`` (``voicetrack local up`` does).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from voicetrack_local.procs import ProcRecord

log = logging.getLogger("voicetrack.nodeagent")

LEASE_SECONDS = 40
RENEW_SECONDS = 10
#: node status is re-posted at least this often, and at once when the API's copy is not Ready
STATUS_REPORT_SECONDS = 60
#: after a failed heartbeat, retry after 0.5 s doubling up to this (the kubelet's lease
#: controller retries from 200 ms up to 7 s: pkg/kubelet/nodelease)
HEARTBEAT_RETRY_MAX = 4.0
BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
TICK = 0.2
K8S_VERSION = "v1.36.3"


def now_iso() -> str:
    """Current UTC time as RFC 3339 with seconds (Kubernetes ``Time``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Current UTC time as Kubernetes ``MicroTime`` (microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str | None) -> float | None:
    """Kubernetes ``Time`` string → Unix seconds, or None."""
    if not s:
        return None
    return dt.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()


class ConfigError(Exception):
    """A pod cannot be started as specified (missing Secret, key, bad field path …); the
    message becomes the waiting reason's message, as the kubelet's CreateContainerConfigError."""


class Kube:
    """Minimal JSON-over-HTTP access to the API through the ``kubernetes`` client's
    ``ApiClient`` (its auth, TLS and connection pool), with plain dicts in and out."""

    def __init__(self, kubeconfig: Path, pool: int = 64) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool
        self.api = k8s_client.ApiClient(cfg)
        self.core = k8s_client.CoreV1Api(self.api)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """Send one request; returns (HTTP status, parsed JSON body or None).  Connection
        errors propagate as urllib3 exceptions."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, b, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, hdrs, b, post, _request_timeout=timeout)
        data = resp.read()
        try:
            return int(resp.status), json.loads(data) if data else None
        except ValueError:
            return int(resp.status), {"message": data.decode(errors="replace")}

    def get(self, path: str, **q: Any) -> Any:
        """GET ``path``; returns the object, or None on 404.

        Raises:
            RuntimeError: any other non-2xx answer."""
        code, body = self.request("GET", path, query=q or None)
        if code == 404:
            return None
        if code >= 300:
            raise RuntimeError(f"GET {path}: HTTP {code}: {(body or {}).get('message')}")
        return body


# ---------------------------------------------------------------------------------------
# env, quantities, volumes

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$(NAME)`` → env value when defined (left as is
    otherwise), ``$$`` → ``$`` (kubernetes.io/docs/tasks/inject-data-application/
    define-interdependent-environment-variables/)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


_SUFFIX = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def quantity(q: str | int | float) -> float:
    """Parse a Kubernetes resource quantity (``"500m"``, ``"1Gi"``, ``"2"``, ``"1e3"``).

    Raises:
        ConfigError: not a quantity."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ConfigError(f"invalid resource quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _field_value(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"unsupported fieldRef.fieldPath {path!r}")


# ---------------------------------------------------------------------------------------
# per-pod worker


@dataclass
class Container:
    """Runtime state of one container of a pod (k8s ContainerState dicts)."""

    name: str
    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    record: ProcRecord | None = None
    restart_count: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    started_mono: float = 0.0
    done: bool = False  # terminated and will not restart

    @property
    def running(self) -> bool:
        return self.proc is not None and "running" in self.state

    @property
    def succeeded(self) -> bool:
        t = self.state.get("terminated") or {}
        return bool(t) and t.get("exitCode") == 0


class PodWorker(threading.Thread):
    """Runs one pod (identified by uid) until it is deleted; see the module docstring."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        # <ns>_<name>_<uid>, the name cut so the entry stays within NAME_MAX (255 bytes)
        self.dir = agent.pods_dir / f"{self.ns}_{self.pod_name[:120]}_{self.uid}"
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.gone = False  # the API object no longer exists
        self.stopping = False  # agent shutdown
        spec = pod["spec"]
        self.inits = [Container(c["name"], c, True) for c in spec.get("initContainers") or []]
        self.ctrs = [Container(c["name"], c, False) for c in spec.get("containers") or []]
        self.phase: str = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time: str | None = None
        self.env_base: dict[str, str] | None = None
        self.last_sent: dict[str, Any] | None = None
        self.kill_deadline: float | None = None
        self.final_deleted = False
        self.config_error: str | None = None
        self.config_retry = 0.0
        self.prepared = False
        self.retry = False  # an API call failed; try again in a second
        self.crashed = False  # the worker hit a bug; a new one takes the pod over
        self.adopt_terminal(pod)

    # ---- inputs from the watch thread
    def update(self, pod: dict[str, Any]) -> None:
        """Give the worker the latest version of its pod."""
        with self.lock:
            self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        """The pod was removed from the API: kill what runs and end the worker."""
        self.gone = True
        self.wake.set()

    def stop(self) -> None:
        """Agent shutdown: kill containers (SIGTERM, SIGKILL after 5 s), report nothing."""
        self.stopping = True
        self.wake.set()

    def adopt_terminal(self, pod: dict[str, Any]) -> None:
        """A pod already terminal when first seen (e.g. after an agent restart) is not run
        again: its reported state is kept."""
        st = pod.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed"):
            self.phase = st["phase"]
            self.reason, self.message = st.get("reason"), st.get("message")
            self.start_time = st.get("startTime")
            by_name = {
                s["name"]: s
                for s in (st.get("containerStatuses") or [])
                + (st.get("initContainerStatuses") or [])
            }
            for c in self.inits + self.ctrs:
                s = by_name.get(c.name, {})
                c.state = s.get("state") or {"terminated": {"exitCode": 0, "reason": "Completed"}}
                c.last_state = s.get("lastState") or {}
                c.restart_count = int(s.get("restartCount") or 0)
                c.done = True
            self.prepared = True
            self.last_sent = None

    # ---- helpers
    def log_file(self, ctr: str, restart: int) -> Path:
        """Log file of container ``ctr``'s run number ``restart`` (0-based)."""
        return self.dir / "logs" / ctr / f"{restart}.log"

    def find(self, name: str) -> Container | None:
        """The container (init or regular) called ``name``."""
        return next((c for c in self.inits + self.ctrs if c.name == name), None)

    def event(self, reason: str, message: str, c: Container | None, warning: bool = False) -> None:
        """Record a core/v1 Event on the pod, as the kubelet does (sent in the background)."""
        ref: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod", "namespace": self.ns, "name": self.pod_name,
            "uid": self.uid,
        }  # fmt: skip
        if c is not None:
            kind = "initContainers" if c.init else "containers"
            ref["fieldPath"] = f"spec.{kind}{{{c.name}}}"
        self.agent.event(self.ns, ref, reason, message, "Warning" if warning else "Normal")

    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    # ---- main loop
    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must not take the agent down; the pod is reported Failed
            log.exception("pod %s/%s: worker failed", self.ns, self.pod_name)
            self.crashed = True
            self._kill_all(signal.SIGKILL)
            self.phase, self.reason, self.message = (
                "Failed",
                "NodeAgentError",
                "node agent error; see its log",
            )
            with contextlib.suppress(Exception):
                self._report()
        finally:
            self.agent.worker_done(self)

    def _loop(self) -> None:
        if self.start_time is None:
            self.start_time = (self.pod.get("status") or {}).get("startTime") or now_iso()
        while True:
            with self.lock:
                pod = self.pod
            if self.stopping:
                self._shutdown_kill()
                return
            if self.gone:
                self._kill_all(signal.SIGKILL)
                return
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._terminate_for_deletion(pod)
            else:
                self._check_deadline(pod)
                if self.phase not in ("Succeeded", "Failed") and self.kill_deadline is None:
                    self._step(pod)
            self._finish_if_terminal()
            self._report()
            busy = any(c.proc is not None for c in self.inits + self.ctrs) or (
                self.phase not in ("Succeeded", "Failed")
            )
            self.wake.wait(TICK if busy else 1.0 if self.retry else None)
            self.wake.clear()

    # ---- setup
    def _prepare(self, pod: dict[str, Any]) -> None:
        """Directories, volumes, token + kubeconfig, common env.  Raises ConfigError."""
        spec = pod["spec"]
        for sub in ("tmp", "logs", "pids", "volumes"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        token: str | None = None
        sa_name = spec.get("serviceAccountName") or "default"
        if spec.get("automountServiceAccountToken") is not False:
            token = self.agent.pod_token(pod)
            (self.dir / "ca.crt").write_bytes(self.agent.ca_pem)
            from voicetrack_local.cluster import write_kubeconfig

            write_kubeconfig(
                self.dir / "kubeconfig",
                self.agent.server,
                self.dir / "ca.crt",
                user=f"system:serviceaccount:{self.ns}:{sa_name}",
                token=token,
                namespace=self.ns,
            )
        for vol in spec.get("volumes") or []:
            self._make_volume(pod, vol, token)
        venv_bin = str(Path(sys.executable).parent)
        base = {
            "PATH": os.pathsep.join(
                [venv_bin, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]
            ),
            "HOME": str(self.dir),
            "HOSTNAME": self.pod_name,
            "PYTHONUNBUFFERED": "1",
        }
        for k in ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR"):
            if k in os.environ:
                base[k] = os.environ[k]
        if token is not None:
            base["KUBECONFIG"] = str(self.dir / "kubeconfig")
        self.env_base = base
        self.prepared = True

    def _make_volume(self, pod: dict[str, Any], vol: dict[str, Any], token: str | None) -> None:
        d = self.dir / "volumes" / vol["name"]
        d.mkdir(parents=True, exist_ok=True)

        def write(rel: str, data: bytes) -> None:
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

        def from_map(kind: str, src: dict[str, Any], into: str = "") -> None:
            name = src.get("name") or src.get("secretName")
            if kind == "secret":
                obj = self.agent.kube.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
                data = {k: base64.b64decode(v) for k, v in ((obj or {}).get("data") or {}).items()}
            else:
                obj = self.agent.kube.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
                data = {k: v.encode() for k, v in ((obj or {}).get("data") or {}).items()}
                data.update(
                    {
                        k: base64.b64decode(v)
                        for k, v in ((obj or {}).get("binaryData") or {}).items()
                    }
                )
            if obj is None:
                if src.get("optional"):
                    return
                raise ConfigError(f'{kind} "{name}" not found (volume {vol["name"]!r})')
            items = src.get("items")
            for key, rel in (
                [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
            ):
                if key not in data:
                    if src.get("optional"):
                        continue
                    raise ConfigError(f"couldn't find key {key} in {kind} {self.ns}/{name}")
                write(os.path.join(into, rel), data[key])

        if "secret" in vol:
            from_map("secret", vol["secret"])
        elif "configMap" in vol:
            from_map("configMap", vol["configMap"])
        elif "downwardAPI" in vol:
            for item in vol["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    write(item["path"], _field_value(pod, item["fieldRef"]["fieldPath"]).encode())
        elif "projected" in vol:
            for src in vol["projected"].get("sources") or []:
                if "serviceAccountToken" in src and token:
                    write(src["serviceAccountToken"].get("path", "token"), token.encode())
                elif "configMap" in src:
                    from_map("configMap", src["configMap"])
                elif "secret" in src:
                    from_map("secret", src["secret"])
                elif "downwardAPI" in src:
                    for item in src["downwardAPI"].get("items") or []:
                        if "fieldRef" in item:
                            write(
                                item["path"],
                                _field_value(pod, item["fieldRef"]["fieldPath"]).encode(),
                            )

    def _container_env(self, pod: dict[str, Any], c: Container) -> dict[str, str]:
        """Environment of container ``c``: base, envFrom, then env (later wins), with
        ``$(VAR)`` expansion.  Raises ConfigError (missing Secret/ConfigMap/key)."""
        assert self.env_base is not None
        env = dict(self.env_base)
        spec = c.spec
        mounts = {m["name"]: m for m in spec.get("volumeMounts") or []}
        vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        tmp = self.dir / "tmp"
        empties = [n for n, m in mounts.items() if "emptyDir" in vols.get(n, {})]
        at_tmp = [n for n in empties if mounts[n]["mountPath"].rstrip("/") == "/tmp"]
        if at_tmp or empties:
            tmp = self.dir / "volumes" / (at_tmp or empties)[0]
        env["TMPDIR"] = str(tmp)
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                obj = self.agent.kube.get(f"/api/v1/namespaces/{self.ns}/configmaps/{ref['name']}")
                if obj is None and not ref.get("optional"):
                    raise ConfigError(f'configmap "{ref["name"]}" not found')
                for k, v in ((obj or {}).get("data") or {}).items():
                    env[prefix + k] = v
            elif "secretRef" in src:
                ref = src["secretRef"]
                obj = self.agent.kube.get(f"/api/v1/namespaces/{self.ns}/secrets/{ref['name']}")
                if obj is None and not ref.get("optional"):
                    raise ConfigError(f'secret "{ref["name"]}" not found')
                for k, v in ((obj or {}).get("data") or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode(errors="replace")
        for var in spec.get("env") or []:
            name = var["name"]
            if "value" in var or "valueFrom" not in var:
                env[name] = expand(str(var.get("value", "")), env)
                continue
            vf = var["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configmap"
                ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
                plural = "secrets" if kind == "secret" else "configmaps"
                obj = self.agent.kube.get(f"/api/v1/namespaces/{self.ns}/{plural}/{ref['name']}")
                data = (obj or {}).get("data") or {}
                if obj is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    if obj is None:
                        raise ConfigError(f'{kind} "{ref["name"]}" not found')
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind.capitalize()} "
                        f"{self.ns}/{ref['name']}"
                    )
                raw = data[ref["key"]]
                env[name] = (
                    base64.b64decode(raw).decode(errors="replace") if kind == "secret" else raw
                )
            elif "fieldRef" in vf:
                env[name] = _field_value(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = self._resource_value(vf["resourceFieldRef"], spec)
            else:
                raise ConfigError(f"env {name}: unsupported valueFrom {sorted(vf)}")
        return env

    def _resource_value(self, ref: dict[str, Any], spec: dict[str, Any]) -> str:
        res = ref["resource"]
        kind, _, what = res.partition(".")
        raw = ((spec.get("resources") or {}).get(kind) or {}).get(what)
        if raw is None:  # the kubelet falls back to node allocatable for unset limits
            raw = self.agent.capacity.get(what, "0")
        divisor = quantity(ref.get("divisor", "1"))
        return str(math.ceil(quantity(raw) / divisor))

    # ---- running
    def _step(self, pod: dict[str, Any]) -> None:
        if not self.prepared:
            if time.monotonic() < self.config_retry:
                return
            try:
                self._prepare(pod)
            except ConfigError as e:
                self._config_failed(str(e), self.inits + self.ctrs)
                return
            except Exception as e:  # API unreachable for a moment: try again shortly
                log.warning("pod %s/%s: prepare: %s", self.ns, self.pod_name, e)
                self.config_retry = time.monotonic() + 2
                return
        self._poll_exits()
        policy = self.restart_policy()
        pending_init = next((c for c in self.inits if not c.succeeded or c.proc is not None), None)
        if pending_init is not None:
            if not pending_init.running and not pending_init.done:
                self._maybe_start(pod, pending_init)
            if pending_init.done and policy == "Never":
                self.phase = "Failed"
            else:
                self.phase = "Pending"
            return
        for c in self.ctrs:
            if c.proc is None and not c.done:
                self._maybe_start(pod, c)
        self.phase = self._phase()

    def _phase(self) -> str:
        """Phase from container states (kubelet ``getPhase``)."""
        if any(c.running for c in self.ctrs):
            return "Running"
        if all(c.done for c in self.ctrs):
            return "Succeeded" if all(c.succeeded for c in self.ctrs) else "Failed"
        if any(c.restart_count > 0 or "terminated" in c.state for c in self.ctrs):
            return "Running"  # between restarts
        return "Pending"

    def _config_failed(self, msg: str, ctrs: list[Container]) -> None:
        self.config_retry = time.monotonic() + 2
        if self.config_error != msg:
            self.event("Failed", f"Error: {msg}", None, warning=True)
        self.config_error = msg
        for c in ctrs:
            if c.proc is None and not c.done:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": msg}}

    def _maybe_start(self, pod: dict[str, Any], c: Container) -> None:
        if time.monotonic() < c.next_start or time.monotonic() < self.config_retry:
            return
        if not c.spec.get("command"):
            msg = (
                f"container {c.name!r} has no command: the local node agent ignores "
                "images, so their entrypoints cannot run; set command"
            )
            if (c.state.get("waiting") or {}).get("reason") != "CreateContainerError":
                self.event("Failed", f"Error: {msg}", c, warning=True)
            c.state = {"waiting": {"reason": "CreateContainerError", "message": msg}}
            return
        try:
            env = self._container_env(pod, c)
        except ConfigError as e:
            self._config_failed(str(e), [c])
            return
        except Exception as e:  # API unreachable for a moment: try again shortly
            log.warning("pod %s/%s: env of %s: %s", self.ns, self.pod_name, c.name, e)
            self.config_retry = time.monotonic() + 2
            return
        command = [expand(str(x), env) for x in c.spec.get("command") or []]
        args = [expand(str(x), env) for x in c.spec.get("args") or []]
        exe = command[0] if "/" in command[0] else shutil.which(command[0], path=env["PATH"])
        logf = self.log_file(c.name, c.restart_count)
        logf.parent.mkdir(parents=True, exist_ok=True)
        started = now_iso()
        try:
            if exe is None:
                raise FileNotFoundError(f'exec: "{command[0]}": executable file not found in $PATH')
            with logf.open("ab") as out:
                proc = subprocess.Popen(
                    [exe, *command[1:], *args],
                    cwd=self.dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            msg = (
                str(e)
                if isinstance(e, FileNotFoundError) and e.args and len(e.args) == 1
                else (f"exec {command[0]!r}: {e.strerror or e}")
            )
            logf.write_text(f"StartError: {msg}\n")
            self.event("Failed", f"Error: {msg}", c, warning=True)
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": msg,
                    "startedAt": started,
                    "finishedAt": now_iso(),
                }
            }
            self._after_exit(c, 128)
            return
        ticks = _ticks(proc.pid)
        c.proc = proc
        c.record = ProcRecord(f"{self.ns}/{self.pod_name}/{c.name}", proc.pid, ticks, [exe])
        c.record.save(self.dir / "pids" / f"{c.name}.json")
        c.state = {"running": {"startedAt": started}}
        self.event("Started", f"Started container {c.name}", c)
        c.started_mono = time.monotonic()
        self.config_error = None

    def _poll_exits(self) -> None:
        for c in self.inits + self.ctrs:
            if c.proc is None:
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            code = rc if rc >= 0 else 128 - rc
            if c.record:  # container teardown: nothing of its group survives it
                c.record.signal_group(signal.SIGKILL)
                (self.dir / "pids" / f"{c.name}.json").unlink(missing_ok=True)
            started = (c.state.get("running") or {}).get("startedAt") or now_iso()
            c.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": now_iso(),
                    "containerID": f"voicetrack://{c.proc.pid}",
                }
            }
            c.proc, c.record = None, None
            self._after_exit(c, code)

    def _after_exit(self, c: Container, code: int) -> None:
        policy = self.restart_policy()
        if self.kill_deadline is not None or self.reason == "DeadlineExceeded":
            c.done = True
            return
        if c.init:
            restart = code != 0 and policy != "Never"
        else:
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart:
            c.done = True
            return
        if time.monotonic() - c.started_mono > 600:  # ran long enough: back-off resets
            c.backoff = BACKOFF_START
        c.next_start = time.monotonic() + c.backoff
        c.last_state = c.state
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {c.backoff:.0f}s restarting failed container={c.name} "
                f"pod={self.pod_name}_{self.ns}({self.uid})",
            }
        }
        self.event("BackOff", f"Back-off restarting failed container {c.name}", c, warning=True)
        c.backoff = min(c.backoff * 2, BACKOFF_MAX)
        c.restart_count += 1

    def _check_deadline(self, pod: dict[str, Any]) -> None:
        ads = pod["spec"].get("activeDeadlineSeconds")
        if ads is None or self.phase in ("Succeeded", "Failed") or self.kill_deadline is not None:
            return
        started = parse_time(self.start_time)
        if started is not None and time.time() - started >= float(ads):
            self.reason = "DeadlineExceeded"
            self.message = "Pod was active on the node longer than the specified deadline"
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            self._begin_kill(float(grace))

    def _begin_kill(self, grace: float) -> None:
        self.kill_deadline = time.monotonic() + grace
        for c in self.inits + self.ctrs:
            if c.proc is None:
                c.done = True  # waiting or in back-off: it will not start any more
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.proc.pid, signal.SIGTERM)  # like a runtime: SIGTERM to the main process
            self.event("Killing", f"Stopping container {c.name}", c)

    def _kill_progress(self) -> bool:
        """Drive a kill started by :meth:`_begin_kill`; True once nothing runs."""
        self._poll_exits()
        if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
            for c in self.inits + self.ctrs:
                if c.record is not None:
                    c.record.signal_group(signal.SIGKILL)
        for c in self.inits + self.ctrs:
            if c.proc is None and not c.done:
                c.done = True
        return all(c.proc is None for c in self.inits + self.ctrs)

    def _finish_if_terminal(self) -> None:
        deadline_kill = self.kill_deadline is not None and self.reason == "DeadlineExceeded"
        if deadline_kill and self._kill_progress():
            self.phase = "Failed"

    def _terminate_for_deletion(self, pod: dict[str, Any]) -> bool:
        """Graceful deletion, one step per call; True once the final delete was sent."""
        if self.final_deleted:
            return True  # wait for the DELETED event (finalizers may hold the object)
        if self.kill_deadline is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            self._begin_kill(float(grace))
        if not self._kill_progress():
            return False
        for c in self.inits + self.ctrs:
            if "terminated" not in c.state:  # never started, or waiting in back-off
                c.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "finishedAt": now_iso(),
                    }
                }
        if self.phase not in ("Succeeded", "Failed"):
            self.phase = "Succeeded" if all(c.succeeded for c in self.ctrs) else "Failed"
        self._report()
        try:
            code, body = self.agent.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except Exception as e:  # apiserver away for a moment: the next tick retries
            log.warning("pod %s/%s: final delete: %s", self.ns, self.pod_name, e)
            self.retry = True
            return False
        if code >= 300 and code not in (404, 409):
            log.warning(
                "pod %s/%s: final delete: HTTP %s %s",
                self.ns,
                self.pod_name,
                code,
                (body or {}).get("message"),
            )
            self.retry = True
            return False
        self.final_deleted = True
        return True

    def _kill_all(self, sig: int) -> None:
        for c in self.inits + self.ctrs:
            if c.record is not None:
                c.record.signal_group(sig)
            if c.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=5)
                (self.dir / "pids" / f"{c.name}.json").unlink(missing_ok=True)
                c.proc, c.record = None, None

    def _shutdown_kill(self) -> None:
        for c in self.inits + self.ctrs:
            if c.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            c.proc is not None and c.proc.poll() is None for c in self.inits + self.ctrs
        ):
            time.sleep(0.05)
        self._kill_all(signal.SIGKILL)

    # ---- status
    def _status(self) -> dict[str, Any]:
        def cs(c: Container) -> dict[str, Any]:
            out: dict[str, Any] = {
                "name": c.name,
                "image": c.spec.get("image") or "none",
                "imageID": "",
                "ready": c.running and not c.init,
                "restartCount": c.restart_count,
                "started": c.running,
                "state": dict(c.state),
                "lastState": dict(c.last_state),
            }
            if c.proc is not None:
                out["containerID"] = f"voicetrack://{c.proc.pid}"
            elif "terminated" in c.state and c.state["terminated"].get("containerID"):
                out["containerID"] = c.state["terminated"]["containerID"]
            if "terminated" in c.state:
                out["state"] = {
                    "terminated": {
                        k: v for k, v in c.state["terminated"].items() if k != "containerID"
                    }
                }
            if "terminated" in c.last_state:
                out["lastState"] = {
                    "terminated": {
                        k: v for k, v in c.last_state["terminated"].items() if k != "containerID"
                    }
                }
            return out

        with self.lock:
            old_conds = {
                c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []
            }
        inits_done = all(c.succeeded for c in self.inits)
        ready = self.phase == "Running" and all(c.running for c in self.ctrs)
        terminal = self.phase in ("Succeeded", "Failed")
        mine = {
            "PodReadyToStartContainers": self.prepared and not terminal,
            "Initialized": inits_done,
            "ContainersReady": ready,
            "Ready": ready,
        }
        conds = [c for t, c in old_conds.items() if t not in mine]
        for t, val in mine.items():
            s = "True" if val else "False"
            prev = old_conds.get(t)
            cond: dict[str, Any] = {
                "type": t,
                "status": s,
                "lastTransitionTime": prev["lastTransitionTime"]
                if prev and prev.get("status") == s and prev.get("lastTransitionTime")
                else now_iso(),
                "lastProbeTime": None,
            }
            if not val and t in ("ContainersReady", "Ready"):
                cond["reason"] = "PodCompleted" if terminal else "ContainersNotReady"
            if not val and t == "Initialized" and not terminal:
                cond["reason"] = "ContainersNotInitialized"
            conds.append(cond)
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [cs(c) for c in self.ctrs],
            "reason": self.reason,
            "message": self.message,
        }
        if self.inits:
            status["initContainerStatuses"] = [cs(c) for c in self.inits]
        return status

    def _comparable(self, st: dict[str, Any]) -> dict[str, Any]:
        conds = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st["conditions"]
        ]
        return {**st, "conditions": conds}

    def _report(self) -> None:
        if self.gone or self.final_deleted:
            return
        st = self._status()
        cmp = self._comparable(st)
        if cmp == self.last_sent:
            return
        try:
            code, body = self.agent.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status",
                body={"metadata": {"uid": self.uid}, "status": st},
                content_type="application/merge-patch+json",
            )
        except Exception as e:  # apiserver away for a moment: the next tick retries
            log.warning("pod %s/%s: status update: %s", self.ns, self.pod_name, e)
            self.retry = True
            return
        self.retry = code >= 300 and code != 404
        if code == 404:
            self.gone = True
        elif code >= 300:
            log.warning(
                "pod %s/%s: status update: HTTP %s %s",
                self.ns,
                self.pod_name,
                code,
                (body or {}).get("message"),
            )
        else:
            self.last_sent = cmp
            with self.lock:
                meta = (body or {}).get("metadata", {})
                newer = int(meta.get("resourceVersion", 0)) >= int(
                    self.pod["metadata"].get("resourceVersion", 0)
                )
                if meta.get("uid") == self.uid and newer:
                    self.pod = body


def _ticks(pid: int) -> int:
    from voicetrack_local.procs import start_ticks

    t = start_ticks(pid)
    return t if t is not None else -1


# ---------------------------------------------------------------------------------------
# kubelet log endpoint


class _LogHandler(BaseHTTPRequestHandler):
    server: _LogServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("logs: " + format, *args)

    def _text(self, code: int, msg: str) -> None:
        data = msg.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        what = urllib.parse.urlsplit(self.path).path.strip("/").split("/")[0]
        self._text(
            501,
            f"{what} is not supported by the voicetrack local node agent "
            "(it runs pods as plain processes: only container logs are served)",
        )

    do_PUT = do_POST

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._text(200, "ok")
            return
        if parts[0] in ("exec", "attach", "portForward", "run"):
            self.do_POST()
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._text(404, f"the local node agent serves only /containerLogs (not {url.path})")
            return
        _, ns, pod, ctr = parts
        worker = self.server.agent.worker_for(ns, pod)
        if worker is None:
            self._text(404, f'pod "{pod}" not found in namespace "{ns}" on this node')
            return
        c = worker.find(ctr)
        if c is None:
            self._text(400, f"container {ctr} is not valid for pod {pod}")
            return
        previous = q.get("previous", ["false"])[0] == "true"
        if previous:
            if c.restart_count == 0:
                self._text(400, f'previous terminated container "{ctr}" in pod "{pod}" not found')
                return
            path = worker.log_file(ctr, c.restart_count - 1)
        else:
            path = worker.log_file(ctr, c.restart_count)
            if not path.exists() and c.restart_count > 0 and "waiting" in c.state:
                path = worker.log_file(ctr, c.restart_count - 1)
        if not path.exists():
            reason = (c.state.get("waiting") or {}).get("reason", "ContainerCreating")
            self._text(400, f'container "{ctr}" in pod "{pod}" is waiting to start: {reason}')
            return
        follow = q.get("follow", ["false"])[0] == "true" and not previous
        tail = int(q["tailLines"][0]) if "tailLines" in q else None
        limit = int(q["limitBytes"][0]) if "limitBytes" in q else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        sent = 0
        try:
            with path.open("rb") as fh:
                data = fh.read()
                if tail is not None:
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-tail:]) if tail > 0 else b""
                if limit is not None:
                    data = data[:limit]
                self.wfile.write(data)
                self.wfile.flush()
                sent += len(data)
                while follow and (limit is None or sent < limit):
                    chunk = fh.read(65536)
                    if chunk:
                        if limit is not None:
                            chunk = chunk[: limit - sent]
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                        continue
                    cur = worker.find(ctr)
                    if (
                        cur is None
                        or worker.gone
                        or worker.log_file(ctr, cur.restart_count) != path
                        or not cur.running
                    ):
                        rest = fh.read()
                        if rest:
                            self.wfile.write(rest)
                        break
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass


class _LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, agent: NodeAgent, port: int, cert: Path, key: Path, ca: Path) -> None:
        super().__init__(("127.0.0.1", port), _LogHandler)
        self.agent = agent
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.socket = ctx.wrap_socket(self.socket, server_side=True)


# ---------------------------------------------------------------------------------------
# the agent


class NodeAgent:
    """Registers the node, keeps its Lease, watches its pods and runs them (one
    :class:`PodWorker` thread each), serves container logs.  :meth:`run` blocks until
    :meth:`shutdown` (SIGTERM/SIGINT in ``main``)."""

    def __init__(self, state_dir: Path) -> None:
        cfg = json.loads((state_dir / "cluster.json").read_text())
        self.state_dir = state_dir
        self.node: str = cfg["node"]
        self.port: int = cfg["ports"]["kubelet"]
        self.server = f"https://127.0.0.1:{cfg['ports']['apiserver']}"
        self.kube = Kube(state_dir / "kubeconfig")
        self.watch_kube = Kube(state_dir / "kubeconfig", pool=4)
        self.pods_dir = state_dir / "agent" / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
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
        self.logs = _LogServer(
            self,
            self.port,
            state_dir / "pki" / "kubelet.crt",
            state_dir / "pki" / "kubelet.key",
            state_dir / "pki" / "ca.crt",
        )

    # ---- used by workers / log server
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
        """Called by a worker thread as it ends: forget it and remove its directory once
        the pod is gone (or was finally deleted) or the agent stops."""
        with self.lock:
            ended = worker.gone or worker.final_deleted or worker.crashed
            if self.workers.get(worker.uid) is worker and ended:
                del self.workers[worker.uid]
                if self.by_name.get((worker.ns, worker.pod_name)) == worker.uid:
                    del self.by_name[(worker.ns, worker.pod_name)]
        if worker.gone or worker.final_deleted:
            shutil.rmtree(worker.dir, ignore_errors=True)

    # ---- node and lease
    def _node_status(self) -> dict[str, Any]:
        t = now_iso()
        conds = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": ty,
                    "status": s,
                    "reason": r,
                    "message": "voicetrack node agent",
                    "lastHeartbeatTime": t,
                    "lastTransitionTime": self._since,
                }
                for ty, s, r in conds
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "voicetrack local node agent",
                "containerRuntimeVersion": "voicetrack://0.1",
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        """Create the Node (or keep the existing one) and patch its status to Ready."""
        self._since = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "voicetrack-local",
                },
            },
        }
        code, resp = self.kube.request("POST", "/api/v1/nodes", body=body)
        if code >= 300 and code != 409:
            raise RuntimeError(f"register node: HTTP {code}: {(resp or {}).get('message')}")
        self._patch_node_status()

    def _patch_node_status(self) -> None:
        code, resp = self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{self.node}/status",
            body={"status": self._node_status()},
            content_type="application/strategic-merge-patch+json",
        )
        if code >= 300:
            raise RuntimeError(f"node status: HTTP {code}: {(resp or {}).get('message')}")

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {
            "holderIdentity": self.node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        code, resp = self.kube.request(
            "PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json"
        )
        if code >= 300 and code != 404:
            raise RuntimeError(f"lease renewal: HTTP {code}: {(resp or {}).get('message')}")
        if code == 404:
            node = self.kube.get(f"/api/v1/nodes/{self.node}")
            owner = (
                [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node,
                        "uid": node["metadata"]["uid"],
                    }
                ]
                if node
                else []
            )
            code, resp = self.kube.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node,
                        "namespace": "kube-node-lease",
                        "ownerReferences": owner,
                    },
                    "spec": spec,
                },
            )
            if code >= 300:
                raise RuntimeError(f"lease create: HTTP {code}: {(resp or {}).get('message')}")

    def _node_ready_in_api(self) -> bool:
        """True when the API's copy of our Node has condition Ready=True.  The node lifecycle
        controller sets it Unknown when it saw no heartbeat for its grace period (its
        informers can lag our renewals after an apiserver restart); only we set it back.

        Raises:
            RuntimeError: the Node no longer exists, or the API answered with an error."""
        node = self.kube.get(f"/api/v1/nodes/{self.node}")
        if node is None:
            raise RuntimeError(f"node {self.node} not found")
        conds = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _heartbeat(self, last_status: float) -> float:
        """One heartbeat: renew the Lease; re-post node status when the API does not show
        the node Ready or ``STATUS_REPORT_SECONDS`` passed since ``last_status`` (monotonic
        s).  Returns the new ``last_status``.  Raises whatever the API calls raise."""
        self._renew_lease()
        due = time.monotonic() - last_status >= STATUS_REPORT_SECONDS
        if not due and self._node_ready_in_api():
            return last_status
        if not due:
            log.info("node %s is not Ready in the API; reporting its status again", self.node)
            self._since = now_iso()  # a transition back to Ready
        self._patch_node_status()
        return time.monotonic()

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        wait = float(RENEW_SECONDS)
        retry = 0.5
        while not self.stop_event.wait(wait):
            try:
                last_status = self._heartbeat(last_status)
                wait, retry = float(RENEW_SECONDS), 0.5
            except Exception as e:  # keep beating through apiserver hiccups, retrying soon
                log.warning("heartbeat (retry in %.1f s): %s", retry, e)
                wait, retry = retry, min(retry * 2, HEARTBEAT_RETRY_MAX)

    # ---- pods
    def _dispatch(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if w is None:
                w = PodWorker(self, pod)
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
                for pod in lst.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._dispatch(pod)
                with self.lock:
                    stale = [u for u in self.workers if u not in seen]
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
        """Register, then serve until :meth:`shutdown`; finally stop every pod process."""
        for attempt in range(100):
            try:
                self.register()
                self._renew_lease()
                break
            except Exception as e:
                if attempt == 99 or self.stop_event.is_set():
                    raise
                log.info("register: %s (retrying)", e)
                self.stop_event.wait(0.5)
        threading.Thread(target=self.logs.serve_forever, name="logs", daemon=True).start()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
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
        self.logs.shutdown()

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop (safe from a signal handler)."""
        self.stop_event.set()


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m voicetrack_local.nodeagent --state-dir DIR``."""
    parser = argparse.ArgumentParser(description="Voicetrack local node agent")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--verbose", action="store_true")
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    agent = NodeAgent(ns.state_dir.resolve())
    signal.signal(signal.SIGTERM, lambda *_: agent.shutdown())
    signal.signal(signal.SIGINT, lambda *_: agent.shutdown())
    agent.run()


if __name__ == "__main__":
    main()
