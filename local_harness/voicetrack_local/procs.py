"""Background processes identified by pid *and* start time, so we never signal a stranger.

A record is a small JSON file ``{"name", "pid", "start_ticks", "cmd"}``; ``start_ticks`` is
field 22 of ``/proc/<pid>/stat`` (proc(5)), which changes when a pid is reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist or has
    exited: a zombie (only waiting to be reaped) whose other threads are gone too.

    A multi-threaded process's leader turns zombie as soon as *it* exits, while its other
    threads may still be exiting — and they hold the process's files until the last one is
    gone (a SIGKILLed kube-apiserver keeps its listening socket for tens of ms more, while its
    successor binds the same port within 100 ms).  So a zombie counts as exited only once
    ``num_threads`` (proc(5), field 20) is down to the leader itself."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # rest[0] is field 3 (state)
    if rest[0] in ("Z", "X") and int(rest[17]) <= 1:  # never reaped here: a Popen's status
        return None
    return int(rest[19])


@dataclass(frozen=True)
class ProcRecord:
    """One process we started: its name (``etcd``, ``kube-apiserver``, ``node-agent``,
    a pod container …), pid, start time in clock ticks and command line."""

    name: str
    pid: int
    start_ticks: int
    cmd: list[str]

    def alive(self) -> bool:
        """True while the very process we started (same pid and start time) runs."""
        return start_ticks(self.pid) == self.start_ticks

    def save(self, path: Path) -> None:
        """Write the record as JSON to ``path`` (atomically)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> ProcRecord | None:
        """Read a record written by :meth:`save`; None when missing or unreadable."""
        try:
            d = json.loads(path.read_text())
            return ProcRecord(d["name"], int(d["pid"]), int(d["start_ticks"]), list(d["cmd"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group we started it in (``start_new_session``).

        The group is signalled while its leader is ours (same start time) or gone: a pid
        that is still some group's id cannot be handed to a new process, so a group that
        outlives its leader is still ours.  A pid reused by a stranger is left alone."""
        ticks = start_ticks(self.pid)
        if ticks is not None and ticks != self.start_ticks:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def spawn(
    name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], ProcRecord]:
    """Start ``cmd`` detached (own session and process group, stdin from /dev/null, stdout
    and stderr appended to ``log``) and return the Popen and its :class:`ProcRecord`.

    Raises:
        OSError: the executable cannot be started.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=cwd,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:  # exited at once; record something that is never "alive"
        ticks = -1
    return proc, ProcRecord(name, proc.pid, ticks, cmd)


def terminate(records: list[ProcRecord], grace: float) -> None:
    """SIGTERM each live record's group, wait up to ``grace`` seconds for all to exit,
    then SIGKILL the rest and wait (up to 5 s) until they are gone."""
    live = [r for r in records if r.alive()]
    for r in live:
        r.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(r.alive() for r in live):
        time.sleep(0.05)
    for r in records:  # also stray children left in a group whose leader exited
        r.signal_group(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(r.alive() for r in live):
        time.sleep(0.02)
