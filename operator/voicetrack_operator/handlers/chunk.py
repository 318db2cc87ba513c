"""RecordingChunk and transcoder Job handlers: parse → one service call."""

from __future__ import annotations

from typing import Any

import kopf

from voicetrack.resources import CHUNK_PLURAL, GROUP, LABEL_COMPONENT, VERSION
from voicetrack_operator.errors import kopf_errors
from voicetrack_operator.services.chunks import ChunkRef, ChunkService

CHUNK = (GROUP, VERSION, CHUNK_PLURAL)


@kopf.on.resume(*CHUNK, id="transcode")
@kopf.on.create(*CHUNK, id="transcode")
async def on_chunk_create(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with kopf_errors():
        await ChunkService(memo.ctx).ensure_chunk(ChunkRef.from_object(dict(body)))


@kopf.on.event("batch", "v1", "jobs", id="transcode-job",
               labels={LABEL_COMPONENT: "transcoder"})
async def on_transcode_job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    if event["type"] in ("ADDED", "MODIFIED", None):
        with kopf_errors():
            await ChunkService(memo.ctx).observe_job(dict(event["object"]))
