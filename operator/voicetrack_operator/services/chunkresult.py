"""A chunk's transcode result as the operator takes it: `outputs/<k>/result.json`, written
last by the chunk's transcoder Job, outside the recorder's upload grant (`voicetrack.
layout`), and checked against the chunk's spec before any of it is believed.

A transcoder older than the `outputs/<k>/` layout wrote its result in the chunk's own
folder (`chunks/<k>/result.json`), where a recorder can write too: that file is only ever
looked for (`previous_layout_result`: the chunk is then transcoded again), never read.
"""

from __future__ import annotations

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import TranscodeResult
from voicetrack_operator.adapters.objects import AsyncObjectStore

PREVIOUS_RESULT = "result.json"
"""The name a transcoder older than the `outputs/<k>/` layout gave its result, in the
chunk's own folder (`chunks/<k>/`)."""


async def read_result(store: AsyncObjectStore, layout: MeetingLayout, spec: ChunkSpec
                      ) -> TranscodeResult:
    """Chunk `spec`'s `result.json` in `store` under `layout`. Raises InvalidInputError
    when it is missing, not JSON, not a TranscodeResult, lacks a track of the chunk, or
    names an output other than the chunk's own key for it; TemporaryFailure (S3 away)."""
    try:
        raw = await store.get_json(layout.result_key(spec.index))
        result = TranscodeResult.model_validate(raw)
    except NotFoundError as err:
        raise InvalidInputError(f"no result.json for chunk {spec.index}") from err
    except (InvalidInputError, ValueError) as err:  # not JSON, or not a TranscodeResult
        raise InvalidInputError(str(err)) from err
    users = {o.user_id for o in result.outputs}
    missing = [t.user_id for t in spec.tracks if t.user_id not in users]
    if missing:
        raise InvalidInputError(f"result.json lacks tracks of {', '.join(missing)}")
    # result.json lies outside the recorder's upload grant (`outputs/`, not `chunks/`);
    # still, an output is only ever this chunk's own key (the transcoder's layout)
    for out in result.outputs:
        own = layout.chunk_output_key(spec.index, out.user_id, out.format)
        if out.key != own or out.user_id not in {t.user_id for t in spec.tracks}:
            raise InvalidInputError(f"result.json names output {out.key!r}, not this "
                                    f"chunk's own {own!r}")
    return result


async def previous_layout_result(store: AsyncObjectStore, layout: MeetingLayout,
                                 spec: ChunkSpec) -> bool:
    """Whether chunk `spec`'s folder holds a `result.json` (module docstring: never read).
    Raises TemporaryFailure (S3 away)."""
    return await store.exists(f"{layout.chunk_dir(spec.index)}/{PREVIOUS_RESULT}")
