"""A chunk left out of its session's promotion because its raw input turned out bad there.

A chunk is `done` once its transcoder Job verified its raw tracks (sha256) and transcoded
them. Its raw objects stay in S3 until promotion, in a folder the recorder's upload grant
(a POST policy for the session's prefix) can still write: a compromised or buggy recorder
can overwrite one later. That alone no longer reaches promotion: the Job stored the raw
tracks it verified as frozen copies in the chunk's outputs folder, outside the grant,
and promotion reads those (`voicetrack.layout`, "Who writes where";
`voicetrack_transcoder.rawtracks.load_raw`). A chunk's raw input is still bad at
promotion when a frozen copy is damaged (a store fault) and its raw object overwritten
(a damaged frozen copy alone is replaced by the intact raw object) or, for a chunk
transcoded before frozen copies existed, when its raw object was overwritten. The promotion Job
then fails on that chunk (exit 2, its termination message a `TerminationReport` naming
it; `promotion.ChunkInputFailed`).
Failing the whole meeting for it would keep the session's finalizer, and its namespace,
for ever (`PromotionFailed` retried every 300 s). Instead the deletion's promote step
(`services.deletion`) leaves that chunk out, once, and promotes the rest at once:

- its `temp_recordings` rows go done → failed with the reason (`fail_done_chunk`), its
  RecordingChunk's status too (while it exists), and a Warning Event `ChunkLeftOut` on the
  session names it;
- the index and reason are kept in `status.deletion.leftOut`, so a chunk rebuilt from its
  `chunk.json` (the namespace being deleted: no object to patch) is failed as well
  (`inventory.ChunkInventory.leave_out`);
- the plan is built again: its window is a `chunk-failed` gap like any failed chunk's,
  and its opt-outs still count (`plan.build_promotion_plan` reads every chunk's);
- its raw tracks as the recorder's folder holds them (evidence) are kept under
  `final/failed/<index>/` with
  the reason in `final/failed-chunks.json` (`inventory.keep_failed`), never deleted.

Not a loop: a report naming a chunk the current plan does not promote (already left out,
or never in it) is today's `PromotionFailed`, kept and retried; every leave-out removes a
promoted chunk, and at most LEAVE_OUT_MAX are left out. A raw object that is missing
(rather than bad) names no chunk (`rawtracks.fetch_raw`): that is `PromotionFailed`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from voicetrack.manifests import PromotionPlan
from voicetrack.names import chunk_name
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.context import Context
from voicetrack_operator.services.chunkstate import parsed
from voicetrack_operator.services.sessionview import SessionView

log = logging.getLogger(__name__)

NOTICE_REASON = "ChunkLeftOut"
"""The Warning Event's reason on the session."""


LEAVE_OUT_MAX = 3
"""Chunks one session's promotion may leave out. Past it the failure is kept as
`PromotionFailed` for someone to look at: one bad chunk is a recorder's fault, many are
more likely the store's (every object unreadable), and leaving them out one by one would
promote an empty meeting as done, each run decoding the whole session again."""


def may_leave_out(index: int, plan: PromotionPlan, left_out: Mapping[int, str]) -> bool:
    """Whether chunk `index`, which a failed promotion Job blamed, is to be left out: only
    when `plan` (the plan built now) promotes it, it was not left out before (`left_out`,
    the deletion's) and fewer than LEAVE_OUT_MAX were. Otherwise the failure is kept as
    `PromotionFailed` (see the module docstring: never a loop)."""
    return (index not in left_out and len(left_out) < LEAVE_OUT_MAX
            and any(c.index == index for c in plan.chunks))


def left_out_reason(index: int, detail: str) -> str:
    """The chunk's failure reason (its status `error`, its temp rows' `error`, its entry
    in `final/failed-chunks.json`): why, from the promotion Job's own words `detail`."""
    return (f"left out of the promotion, its raw input bad after its transcode was done "
            f"(overwritten or corrupted in S3?): {detail}; its raw tracks are kept under "
            f"final/failed/{index:06d}/")[:1000]


async def leave_out(ctx: Context, s: SessionView, index: int, reason: str,
                    job: tuple[str, str]) -> str:
    """Mark chunk `index` of session `s` failed with `reason`: its temp rows (done →
    failed), then its RecordingChunk's status (when it still exists and is not failed
    yet), then delete the failed promotion Job `job` (namespace, name) so the next try
    runs anew. Returns the Warning message naming the chunk. Each write is idempotent
    and the Job goes last, so an attempt cut short (TemporaryFailure while SQL or the
    API is away) is simply repeated."""
    ns, name = s.ref.namespace, chunk_name(s.ref.name, index)
    rows = await ctx.db.fail_done_chunk(s.ref.uid, index, reason)
    obj = await ctx.kube.get_chunk(ns, name)
    chunk = parsed(obj) if obj is not None else None
    patched = False
    if chunk is not None and chunk.session_uid == s.ref.uid \
            and chunk.transcode_status is not TranscodeStatus.FAILED:
        new = chunk.status.model_copy(update={"transcode_status": TranscodeStatus.FAILED,
                                              "error": reason})
        patched = await ctx.kube.patch_chunk_status(ns, name, new.to_api())
        if patched:
            ctx.metrics.chunks.labels("failed").inc()
    await ctx.kube.delete_job(*job)
    message = (f"chunk {index} ({name}) left out of the promotion and marked failed "
               f"({rows} temp row(s){', its status' if patched else ''}); its time is a "
               f"gap, its opt-outs still count; promoting the rest now: {reason}")
    log.warning("session %s/%s: %s", ns, s.ref.name, message)
    return message
