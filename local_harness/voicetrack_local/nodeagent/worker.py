"""The per-pod worker thread: prepares a pod's private directory, runs its containers as
local processes, restarts them by policy, handles deadlines and graceful deletion, and
reports the pod's status (see the package docstring for the kubelet behaviour it follows).
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
    kill_progress,
    mark_unknown,
    shutdown_containers,
    stop_containers,
)
from voicetrack_local.nodeagent.kube import now_iso, parse_time
from voicetrack_local.nodeagent.podman import LocalImage, PodmanContainer
from voicetrack_local.nodeagent.podmanargs import container_name, podman_run_args, pull_policy
from voicetrack_local.nodeagent.podspec import (
    ConfigError,
    container_env,
    env_refs,
    expand,
    service_env,
    termination_log,
)
from voicetrack_local.nodeagent.podstatus import (
    MAX_MESSAGE_BYTES,
    adopt_terminal,
    after_exit,
    comparable,
    exited_state,
    pod_phase,
    pod_status,
    termination_message,
)
from voicetrack_local.nodeagent.probes import probe_states, run_handler
from voicetrack_local.nodeagent.sandbox import fetch_objects, prepare_sandbox, read_tail
from voicetrack_local.nodeagent.volumes import mount_prefix

if TYPE_CHECKING:
    from voicetrack_local.nodeagent.agent import NodeAgent

log = logging.getLogger("voicetrack.nodeagent")

#: worker loop period while something runs, seconds
TICK = 0.2
#: the kubelet's image pull back-off: 10 s doubling up to 5 min
PULL_BACKOFF_START, PULL_BACKOFF_MAX = 10.0, 300.0


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

    def _api_failed(self, what: str, code: int, body: Any) -> None:
        """Log a failed API call (code 0: no answer) and have the loop retry soon."""
        status = f"HTTP {code} " if code else ""
        log.warning("pod %s/%s: %s: %s%s", self.ns, self.pod_name, what, status,
                    (body or {}).get("message"))  # fmt: skip
        self.retry = True

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
                self._config_failed(str(e), self.inits + self.ctrs)
                return
            except Exception as e:  # API unreachable for a moment: try again shortly
                log.warning("pod %s/%s: prepare: %s", self.ns, self.pod_name, e)
                self.config_retry = time.monotonic() + 2
                return
        self._poll_exits()
        pending_init = next((c for c in self.inits if not c.succeeded or c.proc is not None), None)
        if pending_init is not None:
            if not pending_init.running and not pending_init.done:
                self._maybe_start(pod, pending_init)
        else:
            for c in self.ctrs:
                if c.proc is None and not c.done:
                    self._maybe_start(pod, c)
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
            ok, msg = run_handler(st.spec, c.spec, lambda cmd, t: self._exec(c, cmd, t))
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
        podman = self.agent.podman
        if podman is None and not c.spec.get("command"):
            msg = (
                f"container {c.name!r} has no command: the local node agent ignores "
                "images, so their entrypoints cannot run; set command"
            )
            if (c.state.get("waiting") or {}).get("reason") != "CreateContainerError":
                self.event("Failed", f"Error: {msg}", c, warning=True)
            c.state = {"waiting": {"reason": "CreateContainerError", "message": msg}}
            return
        try:  # the env: the pod's base, the Secrets and ConfigMaps it reads, its own
            secrets, configmaps = fetch_objects(self.agent.kube, self.ns, env_refs(c.spec))
            assert self.env_base is not None
            env = container_env(
                pod, c.spec, self.env_base, pod_dir=self.dir, secrets=secrets,
                configmaps=configmaps, capacity=self.agent.capacity,
                host_paths=podman is None,
            )  # fmt: skip
            prefix = [] if podman else mount_prefix(pod, c.spec, self.dir)  # PVCs at mountPath
        except ConfigError as e:
            self._config_failed(str(e), [c])
            return
        except Exception as e:  # API unreachable for a moment: try again shortly
            log.warning("pod %s/%s: env of %s: %s", self.ns, self.pod_name, c.name, e)
            self.config_retry = time.monotonic() + 2
            return
        logf = self.log_file(c.name, c.restart_count)
        logf.parent.mkdir(parents=True, exist_ok=True)
        term = termination_log(self.dir, c.name)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")  # a fresh, empty termination-message file for every run
        pid_file = self.dir / "pids" / f"{c.name}.json"
        label = f"{self.ns}/{self.pod_name}/{c.name}"
        if isinstance(c, PodmanContainer) and podman is not None:
            image = self._image(c)
            if image is None:
                return
            term.chmod(0o666)  # the kubelet's mode: any container user may write it
            c.cname = container_name(pod, c.name, c.restart_count)
            try:
                run_args, through = podman_run_args(
                    pod, c.spec, image=image.name, image_user=image.user, env=env,
                    pod_dir=self.dir, termination_file=term, name=c.cname,
                    agent_id=podman.agent_id,
                )  # fmt: skip
            except ConfigError as e:
                self._config_failed(str(e), [c])
                return
            argv, env = [podman.exe, *run_args], {**podman.env, **through}
        else:
            command = [expand(str(x), env) for x in c.spec.get("command") or []]
            args = [expand(str(x), env) for x in c.spec.get("args") or []]
            argv = [*prefix, *command, *args]
        self.envs[c.name] = env
        err = c.start(argv, env, self.dir, logf, pid_file, label, now_iso(), now_iso)
        if err is not None:
            self.event("Failed", f"Error: {err}", c, warning=True)
            self._after_exit(c, 128)
            return
        self.event("Started", f"Started container {c.name}", c)
        c.started_mono = time.monotonic()
        c.probes = probe_states(c.spec, c.started_mono)
        self.config_error = None

    def _image(self, c: PodmanContainer) -> LocalImage | None:
        """The local image of ``c``, pulled first when missing and its pull policy allows;
        None (with ``c`` waiting: ``ErrImageNeverPull``, ``ErrImagePull`` then
        ``ImagePullBackOff``, retried with the kubelet's back-off) when there is none.
        kubernetes.io/docs/concepts/containers/images/ (pull policies, ImagePullBackOff)."""
        podman = self.agent.podman
        assert podman is not None
        image = str(c.spec.get("image") or "")
        try:
            found = podman.find_image(image)
        except ConfigError as e:
            c.state = {"waiting": {"reason": "InvalidImageName", "message": str(e)}}
            return None
        if found is not None:
            c.pulls = 0
            return found
        now = time.monotonic()
        if pull_policy(c.spec) == "Never":
            msg = f'Container image "{image}" is not present with pull policy of Never'
            if (c.state.get("waiting") or {}).get("reason") != "ErrImageNeverPull":
                self.event("ErrImageNeverPull", msg, c, warning=True)
            c.state = {"waiting": {"reason": "ErrImageNeverPull", "message": msg}}
            c.next_start = now + PULL_BACKOFF_START
            return None
        self.event("Pulling", f'Pulling image "{image}"', c)
        err = podman.pull(image)
        if err is None:
            self.event("Pulled", f'Successfully pulled image "{image}"', c)
            return podman.find_image(image)
        c.pulls += 1
        delay = min(PULL_BACKOFF_START * 2 ** (c.pulls - 1), PULL_BACKOFF_MAX)
        c.next_start = time.monotonic() + delay
        self.event("Failed", f'Failed to pull image "{image}": {err}', c, warning=True)
        if c.pulls == 1:
            c.state = {"waiting": {"reason": "ErrImagePull", "message": err}}
        else:
            self.event("BackOff", f'Back-off pulling image "{image}"', c)
            c.state = {"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{image}": {err}'}}
        return None

    def _poll_exits(self) -> None:
        for c in self.inits + self.ctrs:
            code = c.poll()
            if code is None or c.pid is None:
                continue
            logf = self.log_file(c.name, c.restart_count)
            start_error = c.start_failure(read_tail(logf, 4096) or b"")
            c.signal_group(signal.SIGKILL)  # container teardown: nothing of its group survives
            started = (c.state.get("running") or {}).get("startedAt") or now_iso()
            if start_error is not None:  # the runtime could not start it: the kubelet's 128
                code = 128
                c.state = {"terminated": {"exitCode": code, "reason": "StartError",
                                          "message": start_error, "startedAt": started,
                                          "finishedAt": now_iso()}}  # fmt: skip
                self.event("Failed", f"Error: {start_error}", c, warning=True)
                c.release()
                self._after_exit(c, code)
                continue
            term = read_tail(termination_log(self.dir, c.name), MAX_MESSAGE_BYTES)
            msg = termination_message(c.spec, code, "Error", term, read_tail(logf, 1 << 20) or b"")
            c.state = exited_state(code, started, now_iso(), c.pid, msg)
            c.state["terminated"]["containerID"] = c.runtime_id
            c.release()
            self._after_exit(c, code)

    def _after_exit(self, c: Container, code: int) -> None:
        if self.kill_deadline is not None or self.reason == "DeadlineExceeded":
            c.done = True
            return
        pod_ref = f"{self.pod_name}_{self.ns}({self.uid})"
        if after_exit(c, code, self.restart_policy(), time.monotonic(), pod_ref):
            self.event("BackOff", f"Back-off restarting failed container {c.name}", c, warning=True)

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
        for c in stop_containers(self.inits + self.ctrs):
            self.event("Killing", f"Stopping container {c.name}", c)

    def _kill_progress(self) -> bool:
        """Drive a kill started by :meth:`_begin_kill`; True once nothing runs."""
        self._poll_exits()
        overdue = self.kill_deadline is not None and time.monotonic() >= self.kill_deadline
        return kill_progress(self.inits + self.ctrs, overdue)

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
        mark_unknown(self.inits + self.ctrs, now_iso())
        if self.phase not in ("Succeeded", "Failed"):
            self.phase = "Succeeded" if all(c.succeeded for c in self.ctrs) else "Failed"
        self._report()
        try:
            code, body = self.agent.kube.delete_pod_now(self.ns, self.pod_name, self.uid)
        except Exception as e:  # apiserver away for a moment: the next tick retries
            code, body = 0, {"message": str(e)}
        if code == 0 or (code >= 300 and code not in (404, 409)):
            self._api_failed("final delete", code, body)
            return False
        self.final_deleted = True
        return True

    def _kill_all(self, sig: int) -> None:
        for c in self.inits + self.ctrs:
            c.kill(sig)

    def _shutdown_kill(self) -> None:
        shutdown_containers(self.inits + self.ctrs, grace=5)

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
        )

    def _report(self) -> None:
        if self.gone or self.final_deleted:
            return
        st = self._status()
        cmp = comparable(st)
        if cmp == self.last_sent:
            return
        try:
            code, body = self.agent.kube.patch_pod_status(self.ns, self.pod_name, self.uid, st)
        except Exception as e:  # apiserver away for a moment: the next tick retries
            self._api_failed("status update", 0, {"message": str(e)})
            return
        self.retry = code >= 300 and code != 404
        if code == 404:
            self.gone = True
        elif code >= 300:
            self._api_failed("status update", code, body)
        else:
            self.last_sent = cmp
            with self.lock:
                meta = (body or {}).get("metadata", {})
                newer = int(meta.get("resourceVersion", 0)) >= int(
                    self.pod["metadata"].get("resourceVersion", 0)
                )
                if meta.get("uid") == self.uid and newer:
                    self.pod = body
