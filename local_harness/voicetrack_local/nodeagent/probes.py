"""Container probes as the kubelet runs them (kubernetes.io/docs/tasks/configure-pod-
container/configure-liveness-readiness-startup-probes/ and the API reference, Probe):

* ``startupProbe``: until it succeeds no other probe runs and the container is not
  ``started``; ``failureThreshold`` failures kill the container (restart by policy);
* ``livenessProbe``: ``failureThreshold`` consecutive failures kill the container, which
  then restarts per ``restartPolicy``;
* ``readinessProbe``: the container is ready after ``successThreshold`` consecutive
  successes and unready after ``failureThreshold`` failures; a container with no readiness
  probe is ready once started; readiness feeds ContainersReady and Ready.

Defaults: ``initialDelaySeconds`` 0, ``periodSeconds`` 10, ``timeoutSeconds`` 1,
``successThreshold`` 1, ``failureThreshold`` 3.  Handlers: ``httpGet`` (success: status
200–399; ``host`` defaults to the pod IP, ``podspec.pod_ip``; HTTPS without certificate
checks), ``tcpSocket`` (a connection opens), ``exec`` (exit code 0 within the time-out).
A pod IP that refuses an ``httpGet``/``tcpSocket`` probe gets a second try at 127.0.0.1
(:func:`run_handler`), which counts only while the container has not yet been answered at
its pod IP and only when the listener there is a process of this pod's
(:mod:`.listeners`): another process listening on 127.0.0.1 and that port passes nothing.

:class:`ProbeState` is pure (times come in as monotonic seconds); :func:`run_handler`
performs one probe.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voicetrack_local.nodeagent.listeners import loopback_owner_error
from voicetrack_local.nodeagent.podspec import NODE_IP, ConfigError

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")


@dataclass
class ProbeState:
    """One probe of one container run: its settings and its counters.

    Attributes:
        kind: ``startupProbe``, ``livenessProbe`` or ``readinessProbe``.
        spec: the Probe dict.
        started: monotonic seconds the container started.
        result: the current verdict: None before the first decision, then True / False.
        next_at: monotonic time of the next probe.
        pod_ip_answered: a probe of this container start succeeded at the pod IP itself;
            from then on a refusal there is a failure, with no second try at 127.0.0.1
            (where another pod may listen on the same port)."""

    kind: str
    spec: dict[str, Any]
    started: float
    result: bool | None = None
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    pod_ip_answered: bool = False

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds") or 0)

    @property
    def period(self) -> float:
        """``periodSeconds`` (default 10)."""
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        """``timeoutSeconds`` (default 1)."""
        return float(self.spec.get("timeoutSeconds") or 1)

    def due(self, now: float) -> bool:
        """Whether a probe should run at monotonic time ``now``."""
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> bool | None:
        """Count one probe outcome at ``now``; returns the new verdict when it changed
        (True: succeeded / ready; False: failed its ``failureThreshold``), else None.  A
        liveness or startup verdict of False starts counting anew (the container is
        restarted)."""
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            need = int(self.spec.get("successThreshold") or 1)
            if self.result is not True and self.successes >= need:
                self.result = True
                return True
            return None
        self.failures, self.successes = self.failures + 1, 0
        threshold = int(self.spec.get("failureThreshold") or 3)
        if self.failures >= threshold and self.result is not False:
            self.result = False
            if self.kind != "readinessProbe":
                self.failures = 0
            return False
        return None


def probe_states(container: Mapping[str, Any], started: float) -> dict[str, ProbeState]:
    """The probes ``container`` declares, by kind, for a run that started at ``started``
    (monotonic s)."""
    return {k: ProbeState(k, dict(container[k]), started) for k in KINDS if container.get(k)}


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ConfigError(f"probe port {value!r}: no container port of that name")


def run_handler(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    exec_run: Callable[[list[str], float], int],
    host: str = NODE_IP,
    fallback: bool = True,
    pod_pids: Callable[[], Iterable[int]] | None = None,
) -> tuple[bool, str]:
    """Perform one probe ``spec`` of ``container``; returns ``(success, message)``: the
    message says why a probe failed, and is empty for a success at ``host`` itself.

    Args:
        exec_run: runs an ``exec`` probe's command with a time-out (s) in the container's
            runtime and returns its exit code (raising ``subprocess.TimeoutExpired``).
        host: the pod IP (``httpGet.host`` and ``tcpSocket.host`` override it).
        fallback: allow the second try below (the caller turns it off once the container
            was answered at its pod IP: see ``ProbeState.pod_ip_answered``).
        pod_pids: the host pids of the pod's main processes (called only for the second
            try); None: none known, so no answer at 127.0.0.1 is the pod's.

    A connection the pod IP refuses is tried once more at the node's loopback (127.0.0.1),
    which every local pod shares: a process of this pod that binds 127.0.0.1 (what the
    local node's pods were told before each had an address of its own) still passes, where
    a real pod's would fail; the success's message then says so. That answer counts only
    when the socket listening at 127.0.0.1:<port> is held by a process of the pod (a main
    process, a descendant or a member of its session: `listeners.loopback_owner_error`):
    another pod's or a hostNetwork pod's listener there must not keep a pod that never
    bound its own address alive or ready. A failure's message names both attempts."""
    ok, msg = _attempt(spec, container, exec_run, host)
    explicit = (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("host")
    if ok or not fallback or host == NODE_IP or explicit or _REFUSED not in msg:
        return ok, "" if ok else msg
    # whose socket answers at 127.0.0.1: decided before the attempt, so that a probe of a
    # port held by someone else sends that process nothing
    handler = spec.get("httpGet") or spec.get("tcpSocket") or {}
    try:
        port = _port(handler.get("port"), container)
    except ConfigError as e:  # unreachable: the first attempt resolved it
        return False, f"{msg}; at {NODE_IP}: {e}"
    foreign = loopback_owner_error(port, pod_pids() if pod_pids is not None else [])
    if foreign is not None:
        return False, f"{msg}; at {NODE_IP}: {foreign}"
    ok, again = _attempt(spec, container, exec_run, NODE_IP)
    if ok:
        return True, f"answered at {NODE_IP}, not at the pod IP {host}"
    return False, f"{msg}; at {NODE_IP}: {again}"


_REFUSED = "Connection refused"


def run_probe(
    st: ProbeState,
    container: Mapping[str, Any],
    exec_run: Callable[[list[str], float], int],
    host: str,
    pod_pids: Callable[[], Iterable[int]] | None = None,
) -> tuple[bool, str]:
    """`run_handler` for the probe ``st`` of ``container`` at the pod IP ``host``, with the
    second try at 127.0.0.1 only until this container start has been answered at ``host``
    itself (then ``st.pod_ip_answered`` is set), and only to a listener that ``pod_pids``'
    processes hold. Returns ``(success, message)`` as `run_handler` does; the caller does
    not count the outcome (``st.record``)."""
    ok, msg = run_handler(st.spec, container, exec_run, host, fallback=not st.pod_ip_answered,
                          pod_pids=pod_pids)  # fmt: skip
    if ok and not msg:
        st.pod_ip_answered = True
    return ok, msg


def _attempt(spec: Mapping[str, Any], container: Mapping[str, Any],
             exec_run: Callable[[list[str], float], int], host: str) -> tuple[bool, str]:
    timeout = float(spec.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            scheme = str(h.get("scheme") or "HTTP").lower()
            path = str(h.get("path") or "/")
            url = f"{scheme}://{h.get('host') or host}:{_port(h['port'], container)}{path}"
            req = urllib.request.Request(url, headers={"User-Agent": "kube-probe/1.36"})
            for hd in h.get("httpHeaders") or []:
                req.add_header(hd["name"], hd["value"])
            ctx = ssl._create_unverified_context() if scheme == "https" else None
            try:
                with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                    code = resp.status
            except urllib.error.HTTPError as e:
                code = e.code
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            addr = (t.get("host") or host, _port(t["port"], container))
            with socket.create_connection(addr, timeout=timeout):
                return True, ""
        if "exec" in spec:
            cmd = [str(x) for x in spec["exec"].get("command") or []]
            code = exec_run(cmd, timeout)
            return code == 0, f"command {cmd!r} exited with {code}"
        if "grpc" in spec:
            return False, "grpc probes are not supported by the local node agent"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    except ConfigError as e:
        return False, str(e)
    except OSError as e:
        return False, f"probe failed: {e}"
    return False, "probe has no handler"
