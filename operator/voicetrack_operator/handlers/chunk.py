"""RecordingChunk and transcoder Job handlers: parse → one service call."""

from __future__ import annotations

from typing import Any

import kopf

from voicetrack.resources import CHUNK_PLURAL, GROUP, LABEL_COMPONENT, VERSION
from voicetrack_operator.errors import kopf_errors
from voicetrack_operator.handlers.index import known_chunk
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.unparsable import usable_chunks

CHUNK = (GROUP, VERSION, CHUNK_PLURAL)


@kopf.on.event(*CHUNK, id="transcode")
async def on_chunk_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A new chunk (or one listed at start-up) gets its rows and Job. An event handler
    keeps no state on the chunk (no annotations: fewer API writes per chunk); a failure
    here is caught up by the session's observe timer, which ensures every new chunk."""
    if event["type"] in ("ADDED", None) and "transcodeStatus" not in (
            event["object"].get("status") or {}):
        with kopf_errors():
            usable = await usable_chunks(memo.ctx, [dict(event["object"])])
            if not usable:  # its spec does not parse: refused (services.unparsable)
                kopf.warn(kopf.Body(event["object"]), reason="ChunkRefused",
                          message="its spec does not parse")
                return
            status = await ChunkService(memo.ctx).ensure_chunk(usable[0])
        if status.refused:  # not its session's (services.isolation): say so where seen
            kopf.warn(kopf.Body(event["object"]), reason="ChunkRefused",
                      message=status.error or "")


@kopf.on.event("batch", "v1", "jobs", id="transcode-job",
               labels={LABEL_COMPONENT: "transcoder"})
async def on_transcode_job_event(event: kopf.RawEvent, memo: kopf.Memo,
                                 **kwargs: Any) -> None:
    """Each Job event moves its chunk forward; the chunk as the chunk watch shows it
    (`handlers/index.py`) spares reading it when it is already as far as the Job."""
    if event["type"] in ("ADDED", "MODIFIED", None):
        job = dict(event["object"])
        with kopf_errors():
            await ChunkService(memo.ctx).observe_job(job, known_chunk(job, kwargs))
