"""Where a chunk sits in output time, as its own Job reads it while the session records
(its piece, `pieces.py`, and the head after it, `silenthead.py`): the spec of the chunk
before it and the paused time cut before it.

Trust (`voicetrack.layout`, "Who writes where"). The recorder's upload grant covers
`chunks/<k>/`, `chunk.json` included, at any time; the frozen copy of a chunk's spec
(`MeetingLayout.frozen_spec_key`: written by the operator when it takes the chunk, and by
the chunk's Job) and its `piece.json` lie in `outputs/<k>/`, outside it. So every earlier
spec read here is the frozen copy where there is one, the recorder's only where there is
none (a chunk from before the upgrade) or it cannot be read. The chain is continued from
the nearest earlier `piece.json` (its Job's context) at most `MAX_LOOK_BACK` chunks back
(else from the session's start when that is as near), and the specs after it are checked
as the promotion plan reads them (`context_from`): in index order, none overlapping the
one before, none longer than `MAX_CHUNK_SECONDS`, the origin the first chunk there is.
Holes (an index never sealed, a window nobody sealed) are what the plan accepts too.
Anything else means no context: no piece, and assembly renders that unit itself. A piece
placed from a wrong spec set is refused by assembly's checks against the plan
(`piececheck`), never promoted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import ValidationError

from voicetrack.chunkspec import SPEC_MAX_BYTES, ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PieceManifest
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import MAX_CHUNK_SECONDS

log = logging.getLogger(__name__)

MAX_LOOK_BACK = 2000
"""How many chunks back a Job looks for a `piece.json` to continue the chain from (and so
how many specs it reads at most); past it the chunk gets no context, hence no piece. Far
above a 4 h session of 10 s chunks (1440): a long silence (chunks without tracks have no
Job, hence no piece) or a run of failed Jobs costs the next Job one GET per chunk back
and its piece re-anchors the chain; the bound only caps a Job's reads in a days-long
session whose pieces all failed."""


@dataclass(frozen=True)
class ChunkContext:
    """Where chunk `k` sits in output time: the session's origin (first chunk's start,
    session ms), the paused ms cut before it, the chunk before it (None for the first)
    and whether any earlier speaker was stereo."""

    origin_ms: int
    paused_ms: int
    prev: ChunkSpec | None
    prev_paused_ms: int
    stereo_seen: bool


@dataclass(frozen=True)
class Known:
    """The chain as a chunk's Job left it in its `piece.json`: chunk `index` ends at
    `end_ms` (session ms), the session's origin, the paused ms cut up to that chunk (its
    own leading pause included) and whether any speaker so far was stereo."""

    index: int
    end_ms: int
    origin_ms: int
    paused_ms: int
    stereo_seen: bool

    @classmethod
    def of_piece(cls, piece: PieceManifest) -> Known:
        """The chain `piece` (chunk `piece.index`'s `piece.json`) continues."""
        return cls(piece.index, piece.chunk_end_ms, piece.origin_ms, piece.paused_ms,
                   piece.stereo_seen)


def _begins(chunk: ChunkSpec) -> int:
    """Session ms where `chunk`'s leading gap starts (its start when it has none): where
    the chunk before it must end."""
    return chunk.gap.start_ms if chunk.gap is not None else chunk.start_ms


def _cut(chunk: ChunkSpec, prev_end_ms: int) -> int:
    """Paused ms between the chunk before (ending at `prev_end_ms`) and `chunk`."""
    if chunk.gap is not None and chunk.gap.cause == "paused":
        return chunk.start_ms - prev_end_ms
    return 0


def paused_before(chunk: ChunkSpec, prev: ChunkSpec) -> int:
    """Paused ms between `prev` and `chunk`: the whole interval when the chunk's recorded
    gap is a pause (as the promotion plan reads it, `plan.py`)."""
    return _cut(chunk, prev.end_ms)


def prev_problem(prev: ChunkSpec, chunk: ChunkSpec) -> str | None:
    """Why `prev` cannot be the chunk right before `chunk` (None when it can): its index
    is not `chunk.index - 1`, it does not end where `chunk`'s leading gap starts (or,
    without a gap, where `chunk` starts), or it is longer than any chunk the recorder
    seals (`MAX_CHUNK_SECONDS`). A forged one could otherwise widen a render to hours."""
    if prev.index != chunk.index - 1:
        return f"index {prev.index}, not {chunk.index - 1}"
    if prev.end_ms != _begins(chunk):
        return (f"ends at {prev.end_ms} ms, not where chunk {chunk.index} begins "
                f"({_begins(chunk)} ms)")
    if prev.duration_ms > MAX_CHUNK_SECONDS * 1000:
        return f"{prev.duration_ms} ms long, more than {MAX_CHUNK_SECONDS} s"
    if _begins(chunk) > chunk.start_ms:
        return f"chunk {chunk.index}'s gap does not lie before its start"
    return None


def spec_problem(spec: ChunkSpec, layout: MeetingLayout, index: int) -> str | None:
    """Why `spec`, read from chunk `index`'s folder of `layout`, is not that chunk's spec
    (None when it may be): another index or meeting, or a track key that is not this
    meeting's raw key of that chunk and speaker (a forged one could name another
    meeting's audio)."""
    if spec.index != index:
        return f"index {spec.index}, not {index}"
    if (spec.guild_id, spec.meeting_id) != (layout.guild_id, layout.meeting_id):
        return f"meeting {spec.guild_id}/{spec.meeting_id}, not {layout.root}"
    for t in spec.tracks:
        if t.key != layout.raw_key(index, t.user_id, spec.raw_format):
            return f"track key {t.key} is not this meeting's"
    return None


def _read_spec(store: ObjectStore, layout: MeetingLayout, key: str, index: int,
               whose: str) -> ChunkSpec | None:
    """The spec at `key` if it parses and is chunk `index`'s (`spec_problem`), else None
    (a refusal logged with `whose`)."""
    try:
        spec = ChunkSpec.model_validate(store.get_json(key, SPEC_MAX_BYTES))
    except NotFoundError:
        return None
    except (InvalidInputError, ValidationError) as err:
        log.warning("chunk %d: %s %s is not a chunk spec: %s", index, whose, key, err)
        return None
    problem = spec_problem(spec, layout, index)
    if problem is not None:
        log.warning("chunk %d: %s %s refused: %s", index, whose, key, problem)
        return None
    return spec


REFUSED: Final = "refused"
"""`_spec_at`'s answer for a chunk whose spec is there but is not that chunk's."""


def _spec_at(store: ObjectStore, layout: MeetingLayout, index: int
             ) -> ChunkSpec | Literal["refused"] | None:
    """Chunk `index`'s spec: the frozen copy when it is there and is that chunk's
    (`spec_problem`), else the recorder's `chunk.json` when the frozen copy is missing or
    unreadable; REFUSED when the one read is not usable (logged), None when there is
    none. A frozen copy that is another chunk's is a refusal, never a reason to trust the
    recorder's copy."""
    key = layout.frozen_spec_key(index)
    try:
        frozen: ChunkSpec | None = ChunkSpec.model_validate(store.get_json(key,
                                                                           SPEC_MAX_BYTES))
    except NotFoundError:
        frozen = None
    except (InvalidInputError, ValidationError) as err:
        log.warning("chunk %d: frozen spec %s is not a chunk spec: %s", index, key, err)
        frozen = None
    if frozen is not None:
        problem = spec_problem(frozen, layout, index)
        if problem is None:
            return frozen
        log.warning("chunk %d: frozen spec %s refused: %s", index, key, problem)
        return REFUSED
    recorder_key = layout.chunk_manifest_key(index)
    if not store.exists(recorder_key):
        return None
    spec = _read_spec(store, layout, recorder_key, index, "recorder's spec")
    return REFUSED if spec is None else spec


def prev_spec(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec
              ) -> ChunkSpec | None:
    """The spec of the chunk before `chunk` (not index 0), read as `_spec_at` reads it,
    when it fits (`prev_problem`); None when it does not (logged) or there is none: the
    caller treats the chunk before as unknown. S3: one GET, two without a frozen copy."""
    index = chunk.index - 1
    spec = _spec_at(store, layout, index)
    if spec is None or spec == REFUSED:
        return None
    assert isinstance(spec, ChunkSpec)
    problem = prev_problem(spec, chunk)
    if problem is not None:
        log.warning("chunk %d: chunk %d's spec is not the chunk before it: %s", chunk.index,
                    index, problem)
        return None
    return spec


def _follow_problem(before: ChunkSpec, after: ChunkSpec) -> str | None:
    """Why `after` cannot follow `before` in one session (None when it can, holes
    allowed): not a later index, or beginning (its leading gap included) before `before`
    ends."""
    if after.index <= before.index:
        return f"chunk {after.index} after chunk {before.index}"
    if _begins(after) < before.end_ms:
        return (f"chunk {after.index} begins at {_begins(after)} ms, before chunk "
                f"{before.index} ends ({before.end_ms} ms)")
    return None


def context_from(chunk: ChunkSpec, prev: ChunkSpec, known: Known | None,
                 specs: list[ChunkSpec]) -> ChunkContext | str:
    """`chunk`'s context from the chain `known` at the end of some earlier chunk (None:
    from the session's start) and the specs of the chunks after that one up to `prev`,
    the chunk right before `chunk` (already checked against it), in index order; or why
    they cannot be read as one session (a str), as the promotion plan would read them:
    the last is not `prev`; a
    spec is not a later chunk than the one before it or begins before it ends
    (`_follow_problem`, the first against `known`'s chunk); a gap does not lie before
    its chunk's start; a spec is longer than `MAX_CHUNK_SECONDS`. Missing indexes and
    windows are holes, as in the plan: only a pause is cut, and without `known` the
    origin is the first spec's start (chunk 0's, unless it never came). Pure; times in
    ms."""
    if not specs or specs[-1] != prev:
        return f"chunk {prev.index}'s spec is not the one placed before chunk {chunk.index}"
    if known is None:  # the origin is the first chunk there is, as in the plan
        origin, paused, end, stereo = specs[0].start_ms, 0, specs[0].start_ms, False
    else:
        head = specs[0]
        if head.index <= known.index or _begins(head) < known.end_ms:
            return (f"chunk {head.index} (from {_begins(head)} ms) does not follow chunk "
                    f"{known.index}'s piece (ending at {known.end_ms} ms)")
        origin, paused, end, stereo = (known.origin_ms, known.paused_ms, known.end_ms,
                                       known.stereo_seen)
    before: ChunkSpec | None = None
    for spec in specs:
        if spec.duration_ms > MAX_CHUNK_SECONDS * 1000:
            return (f"chunk {spec.index}: {spec.duration_ms} ms long, more than "
                    f"{MAX_CHUNK_SECONDS} s")
        if _begins(spec) > spec.start_ms:
            return f"chunk {spec.index}'s gap does not lie before its start"
        if before is not None:
            problem = _follow_problem(before, spec)
            if problem is not None:
                return problem
        if known is not None or before is not None:
            paused += _cut(spec, end)
        end, before = spec.end_ms, spec
        stereo = stereo or any(t.channels == 2 for t in spec.tracks)
    stereo = stereo or any(t.channels == 2 for t in chunk.tracks)
    return ChunkContext(origin, paused + paused_before(chunk, prev), prev, paused, stereo)


def _known(store: ObjectStore, layout: MeetingLayout, index: int) -> Known | None:
    """Chunk `index`'s chain from its `piece.json`; None when it is missing, unreadable
    or another chunk's."""
    try:
        piece = PieceManifest.model_validate(store.get_json(
            layout.piece_manifest_key(index)))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None
    return Known.of_piece(piece) if piece.index == index else None


def chunk_context(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec
                  ) -> ChunkContext | None:
    """The context of `chunk` from S3: the previous chunk's spec (`prev_spec`), and the
    chain from its `piece.json`; without a usable one, from the nearest earlier
    `piece.json` at most `MAX_LOOK_BACK` chunks back (none: the session's start, when it
    is that near) and the spec of every chunk after it (`_spec_at`; an index with none
    is a hole), all checked by `context_from`. S3: two GETs on the first path; else one
    GET per chunk looked back at and one or two per spec read. None (logged) when it
    cannot be known: the previous chunk's spec is missing or refused, no piece and no
    session start within reach, or the specs cannot be read as one session."""
    if chunk.index == 0:
        return ChunkContext(chunk.start_ms, 0, None, 0, any(t.channels == 2
                                                             for t in chunk.tracks))
    prev = prev_spec(store, layout, chunk)
    if prev is None:
        return None
    known = _known(store, layout, prev.index)
    specs: list[ChunkSpec] = []
    if known is None:
        first = max(prev.index - MAX_LOOK_BACK, 0)
        for index in range(prev.index - 1, first - 1, -1):
            known = _known(store, layout, index)
            if known is not None:
                break
        if known is None and first > 0:
            log.warning("chunk %d: no context: no piece within %d chunks before it",
                        chunk.index, MAX_LOOK_BACK)
            return None
        for index in range(0 if known is None else known.index + 1, prev.index):
            spec = _spec_at(store, layout, index)
            if spec == REFUSED:  # there, but not that chunk's: something is wrong
                log.warning("chunk %d: no context: chunk %d's spec refused", chunk.index,
                            index)
                return None
            if isinstance(spec, ChunkSpec):  # none at all: a hole, as in the plan
                specs.append(spec)
        specs.append(prev)
    else:
        if known.end_ms != prev.end_ms:
            log.warning("chunk %d: no context: chunk %d's piece ends at %d ms, its spec at "
                        "%d ms", chunk.index, prev.index, known.end_ms, prev.end_ms)
            return None
        return ChunkContext(known.origin_ms, known.paused_ms + paused_before(chunk, prev),
                            prev, known.paused_ms,
                            known.stereo_seen or any(t.channels == 2 for t in chunk.tracks))
    made = context_from(chunk, prev, known, specs)
    if isinstance(made, str):
        log.warning("chunk %d: no context: %s", chunk.index, made)
        return None
    return made
