"""The end of a recorder's run: why it ended, the flush deadline, and the spool it leaves.

A run ends by SIGTERM (the pod is being deleted) or the session's deletion (a forced end),
by itself (auto-stop, a limit), or with an error (`ERROR_ENDS`). What it sealed but has not
uploaded yet is then retried: a forced end arms the flush deadline (`FlushDeadline`) at
once, inside the pod's 30 s termination grace, and what cannot be uploaded by then becomes
the lost window's marker (`stopmarkers`). A run that ended by itself has no such deadline
at first: it keeps uploading with the same backoff until the spool is empty, and arms the
deadline when SIGTERM or the deletion comes meanwhile, or after DRAIN_MAX_S; an error end
arms it at once (before, an S3 outage at an auto-stop lost the spooled audio after 20 s
though nothing forced an end), and after `RESTARTED_ENDS` what was not uploaded stays in
the spool for the restarted container (exit 1, same pod) to adopt (`keeps_spool`). The
operator keeps the upload grant valid while the pod has not Succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from voicetrack.errors import InvalidInputError
from voicetrack_recorder.kube import RecorderKube

log = logging.getLogger(__name__)

FLUSH_GRACE_S = 20.0
"""How long a recorder forced to stop (SIGTERM, the session deleted) keeps retrying the
upload of its last chunks, in all: one deadline from the moment the end is forced, inside
the pod's 30 s termination grace. The deadline is read between attempts, so an attempt
under way when it passes ends when its calls do: each Kubernetes call within
`kube.API_TIMEOUTS` (3 s connect, 4 s read once the deadline is armed: `stopping`; 15 s
while recording). Against an API server that accepts and never answers, the flush ends by
24 s and the lost window's marker create (`MARKER_GRACE_S`; one try at least) by 28 s,
inside the grace (it needs the API: when it fails the window's loss is in the recorder's
log and termination message only); a consent marker due as well tries once more and may
be cut by the SIGKILL. Before the calls were bounded they
waited for good and the pod was SIGKILLed with no marker. A POST to a silent S3 is
bounded by its own timeout (`voicetrack.uploadgrant`, 120 s read), which the grace does not
cover."""
MARKER_GRACE_S = 5.0
"""After the flush deadline, how long creating the lost window's marker chunk may retry
(20 + 5 s, inside the 30 s termination grace; a create under way then ends within one
call's timeout, `FLUSH_GRACE_S`)."""
DRAIN_MAX_S = 3600.0
"""How long a run that ended by itself keeps uploading its spool before the flush deadline
is armed all the same (within the upload grant, which lasts the session's maximum duration
plus an hour): a pod that never ends while S3 never comes back would hold its guild."""
ERROR_ENDS = ("source-failed", "upload-failed", "clock-stepped")
"""Ends after which the flush deadline is armed at once, as for a forced end: the
container restarts and capture resumes sooner (second review: a voice connection lost
during an S3 outage held capture down for the whole outage)."""


RESTARTED_ENDS = ("source-failed", "clock-stepped")
"""Error ends whose chunks not uploaded by the deadline stay in the spool: the process exits
1, the container restarts in the same pod (its emptyDir kept) and the next run adopts them
(`ChunkUploader.adopt`) and uploads them first. Before, they were given up as a lost
window though the next run was seconds away. Not `upload-failed`: an upload that failed
for good would fail again; nor a source failing on bad input (InvalidInputError, exit 2:
the operator fails the session and deletes the pod, so no run would adopt them)."""


@dataclass
class RecorderResult:
    """How a run ended: chunks written, why, and the source's error if it failed."""

    chunks: int
    reason: str
    error: BaseException | None = None


def arms_at_once(reason: str, forced: bool) -> bool:
    """Whether a run that ended with `reason` arms the flush deadline as it ends: a forced
    end (`forced`) or one of ERROR_ENDS."""
    return forced or reason in ERROR_ENDS


def keeps_spool(reason: str, error: BaseException | None, forced: bool) -> bool:
    """Whether the chunks a run that ended with `reason` (and `error`) did not upload stay
    in the spool for the restarted container (RESTARTED_ENDS, not forced, not an input
    error) instead of being given up as a lost window."""
    return reason in RESTARTED_ENDS and not forced and not isinstance(error, InvalidInputError)


class FlushDeadline:
    """When the uploads of a run's last chunks stop retrying (`at`: monotonic s, None until
    armed), and when creating a marker chunk does (`marker_at`). `grace_s`, `marker_grace_s`
    and `drain_max_s` default to FLUSH_GRACE_S, MARKER_GRACE_S and DRAIN_MAX_S."""

    def __init__(self, kube: RecorderKube) -> None:
        self.kube = kube
        self.at: float | None = None
        """Monotonic time after which uploads stop retrying; None until the end is forced
        (`Recorder.forced`)."""
        self.grace_s = FLUSH_GRACE_S
        self.marker_grace_s = MARKER_GRACE_S
        self.drain_max_s = DRAIN_MAX_S

    def arm(self, pending: int) -> None:
        """Set `at` to now + `grace_s` unless set already, and cut the Kubernetes calls'
        read timeout (`ApiTimeouts.stopping`: attempts end in the grace); `pending` chunks
        left to upload are logged."""
        if self.at is None:
            self.at = time.monotonic() + self.grace_s
            self.kube.timeouts = self.kube.timeouts.stopping()  # attempts end in the grace
            if pending:
                log.warning("stop forced: %d chunk(s) left to upload within %.0f s",
                            pending, self.grace_s)

    async def arm_when_forced(self, forced: Callable[[], bool], pending: Callable[[], int],
                              poll_s: float) -> None:
        """Arm the deadline when `forced()` turns true (SIGTERM or the session's deletion
        while the last chunks upload), or once they have uploaded for `drain_max_s`
        (polled every `poll_s` s; cancelled when the run is done). `pending()`: the chunks
        left, for the log."""
        until = time.monotonic() + self.drain_max_s
        while not forced() and time.monotonic() < until:
            await asyncio.sleep(poll_s)
        self.arm(pending())

    def marker_at(self) -> float | None:
        """When creating a marker chunk stops retrying: `marker_grace_s` after the flush
        deadline; None (no limit) while it is not armed."""
        if self.at is None:
            return None
        return self.at + self.marker_grace_s
