"""A container's last word: the one-line reason it ended, where Kubernetes reads it.

The kubelet copies the file at the container's `terminationMessagePath` (default
`/dev/termination-log`, at most 4096 bytes) into `status.containerStatuses[].state
.terminated.message` (Kubernetes docs, "Determine the Reason for Pod Failure"); with
`terminationMessagePolicy: FallbackToLogsOnError` it takes the log's tail when the file is
empty. The operator reads failure reasons from there instead of scraping logs. The local
node agent, which runs pods as processes, names each container's file in
`VOICETRACK_TERMINATION_LOG`. Used by the recorder and the transcoder.
"""

from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger(__name__)

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "VOICETRACK_TERMINATION_LOG"
MESSAGE_MAX_BYTES = 4096
"""The kubelet keeps at most 4096 bytes of a termination message."""

EXIT_FAILURE = 1
"""A Job container's exit code for any other failure (a crash, a bug, ffmpeg): retried,
counted against the chunk by the operator."""
EXIT_BAD_INPUT = 2
"""A Job or recorder container's exit code for bad input (a corrupt chunk, a refused
spec): final, the Job's podFailurePolicy fails it at once."""
EXIT_TEMPORARY = 75
"""A Job container's exit code when S3 was away (`ServiceUnavailable`; sysexits'
EX_TEMPFAIL): retried, never counted against the chunk."""


def termination_log_path() -> str:
    """Where the termination message goes: $VOICETRACK_TERMINATION_LOG when set, else the
    kubelet's default `/dev/termination-log`."""
    return os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG


def write_termination_message(message: str) -> str | None:
    """Write `message` (white space folded to one line, cut to 4096 bytes) to
    `termination_log_path()`; when that path cannot be written (not in a container,
    read-only), to `$TMPDIR/termination-log` instead. Returns the path written, None if
    neither could be (logged, never raised: the exit code still tells)."""
    line = " ".join(message.split()).encode()[:MESSAGE_MAX_BYTES]
    fallback = os.path.join(tempfile.gettempdir(), "termination-log")
    for path in (termination_log_path(), fallback):
        try:
            with open(path, "wb") as f:
                f.write(line)
            return path
        except OSError as err:
            log.warning("termination message: cannot write %s: %s", path, err)
    return None
