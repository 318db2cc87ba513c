"""RecordingChunks whose spec the operator's model cannot parse: refused, never a wedge.

The CRD's schema and CEL rules admit what `ChunkSpec` admits as far as they can express
it, but an object stored before a CRD update, or a model rule the CRD lacks, can still
reach the operator. `ChunkRef.from_object` raises on such a chunk; every path that walks
a session's chunks (the create handler, the observe timer's safety net, deletion's wait
for transcodes, the chunk inventory) goes through `usable_chunks` instead, which refuses
an unparsable chunk once (status `failed` with `refused` and `error` saying why: a
terminal state, counted failed, never mirrored to SQL, its raw data left where it is)
and leaves it out. Before, one such chunk made each of those paths raise for ever: the
session's status froze and its deletion was a PromotionFailed retried every 300 s
(found by a review; tests/e2e/test_operator_unparsable_chunks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from voicetrack.errors import InvalidInputError
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.context import Context
from voicetrack_operator.services.chunkstate import ChunkRef

log = logging.getLogger(__name__)

REASON_MAX = 1000
"""Characters kept of the parse error in `status.refused` and `status.error` (as
`ChunkService.refuse`)."""


def refusal_status(err: InvalidInputError) -> dict[str, Any]:
    """The status written to a chunk whose spec does not parse (`err`, from
    `ChunkRef.from_object`): `failed`, refused, with the reason."""
    why = f"spec does not parse: {err}"[:REASON_MAX]
    return {"transcodeStatus": TranscodeStatus.FAILED.value, "refused": why, "error": why,
            "trackCount": 0}


async def usable_chunks(ctx: Context, objs: Iterable[dict[str, Any]]) -> list[ChunkRef]:
    """The chunks of `objs` (RecordingChunk API dicts) that parse, in order. One that does
    not is refused (`refusal_status`, conditionally on the resourceVersion it was read at,
    once: a chunk already failed is only left out) and left out. Raises TemporaryFailure
    while the API server is away."""
    out: list[ChunkRef] = []
    for obj in objs:
        try:
            out.append(ChunkRef.from_object(obj))
        except InvalidInputError as err:
            await refuse_unparsable(ctx, obj, err)
    return out


async def refuse_unparsable(ctx: Context, obj: dict[str, Any], err: InvalidInputError
                            ) -> bool:
    """Refuse chunk `obj`, whose spec does not parse (`err`), unless it is failed already.
    True when this call wrote the refusal."""
    meta = obj.get("metadata") or {}
    if (obj.get("status") or {}).get("transcodeStatus") == TranscodeStatus.FAILED.value:
        return False
    log.warning("%s/%s: refused, its spec does not parse: %s", meta.get("namespace"),
                meta.get("name"), err)
    written = await ctx.kube.patch_chunk_status(
        str(meta.get("namespace")), str(meta.get("name")), refusal_status(err),
        meta.get("resourceVersion"))
    if written:
        ctx.metrics.chunks.labels("failed").inc()
    return written
