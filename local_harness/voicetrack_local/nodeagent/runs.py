"""A container's run, the kubelet's way: start it (environment, image pull with back-off,
argv for podman or a local process, log and termination-message files) and reap it
(terminated state, restart policy). Functions of the pod's :class:`~.worker.PodWorker`,
called on its thread.
kubernetes.io/docs/concepts/containers/images/ (pull policies, ImagePullBackOff).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.kube import now_iso
from voicetrack_local.nodeagent.podman import LocalImage, PodmanContainer
from voicetrack_local.nodeagent.podmanargs import container_name, podman_run_args, pull_policy
from voicetrack_local.nodeagent.podspec import (
    ConfigError,
    container_env,
    env_refs,
    expand,
    termination_log,
)
from voicetrack_local.nodeagent.podstatus import (
    MAX_MESSAGE_BYTES,
    after_exit,
    exited_state,
    termination_message,
)
from voicetrack_local.nodeagent.probes import probe_states
from voicetrack_local.nodeagent.sandbox import fetch_objects, read_tail
from voicetrack_local.nodeagent.volumes import mount_prefix

if TYPE_CHECKING:
    from voicetrack_local.nodeagent.worker import PodWorker

log = logging.getLogger("voicetrack.nodeagent")

#: the kubelet's image pull back-off: 10 s doubling up to 5 min
PULL_BACKOFF_START, PULL_BACKOFF_MAX = 10.0, 300.0


def config_failed(w: PodWorker, msg: str, ctrs: list[Container]) -> None:
    """A configuration error ``msg`` (an Event when it is new): the containers of ``ctrs``
    not running wait as ``CreateContainerConfigError``; the next try is in 2 s."""
    w.config_retry = time.monotonic() + 2
    if w.config_error != msg:
        w.event("Failed", f"Error: {msg}", None, warning=True)
    w.config_error = msg
    for c in ctrs:
        if c.proc is None and not c.done:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": msg}}


def maybe_start(w: PodWorker, pod: dict[str, Any], c: Container) -> None:
    """Start container ``c`` of ``pod`` unless its back-off or the configuration retry
    holds it: its environment (the Secrets and ConfigMaps it reads, fetched now), its image
    (podman) or command (a local process), fresh log and termination-message files, an
    Event. A failure becomes ``c``'s waiting state or a StartError exit, never an
    exception; an unreachable API is retried in 2 s."""
    if time.monotonic() < c.next_start or time.monotonic() < w.config_retry:
        return
    podman = w.agent.podman
    if podman is None and not c.spec.get("command"):
        msg = (
            f"container {c.name!r} has no command: the local node agent ignores "
            "images, so their entrypoints cannot run; set command"
        )
        if (c.state.get("waiting") or {}).get("reason") != "CreateContainerError":
            w.event("Failed", f"Error: {msg}", c, warning=True)
        c.state = {"waiting": {"reason": "CreateContainerError", "message": msg}}
        return
    try:  # the env: the pod's base, the Secrets and ConfigMaps it reads, its own
        secrets, configmaps = fetch_objects(w.agent.kube, w.ns, env_refs(c.spec))
        assert w.env_base is not None
        env = container_env(
            pod, c.spec, w.env_base, pod_dir=w.dir, secrets=secrets,
            configmaps=configmaps, capacity=w.agent.capacity,
            host_paths=podman is None,
        )  # fmt: skip
        prefix = [] if podman else mount_prefix(pod, c.spec, w.dir)  # PVCs at mountPath
    except ConfigError as e:
        config_failed(w, str(e), [c])
        return
    except Exception as e:  # API unreachable for a moment: try again shortly
        log.warning("pod %s/%s: env of %s: %s", w.ns, w.pod_name, c.name, e)
        w.config_retry = time.monotonic() + 2
        return
    logf = w.log_file(c.name, c.restart_count)
    logf.parent.mkdir(parents=True, exist_ok=True)
    term = termination_log(w.dir, c.name)
    term.parent.mkdir(parents=True, exist_ok=True)
    term.write_bytes(b"")  # a fresh, empty termination-message file for every run
    pid_file = w.dir / "pids" / f"{c.name}.json"
    label = f"{w.ns}/{w.pod_name}/{c.name}"
    if isinstance(c, PodmanContainer) and podman is not None:
        image = local_image(w, c)
        if image is None:
            return
        term.chmod(0o666)  # the kubelet's mode: any container user may write it
        c.cname = container_name(pod, c.name, c.restart_count)
        try:
            run_args, through = podman_run_args(
                pod, c.spec, image=image.name, image_user=image.user, env=env,
                pod_dir=w.dir, termination_file=term, name=c.cname,
                agent_id=podman.agent_id,
            )  # fmt: skip
        except ConfigError as e:
            config_failed(w, str(e), [c])
            return
        argv, env = [podman.exe, *run_args], {**podman.env, **through}
    else:
        command = [expand(str(x), env) for x in c.spec.get("command") or []]
        args = [expand(str(x), env) for x in c.spec.get("args") or []]
        argv = [*prefix, *command, *args]
    w.envs[c.name] = env
    err = c.start(argv, env, w.dir, logf, pid_file, label, now_iso(), now_iso)
    if err is not None:
        w.event("Failed", f"Error: {err}", c, warning=True)
        handle_exit(w, c, 128)
        return
    w.event("Started", f"Started container {c.name}", c)
    c.started_mono = time.monotonic()
    c.probes = probe_states(c.spec, c.started_mono)
    w.config_error = None


def local_image(w: PodWorker, c: PodmanContainer) -> LocalImage | None:
    """The local image of ``c``, pulled first when missing and its pull policy allows;
    None (with ``c`` waiting: ``ErrImageNeverPull``, ``ErrImagePull`` then
    ``ImagePullBackOff``, retried with the kubelet's back-off) when there is none.
    kubernetes.io/docs/concepts/containers/images/ (pull policies, ImagePullBackOff)."""
    podman = w.agent.podman
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
            w.event("ErrImageNeverPull", msg, c, warning=True)
        c.state = {"waiting": {"reason": "ErrImageNeverPull", "message": msg}}
        c.next_start = now + PULL_BACKOFF_START
        return None
    w.event("Pulling", f'Pulling image "{image}"', c)
    err = podman.pull(image)
    if err is None:
        w.event("Pulled", f'Successfully pulled image "{image}"', c)
        return podman.find_image(image)
    c.pulls += 1
    delay = min(PULL_BACKOFF_START * 2 ** (c.pulls - 1), PULL_BACKOFF_MAX)
    c.next_start = time.monotonic() + delay
    w.event("Failed", f'Failed to pull image "{image}": {err}', c, warning=True)
    if c.pulls == 1:
        c.state = {"waiting": {"reason": "ErrImagePull", "message": err}}
    else:
        w.event("BackOff", f'Back-off pulling image "{image}"', c)
        c.state = {"waiting": {"reason": "ImagePullBackOff",
                               "message": f'Back-off pulling image "{image}": {err}'}}
    return None


def poll_exits(w: PodWorker) -> None:
    """Reap the containers of ``w`` that have exited: their terminated state (a
    ``StartError`` with the kubelet's 128 when the runtime could not start one), then
    :func:`handle_exit`."""
    for c in w.inits + w.ctrs:
        code = c.poll()
        if code is None or c.pid is None:
            continue
        logf = w.log_file(c.name, c.restart_count)
        start_error = c.start_failure(read_tail(logf, 4096) or b"")
        c.signal_group(signal.SIGKILL)  # container teardown: nothing of its group survives
        started = (c.state.get("running") or {}).get("startedAt") or now_iso()
        if start_error is not None:  # the runtime could not start it: the kubelet's 128
            code = 128
            c.state = {"terminated": {"exitCode": code, "reason": "StartError",
                                      "message": start_error, "startedAt": started,
                                      "finishedAt": now_iso()}}  # fmt: skip
            w.event("Failed", f"Error: {start_error}", c, warning=True)
            c.release()
            handle_exit(w, c, code)
            continue
        term = read_tail(termination_log(w.dir, c.name), MAX_MESSAGE_BYTES)
        msg = termination_message(c.spec, code, "Error", term, read_tail(logf, 1 << 20) or b"")
        c.state = exited_state(code, started, now_iso(), c.pid, msg)
        c.state["terminated"]["containerID"] = c.runtime_id
        c.release()
        handle_exit(w, c, code)


def handle_exit(w: PodWorker, c: Container, code: int) -> None:
    """After ``c`` exited with ``code``: done while the pod is being killed; else its restart
    policy decides (a BackOff Event when a restart waits)."""
    if w.kill_deadline is not None or w.reason == "DeadlineExceeded":
        c.done = True
        return
    pod_ref = f"{w.pod_name}_{w.ns}({w.uid})"
    if after_exit(c, code, w.restart_policy(), time.monotonic(), pod_ref):
        w.event("BackOff", f"Back-off restarting failed container {c.name}", c, warning=True)
