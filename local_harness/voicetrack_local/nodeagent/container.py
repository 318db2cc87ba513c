"""One container of a pod as the node agent runs it: its Kubernetes state dicts
(``waiting`` / ``running`` / ``terminated``), restart bookkeeping, and the local process
standing for it (started in its own session so its whole process group can be killed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetrack_local.nodeagent.probes import ProbeState
from voicetrack_local.procs import ProcRecord, start_ticks

#: the kubelet's crash-loop back-off: 10 s doubling up to 5 min
BACKOFF_START = 10.0
BACKOFF_MAX = 300.0


@dataclass
class Container:
    """Runtime state of one container of a pod (k8s ContainerState dicts).

    Attributes:
        name, spec: the container's name and its pod-spec dict.
        init: True for an init container.
        proc, record, pid: the running process (all None when nothing runs).
        restart_count: runs so far minus one once it restarted.
        state, last_state: ``{"waiting"|"running"|"terminated": {...}}``, as in the API.
        next_start: monotonic time before which it is not restarted (back-off).
        backoff: the next back-off, seconds.
        started_mono: monotonic time of the last start.
        done: terminated and will not restart.
        probes: this run's probes by kind (:mod:`.probes`).
        kill_at: monotonic time after which a container being stopped (failed liveness)
            is killed (its termination grace period), None when it is not being stopped.
    """

    name: str
    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    record: ProcRecord | None = None
    pid: int | None = None
    pid_file: Path | None = None
    restart_count: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    started_mono: float = 0.0
    done: bool = False
    probes: dict[str, ProbeState] = field(default_factory=dict)
    kill_at: float | None = None

    @property
    def running(self) -> bool:
        """True while its process runs (state ``running`` and a process attached)."""
        return self.pid is not None and "running" in self.state

    @property
    def started(self) -> bool:
        """Running and past its startup probe (if it has one): ContainerStatus.started."""
        startup = self.probes.get("startupProbe")
        return self.running and (startup is None or startup.result is True)

    @property
    def ready(self) -> bool:
        """ContainerStatus.ready: a regular container that is :attr:`started` and whose
        readiness probe (if any) succeeded; never while it is being stopped."""
        readiness = self.probes.get("readinessProbe")
        ok = readiness is None or readiness.result is True
        return not self.init and self.started and ok and self.kill_at is None

    @property
    def runtime_id(self) -> str:
        """ContainerStatus.containerID of the current run: ``<runtime>://<id>``, here
        ``voicetrack://<pid>`` of the local process."""
        return f"voicetrack://{self.pid}"

    def main_pids(self) -> list[int]:
        """Host pids of the current run's main process(es), for the probes' check that a
        listener at 127.0.0.1 is this pod's (:mod:`.listeners`): the local process."""
        return [self.pid] if self.pid is not None else []

    def start_failure(self, log_tail: bytes) -> str | None:
        """After its process ended: the runtime's error when the container never started
        (reported as the kubelet's ``StartError``, exit code 128), else None.  A local
        process that could not be run fails in :meth:`start` instead, so: None."""
        return None

    def exec_argv(self, command: list[str], interactive: bool = False) -> list[str]:
        """The argv that runs ``command`` inside this container (exec probes, ``kubectl
        exec``); a local process container runs it as is, with the pod's directory and
        environment (``interactive``: its stdin stays open; nothing to add here)."""
        return command

    @property
    def succeeded(self) -> bool:
        """True once it terminated with exit code 0."""
        t = self.state.get("terminated") or {}
        return bool(t) and t.get("exitCode") == 0

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log: Path,
        pid_file: Path,
        label: str,
        started: str,
        finished: Callable[[], str],
    ) -> str | None:
        """Run ``argv`` (``argv[0]`` looked up in ``env["PATH"]`` unless it has a ``/``):
        state ``running`` since ``started``, or, when it cannot be run, state terminated
        with exit code 128 and reason ``StartError`` (the message also goes to ``log``,
        ``finished()`` gives its ``finishedAt``).  Returns that message, None once started."""
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH"))
        try:
            if exe is None:
                raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
            self.launch([exe, *argv[1:]], cwd, env, log, pid_file, label)
        except OSError as e:
            msg = (
                str(e)
                if isinstance(e, FileNotFoundError) and e.args and len(e.args) == 1
                else (f"exec {argv[0]!r}: {e.strerror or e}")
            )
            log.write_text(f"StartError: {msg}\n")
            self.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": msg,
                    "startedAt": started,
                    "finishedAt": finished(),
                }
            }
            return msg
        self.state = {"running": {"startedAt": started}}
        return None

    def launch(
        self, argv: list[str], cwd: Path, env: dict[str, str], log: Path, pid_file: Path, label: str
    ) -> None:
        """Start ``argv`` (argv[0] an executable path) in a new session, stdout and stderr
        appended to ``log``; record it (pid and start time) in ``pid_file`` under ``label``.

        Raises:
            OSError: the executable cannot be run (state is left to the caller)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        ticks = start_ticks(proc.pid)
        self.proc, self.pid, self.pid_file = proc, proc.pid, pid_file
        self.record = ProcRecord(label, proc.pid, ticks if ticks is not None else -1, [argv[0]])
        self.record.save(pid_file)

    def poll(self) -> int | None:
        """The exit code once the process ended (a signal N gives ``128 + N``, as a
        runtime reports it), else None; None too when nothing runs."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        return rc if rc >= 0 else 128 - rc

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the container's whole process group (if it still runs)."""
        if self.record is not None:
            self.record.signal_group(sig)

    def terminate(self) -> bool:
        """SIGTERM to the main process, as a runtime stops a container; False when no
        process is attached."""
        if self.proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group, wait up to 5 s for the main process to end,
        then :meth:`release` it."""
        self.signal_group(sig)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.release()

    def release(self) -> None:
        """Forget the (ended) process: drop its handle and its pid file."""
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        self.proc, self.record, self.pid, self.pid_file = None, None, None, None
        self.probes, self.kill_at = {}, None


def stop_containers(ctrs: list[Container]) -> list[Container]:
    """Begin stopping ``ctrs``: SIGTERM to each running main process; a container not
    running (waiting, in back-off) is marked done.  Returns the containers signalled."""
    signalled = []
    for c in ctrs:
        if c.terminate():
            signalled.append(c)
        else:
            c.done = True  # waiting or in back-off: it will not start any more
    return signalled


def kill_progress(ctrs: list[Container], overdue: bool) -> bool:
    """One step of a stop begun by :func:`stop_containers` (exits already polled): SIGKILL
    every process group once ``overdue`` (the grace period passed); mark done what no
    longer runs.  True once nothing runs."""
    if overdue:
        for c in ctrs:
            c.signal_group(signal.SIGKILL)
    for c in ctrs:
        if c.proc is None and not c.done:
            c.done = True
    return all(c.proc is None for c in ctrs)


def mark_unknown(ctrs: list[Container], now: str) -> None:
    """Give every container that never terminated (never started, or waiting in back-off)
    the kubelet's ``ContainerStatusUnknown`` terminated state (exit code 137) at ``now``."""
    for c in ctrs:
        if "terminated" not in c.state:
            c.state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "finishedAt": now,
                }
            }


def shutdown_containers(ctrs: list[Container], grace: float) -> None:
    """Agent shutdown: SIGTERM to every main process, up to ``grace`` s for them to end,
    then SIGKILL to every process group."""
    for c in ctrs:
        c.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(
        c.proc is not None and c.proc.poll() is None for c in ctrs
    ):
        time.sleep(0.05)
    for c in ctrs:
        c.kill(signal.SIGKILL)
