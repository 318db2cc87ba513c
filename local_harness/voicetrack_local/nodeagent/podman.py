"""The podman container runtime of the node agent (``voicetrack local up --runtime podman``):
a container of a pod runs as ``podman run`` in the foreground (the agent's process for it
is that ``podman run``; its attached output is the container log; ``SIGTERM`` to it is
proxied to the container), in its image from local podman storage.

podman reads ``images/containers.conf`` (``CONTAINERS_CONF``: runc, cgroupfs, file
events, the ulimits this machine allows), the same settings ``make images`` builds with.
The arguments come from the pure :mod:`.podmanargs`; this module only runs podman.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from voicetrack_local.nodeagent.container import Container
from voicetrack_local.nodeagent.podmanargs import AGENT_LABEL, image_candidates

log = logging.getLogger("voicetrack.nodeagent")

#: images/containers.conf of this checkout
CONTAINERS_CONF = Path(__file__).resolve().parents[3] / "images" / "containers.conf"
#: seconds a ``podman pull`` may take before it counts as failed
PULL_TIMEOUT = 120.0
#: seconds a probe waits for ``podman container inspect`` of a container's pid
#: (`PodmanContainer.main_pids`): it runs on the pod's worker thread
PID_LOOKUP_S = 5.0


@dataclass(frozen=True)
class LocalImage:
    """An image found in local podman storage: its full name and configured ``User``."""

    name: str
    user: str


class Podman:
    """podman as the agent uses it, with ``CONTAINERS_CONF`` set.

    Args:
        agent_id: the value of :data:`~.podmanargs.AGENT_LABEL` on this agent's containers
            (one per state directory, so :meth:`remove_all` touches no one else's).
        conf: the containers.conf to use (default: this checkout's)."""

    def __init__(self, agent_id: str, conf: Path | None = None) -> None:
        exe = shutil.which("podman")
        if exe is None:
            raise RuntimeError("podman is not installed (make system-packages installs it)")
        self.exe = exe
        self.agent_id = agent_id
        conf = conf or Path(os.environ.get("CONTAINERS_CONF") or CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` to completion; never raises on a non-zero exit.

        Raises:
            subprocess.TimeoutExpired: it took longer than ``timeout`` seconds."""
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def find_image(self, image: str) -> LocalImage | None:
        """The local image ``image`` names (:func:`~.podmanargs.image_candidates`), or None
        when none is in local storage.  Found users are cached per full name.

        Raises:
            ConfigError: an empty image name."""
        for cand in image_candidates(image):
            with self._lock:
                user = self._users.get(cand)
            if user is not None:
                return LocalImage(cand, user)
            r = self.run("image", "inspect", "--format", "{{json .Config.User}}", cand)
            if r.returncode == 0:
                user = str(json.loads(r.stdout.strip() or '""') or "")
                with self._lock:
                    self._users[cand] = user
                return LocalImage(cand, user)
        return None

    def pull(self, image: str) -> str | None:
        """``podman pull`` the first candidate of ``image``; None on success, else podman's
        error (its last line)."""
        cand = image_candidates(image)[0]
        try:
            r = self.run("pull", "-q", cand, timeout=PULL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"pulling {cand} took longer than {PULL_TIMEOUT:.0f} s"
        if r.returncode == 0:
            return None
        lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
        return lines[-1] if lines else f"podman pull exited {r.returncode}"

    def remove(self, name: str) -> None:
        """Kill and remove container ``name`` at once (nothing when it does not exist)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("rm", "--force", "--ignore", "--time", "0", name, timeout=60)

    def kill(self, name: str, sig: int) -> None:
        """Send ``sig`` to container ``name``'s main process (nothing when it is gone)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run("kill", "--signal", str(int(sig)), name, timeout=30)

    def remove_all(self) -> list[str]:
        """Remove every container this agent started (by its label), e.g. left over by an
        agent that was killed; returns their names."""
        r = self.run("ps", "--all", "--format", "{{.Names}}", "--filter",
                     f"label={AGENT_LABEL}={self.agent_id}")  # fmt: skip
        names = [n for n in r.stdout.split() if n]
        for n in names:
            self.remove(n)
        return names


@dataclass
class PodmanContainer(Container):
    """A :class:`Container` whose process is ``podman run`` of container :attr:`cname`:
    signals other than SIGKILL reach the container through ``podman kill``, SIGKILL removes
    it at once (``podman rm --force``), then kills the ``podman run`` process group."""

    podman: Podman | None = None
    cname: str | None = None
    pulls: int = field(default=0)  # failed pulls in a row (ErrImagePull, then ImagePullBackOff)
    sigkilled: bool = field(default=False)  # this run was still running when SIGKILLed
    container_pid: int | None = field(default=None)  # State.Pid of this run, once known

    def signal_group(self, sig: int) -> None:
        if self.podman is not None and self.cname is not None:
            if sig == signal.SIGKILL:
                if self.proc is not None and self.proc.poll() is None:
                    self.sigkilled = True
                self.podman.remove(self.cname)
            elif self.proc is not None and self.proc.poll() is None:
                self.podman.kill(self.cname, sig)
        super().signal_group(sig)

    def terminate(self) -> bool:
        """SIGTERM to the container's main process through podman (``podman kill``), as a
        CRI runtime's StopContainer sends it; False when no process is attached. Not to
        ``podman run`` (its signal proxy): one signalled before it had started the
        container (within ~0.2 s, as a liveness failure under load did) dropped the
        container and exited 0, so the pod showed the stopped container as ``Completed``.
        A container not running yet ignores it; the SIGKILL after the grace period ends it."""
        if self.proc is None:
            return False
        if self.podman is None or self.cname is None:
            return super().terminate()
        if self.proc.poll() is None:
            self.podman.kill(self.cname, signal.SIGTERM)
        return True

    def poll(self) -> int | None:
        """As :meth:`Container.poll`, except that a run the agent SIGKILLed while it still
        ran exits 137 (128 + SIGKILL), as a CRI runtime reports it, whatever ``podman run``
        returned once its container was removed under it (``podman rm --force``)."""
        code = super().poll()
        if code is not None and self.sigkilled:
            return 128 + signal.SIGKILL
        return code

    def release(self) -> None:
        super().release()
        self.sigkilled = False
        self.container_pid = None

    def main_pids(self) -> list[int]:
        """The container's main process as the host sees it (``podman container inspect``'s
        ``State.Pid``: conmon starts it, so it descends from no process of the agent's),
        and the ``podman run`` process; looked up once a run (0 = not running yet). A
        lookup that fails (podman slower than `PID_LOOKUP_S`, busy on its storage lock, or
        not started: OSError) gives only the ``podman run`` process this time and is tried
        again on the next call: a probe then fails rather than the pod's worker."""
        pids = super().main_pids()
        if pids and self.container_pid is None and self.podman and self.cname is not None:
            try:
                r = self.podman.run("container", "inspect", "--format", "{{.State.Pid}}",
                                    self.cname, timeout=PID_LOOKUP_S)
            except (subprocess.TimeoutExpired, OSError) as e:
                log.warning("%s: the container's pid not read (%s): its listeners do not "
                            "count as the pod's for this probe", self.cname, e)
                return pids
            pid = r.stdout.strip()
            if r.returncode == 0 and pid.isdigit() and int(pid) > 0:
                self.container_pid = int(pid)
        return pids + ([self.container_pid] if self.container_pid else [])

    @property
    def runtime_id(self) -> str:
        """``podman://<container name>``."""
        return f"podman://{self.cname}"

    def start_failure(self, log_tail: bytes) -> str | None:
        """podman's error when container :attr:`cname` was created but never ran (its
        state still ``created``: the OCI runtime could not start it, e.g. an executable
        not found), taken from the last ``Error:`` line ``podman run`` wrote to the log."""
        if self.podman is None or self.cname is None:
            return None
        r = self.podman.run("container", "inspect", "--format", "{{.State.Status}}", self.cname)
        if r.returncode != 0 or r.stdout.strip() != "created":
            return None
        errors = [ln for ln in log_tail.decode(errors="replace").splitlines()
                  if ln.startswith("Error: ")]  # fmt: skip
        return errors[-1][len("Error: "):] if errors else "the container runtime did not start it"

    def exec_argv(self, command: list[str], interactive: bool = False) -> list[str]:
        """``podman exec`` of ``command`` in the running container (exec probes, ``kubectl
        exec``); ``interactive`` keeps its stdin open (``-i``)."""
        assert self.podman is not None and self.cname is not None
        return [self.podman.exe, "exec", *(["-i"] if interactive else []), self.cname, *command]
