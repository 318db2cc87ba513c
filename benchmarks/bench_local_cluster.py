"""Local control plane figures: warm start-to-ready time, RSS of its processes, stop time.

Needs the binaries (``voicetrack local build``).  Last line:
``local_cluster: <start-to-ready s>, <RSS MiB>, <down s>``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from voicetrack_local import cluster
from voicetrack_local.procs import ProcRecord


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vt-bench-k8s-") as tmp:
        state = Path(tmp)
        t0 = time.monotonic()
        c = cluster.up(state, log=lambda m: None)
        ready = time.monotonic() - t0
        try:
            time.sleep(5)  # let the controllers settle before measuring memory
            per = {}
            for p in sorted((state / "pids").glob("*.json")):
                rec = ProcRecord.load(p)
                if rec and rec.alive():
                    per[rec.name] = rss_mib(rec.pid)
        finally:
            t1 = time.monotonic()
            c.stop()
            stop = time.monotonic() - t1
    for name, mib in per.items():
        print(f"{name:<24} {mib:7.1f} MiB")
    total = sum(per.values())
    print(f"start-to-ready {ready:.2f} s, RSS {total:.0f} MiB, down {stop:.2f} s")
    print(f"local_cluster: {ready:.2f}, {total:.0f}, {stop:.2f}")


if __name__ == "__main__":
    main()
