"""`voicetrack local discord up|down`: the local Discord as a background process.

`up` starts `python -m voicetrack_local.discord --state-dir DIR` detached (log
`DIR/discord.log`, process record `DIR/discord.pid`, see `voicetrack_local.procs`) and
returns once it has written `DIR/discord.json`; a local Discord already running from DIR
is reused. `down` stops the process the record names, and only that one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from voicetrack.errors import VoicetrackError
from voicetrack_local import procs


class DiscordLaunchError(VoicetrackError):
    """The local Discord did not come up; the message says why (with its log's tail)."""


def _paths(state_dir: Path) -> tuple[Path, Path, Path]:
    return state_dir / "discord.json", state_dir / "discord.pid", state_dir / "discord.log"


def running(state_dir: Path) -> procs.ProcRecord | None:
    """The live local Discord started from `state_dir`, or None."""
    record = procs.ProcRecord.load(_paths(state_dir)[1])
    return record if record is not None and record.alive() else None


def up(state_dir: Path, args: list[str] | None = None, timeout_s: float = 30) -> Path:
    """Start (or reuse) the local Discord of `state_dir`; returns the discord.json path.
    `args` are extra `python -m voicetrack_local.discord` options (`--users`, faults).
    Raises DiscordLaunchError when it exits or writes no discord.json within `timeout_s`."""
    state_dir = state_dir.resolve()
    info, pid_file, log = _paths(state_dir)
    if running(state_dir) is not None and info.exists():
        return info
    state_dir.mkdir(parents=True, exist_ok=True)
    info.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "voicetrack_local.discord", "--state-dir", str(state_dir),
           *(args or [])]
    proc, record = procs.spawn("local-discord", cmd, log)
    record.save(pid_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DiscordLaunchError(f"local Discord exited ({proc.returncode}):\n"
                                     f"{_tail(log)}")
        try:
            json.loads(info.read_text())
            return info
        except (OSError, ValueError):  # not yet written (or half written)
            time.sleep(0.1)
    procs.terminate([record], grace=5)
    raise DiscordLaunchError(f"local Discord wrote no {info} within {timeout_s:.0f} s:\n"
                             f"{_tail(log)}")


def down(state_dir: Path, grace_s: float = 10) -> bool:
    """Stop the local Discord started from `state_dir`; False when none was running."""
    state_dir = state_dir.resolve()
    info, pid_file, _ = _paths(state_dir)
    record = running(state_dir)
    if record is not None:
        procs.terminate([record], grace=grace_s)
    pid_file.unlink(missing_ok=True)
    info.unlink(missing_ok=True)
    return record is not None


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
