"""A container's last word: the one-line reason it ended, where Kubernetes reads it.

The kubelet copies the file at the container's `terminationMessagePath` (default
`/dev/termination-log`, at most 4096 bytes) into `status.containerStatuses[].state
.terminated.message` (Kubernetes docs, "Determine the Reason for Pod Failure"); with
`terminationMessagePolicy: FallbackToLogsOnError` it takes the log's tail when the file is
empty. The operator reads failure reasons from there instead of scraping logs. The local
node agent, which runs pods as processes, names each container's file in
`VOICETRACK_TERMINATION_LOG`. Used by the recorder and the transcoder.

A failure someone must act on in a particular place says where in a structured message
(`TerminationReport`): the promotion Job that failed on one chunk's raw input (exit 2)
writes `{"reason": "<the reason line>", "badChunk": <index>}`, so the operator leaves that
chunk out and promotes the rest (`voicetrack_operator.services.leftout`) without parsing
the reason's words. Every other message stays one plain line.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TerminationReport:
    """A structured termination message: `reason` (one line) and `bad_chunk`, the index
    of the chunk whose raw input made the work fail (exit 2), when one chunk did."""

    reason: str
    bad_chunk: int

    def to_message(self) -> str:
        """The JSON object `{"reason": …, "badChunk": …}`, within `MESSAGE_MAX_BYTES`
        (the reason is cut to fit, never the JSON)."""
        reason = " ".join(self.reason.split())

        def text(n: int) -> str:
            return json.dumps({"reason": reason[:n], "badChunk": self.bad_chunk},
                              ensure_ascii=False, separators=(",", ":"))

        low, high = 0, len(reason)  # the longest prefix that fits: binary search
        while low < high:
            mid = (low + high + 1) // 2
            if len(text(mid).encode()) <= MESSAGE_MAX_BYTES:
                low = mid
            else:
                high = mid - 1
        return text(low)

    @classmethod
    def parse(cls, message: str) -> TerminationReport | None:
        """The report a termination message holds; None for a plain message (anything but
        one JSON object with a string `reason` and an integer `badChunk` ≥ 0)."""
        text = message.strip()
        if not text.startswith("{"):
            return None
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        reason, index = doc.get("reason"), doc.get("badChunk")
        if not isinstance(reason, str) or isinstance(index, bool) \
                or not isinstance(index, int) or index < 0:
            return None
        return cls(reason=reason, bad_chunk=index)


def write_termination_message(message: str, bad_chunk: int | None = None) -> str | None:
    """Write `message` (white space folded to one line, cut to 4096 bytes), or with
    `bad_chunk` the `TerminationReport` of both, to `termination_log_path()`; when that
    path cannot be written (not in a container, read-only), to `$TMPDIR/termination-log`
    instead. Returns the path written, None if neither could be (logged, never raised: the
    exit code still tells)."""
    text = " ".join(message.split()) if bad_chunk is None \
        else TerminationReport(message, bad_chunk).to_message()
    line = text.encode()[:MESSAGE_MAX_BYTES]
    fallback = os.path.join(tempfile.gettempdir(), "termination-log")
    for path in (termination_log_path(), fallback):
        try:
            with open(path, "wb") as f:
                f.write(line)
            return path
        except OSError as err:
            log.warning("termination message: cannot write %s: %s", path, err)
    return None
