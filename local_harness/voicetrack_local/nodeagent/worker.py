"""The per-pod worker thread: prepares a pod's private directory, runs its containers as
local processes, restarts them by policy, handles deadlines and graceful deletion, and
reports the pod's status (see the package docstring for the kubelet behaviour it follows).
Here: the pod's lifecycle loop, its probes and its status; a container's start and exit are
:mod:`.runs`, deadlines, deletion and shutdown :mod:`.termination`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicetrack_local.nodeagent.container import (
    Container,
)
from voicetrack_local.nodeagent.kube import now_iso
from voicetrack_local.nodeagent.podspec import (
    ConfigError,
    service_env,
)
from voicetrack_local.nodeagent.podstatus import (
    adopt_terminal,
    comparable,
    pod_phase,
    pod_status,
)
from voicetrack_local.nodeagent.probes import run_probe
from voicetrack_local.nodeagent.runs import config_failed, maybe_start, poll_exits
from voicetrack_local.nodeagent.sandbox import prepare_sandbox
from voicetrack_local.nodeagent.termination import (
    check_deadline,
    finish_if_terminal,
    kill_all,
    shutdown_kill,
    terminate_for_deletion,
)

if TYPE_CHECKING:
    from voicetrack_local.nodeagent.agent import NodeAgent

log = logging.getLogger("voicetrack.nodeagent")

#: worker loop period while something runs, seconds
TICK = 0.2


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
        #: the pod's IP, held for it until it is gone (the same after an agent restart)
        self.ip: str = agent.pod_ips.assign(pod)
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.gone = False  # the API object no longer exists
        self.stopping = False  # agent shutdown
        spec = pod["spec"]
        self.inits = [agent.new_container(c, True) for c in spec.get("initContainers") or []]
        self.ctrs = [agent.new_container(c, False) for c in spec.get("containers") or []]
        self.envs: dict[str, dict[str, str]] = {}  # each container's environment, for exec
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
        if adopt_terminal(st, self.inits + self.ctrs):
            self.phase = st["phase"]
            self.reason, self.message = st.get("reason"), st.get("message")
            self.start_time = st.get("startTime")
            self.prepared = True
            self.last_sent = None

    # ---- helpers
    def log_file(self, ctr: str, restart: int) -> Path:
        """Log file of container ``ctr``'s run number ``restart`` (0-based)."""
        return self.dir / "logs" / ctr / f"{restart}.log"

    def with_ip(self, pod: dict[str, Any]) -> dict[str, Any]:
        """``pod`` carrying its assigned IP as ``status.podIP`` (a shallow copy), for the
        downward API (``podspec.pod_ip``) before the status reports it."""
        return {**pod, "status": {**(pod.get("status") or {}), "podIP": self.ip}}

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

    def api_failed(self, what: str, code: int, body: Any) -> None:
        """Log a failed API call (code 0: no answer) and have the loop retry soon."""
        status = f"HTTP {code} " if code else ""
        log.warning("pod %s/%s: %s: %s%s", self.ns, self.pod_name, what, status,
                    (body or {}).get("message"))  # fmt: skip
        self.retry = True

    def restart_policy(self) -> str:
        """The pod's ``spec.restartPolicy`` (default ``Always``)."""
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    # ---- main loop
    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug must not take the agent down; the pod is reported Failed
            log.exception("pod %s/%s: worker failed", self.ns, self.pod_name)
            self.crashed = True
            kill_all(self, signal.SIGKILL)
            self.phase, self.reason, self.message = (
                "Failed",
                "NodeAgentError",
                "node agent error; see its log",
            )
            with contextlib.suppress(Exception):
                self.report()
        finally:
            self.agent.worker_done(self)

    def _loop(self) -> None:
        if self.start_time is None:
            self.start_time = (self.pod.get("status") or {}).get("startTime") or now_iso()
        while True:
            with self.lock:
                pod = self.pod
            if self.stopping:
                shutdown_kill(self)
                return
            if self.gone:
                kill_all(self, signal.SIGKILL)
                return
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                terminate_for_deletion(self, pod)
            else:
                check_deadline(self, pod)
                if self.phase not in ("Succeeded", "Failed") and self.kill_deadline is None:
                    self._step(self.with_ip(pod))
            finish_if_terminal(self)
            self.report()
            busy = any(c.proc is not None for c in self.inits + self.ctrs) or (
                self.phase not in ("Succeeded", "Failed")
            )
            self.wake.wait(TICK if busy else 1.0 if self.retry else None)
            self.wake.clear()

    # ---- running
    def _step(self, pod: dict[str, Any]) -> None:
        if not self.prepared:
            if time.monotonic() < self.config_retry:
                return
            try:
                a = self.agent
                self.env_base = prepare_sandbox(
                    pod, self.dir, a.kube, server=a.server, ca_pem=a.ca_pem, pod_token=a.pod_token
                )
                if a.podman is not None:  # a container in its image: its own PATH, HOME …
                    self.env_base = {
                        "HOSTNAME": str(pod["spec"].get("hostname") or self.pod_name),
                        **service_env(a.api_host, a.api_port),
                    }
                    for v in pod["spec"].get("volumes") or []:  # the kubelet's emptyDir: 0777
                        if "emptyDir" in v:
                            (self.dir / "volumes" / v["name"]).chmod(0o777)
                self.prepared = True
            except ConfigError as e:
                config_failed(self, str(e), self.inits + self.ctrs)
                return
            except Exception as e:  # API unreachable for a moment: try again shortly
                log.warning("pod %s/%s: prepare: %s", self.ns, self.pod_name, e)
                self.config_retry = time.monotonic() + 2
                return
        poll_exits(self)
        pending_init = next((c for c in self.inits if not c.succeeded or c.proc is not None), None)
        if pending_init is not None:
            if not pending_init.running and not pending_init.done:
                maybe_start(self, pod, pending_init)
        else:
            for c in self.ctrs:
                if c.proc is None and not c.done:
                    maybe_start(self, pod, c)
        for c in self.ctrs:
            if c.running:
                self._probe(pod, c)
        self.phase = pod_phase(self.inits, self.ctrs, self.restart_policy())

    # ---- exec and probes
    def exec_command(
        self, c: Container, command: list[str], interactive: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """``(argv, env)`` that run ``command`` in container ``c`` its runtime's way (``podman
        exec``, or a local process with the container's environment); ``interactive``: keep
        its stdin open."""
        podman = self.agent.podman
        env = podman.env if podman is not None else self.envs.get(c.name, {})
        return c.exec_argv(command, interactive), env

    def _exec(self, c: Container, command: list[str], timeout: float) -> int:
        """Run an exec probe's ``command`` in ``c`` (its runtime's way); its exit code.

        Raises:
            subprocess.TimeoutExpired: it ran longer than ``timeout`` s."""
        argv, env = self.exec_command(c, command)
        return subprocess.run(argv, env=env, cwd=self.dir, capture_output=True,
                              timeout=timeout, check=False).returncode  # fmt: skip

    def _pod_pids(self) -> list[int]:
        """Host pids of the main processes of this pod's running containers (a sidecar's
        listener at 127.0.0.1 is the pod's as well: the probes' fallback)."""
        return [p for c in [*self.inits, *self.ctrs] if c.running for p in c.main_pids()]

    def _probe(self, pod: dict[str, Any], c: Container) -> None:
        """Run ``c``'s due probes (startup first, then liveness and readiness); a failed
        startup or liveness probe stops the container (SIGTERM, SIGKILL after the grace
        period) and the restart policy decides what follows."""
        now = time.monotonic()
        if c.kill_at is not None:
            if now >= c.kill_at:
                c.signal_group(signal.SIGKILL)
            return
        startup = c.probes.get("startupProbe")
        kinds = ["startupProbe"] if startup and startup.result is not True else [
            "livenessProbe", "readinessProbe"]  # fmt: skip
        for kind in kinds:
            st = c.probes.get(kind)
            if st is None or not st.due(now):
                continue
            ok, msg = run_probe(st, c.spec, lambda cmd, t: self._exec(c, cmd, t),
                                self.ip, self._pod_pids)
            if ok and msg and st.successes == 0:  # once per run of successes
                log.warning("%s/%s %s %s: %s (bind $(POD_IP) or 0.0.0.0)", self.ns,
                            self.pod_name, c.name, kind, msg)
            verdict = st.record(ok, time.monotonic())
            label = kind[: -len("Probe")].capitalize()
            if not ok:
                self.event("Unhealthy", f"{label} probe failed: {msg}", c, warning=True)
            if verdict is False and kind != "readinessProbe":
                self.event("Killing", f"Container {c.name} failed {label.lower()} probe, will "
                           "be restarted", c)  # fmt: skip
                grace = st.spec.get("terminationGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                c.kill_at = now + float(grace)
                c.terminate()
                return

    # ---- status
    def _status(self) -> dict[str, Any]:
        with self.lock:
            old = (self.pod.get("status") or {}).get("conditions") or []
        return pod_status(
            self.phase,
            self.inits,
            self.ctrs,
            old_conditions=old,
            prepared=self.prepared,
            start_time=self.start_time,
            reason=self.reason,
            message=self.message,
            now=now_iso(),
            ip=self.ip,
        )

    def report(self) -> None:
        """Patch the pod's status when it differs from what was last sent (not once the pod
        is gone); a failed call has the loop retry soon, a 404 marks the pod gone."""
        if self.gone or self.final_deleted:
            return
        st = self._status()
        cmp = comparable(st)
        if cmp == self.last_sent:
            return
        try:
            code, body = self.agent.kube.patch_pod_status(self.ns, self.pod_name, self.uid, st)
        except Exception as e:  # apiserver away for a moment: the next tick retries
            self.api_failed("status update", 0, {"message": str(e)})
            return
        self.retry = code >= 300 and code != 404
        if code == 404:
            self.gone = True
        elif code >= 300:
            self.api_failed("status update", code, body)
        else:
            self.last_sent = cmp
            with self.lock:
                meta = (body or {}).get("metadata", {})
                newer = int(meta.get("resourceVersion", 0)) >= int(
                    self.pod["metadata"].get("resourceVersion", 0)
                )
                if meta.get("uid") == self.uid and newer:
                    self.pod = body
