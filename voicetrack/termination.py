"""A container's last word: the one-line reason it failed, where Kubernetes reads it.

The kubelet copies the file at the container's `terminationMessagePath` (default
`/dev/termination-log`, at most 4 KiB) into `status.containerStatuses[].state.terminated
.message` (Kubernetes docs, "Determine the Reason for Pod Failure"); with
`terminationMessagePolicy: FallbackToLogsOnError` it takes the log's tail when the file is
empty. The operator reads failure reasons from there instead of scraping logs. The local
node agent, which runs pods as processes, names its per-container file in
`VOICETRACK_TERMINATION_LOG`.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PATH = "/dev/termination-log"
ENV_PATH = "VOICETRACK_TERMINATION_LOG"
MAX_BYTES = 4096
"""The kubelet reads at most this much of the file."""


def termination_log_path() -> Path:
    """`$VOICETRACK_TERMINATION_LOG`, else the Kubernetes default `/dev/termination-log`."""
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def write_termination_message(reason: str) -> bool:
    """Write `reason` (white space folded to one line, cut to 4 KiB of UTF-8) as this
    container's termination message. Returns False when the file cannot be written (not
    in a container, read-only path): a failing process must still exit with its code."""
    text = " ".join(reason.split()).encode()[:MAX_BYTES].decode(errors="ignore")
    try:
        termination_log_path().write_text(text + "\n")
    except OSError:
        return False
    return True
