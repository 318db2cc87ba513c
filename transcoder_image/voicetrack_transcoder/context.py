"""Where a chunk sits in output time, as its own Job reads it while the session records
(its piece, `pieces.py`, and the head after it, `silenthead.py`): the spec of the chunk
before it and the paused time cut before it.

Trust (`voicetrack.layout`, "Who writes where"). The recorder's upload grant covers
`chunks/<k>/`, `chunk.json` included, at any time; the frozen copy of a transcoded
chunk's spec (`MeetingLayout.frozen_spec_key`) and its `piece.json` lie in `outputs/<k>/`,
outside it. So every earlier spec read here is the frozen copy where there is one that
parses, the recorder's only where there is none (a chunk nobody spoke in has no Job,
hence no frozen copy; a chunk whose Job has not finished yet); where both exist and
differ the frozen one wins and the difference is logged. The chain is continued from the
nearest earlier `piece.json` (its Job's context), and every spec read after it is
checked before it is summed (`context_from`): one spec per index, contiguous up to the
chunk before, each the chunk right before the next (`prev_problem`: index, adjacency, at
most `MAX_CHUNK_SECONDS`). Anything else means no context: no piece, and assembly
renders that unit itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout, parse_key
from voicetrack.manifests import PieceManifest
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import MAX_CHUNK_SECONDS

log = logging.getLogger(__name__)


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
        spec = ChunkSpec.model_validate(store.get_json(key))
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


def prev_spec(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec
              ) -> ChunkSpec | None:
    """The spec of the chunk before `chunk` (not index 0): its frozen copy
    (`MeetingLayout.frozen_spec_key`, outside the recorder's grant) when there is one that
    fits (`spec_problem`, `prev_problem`), else the recorder's `chunk.json` in
    `chunks/<index>/` when it fits; None when neither does (each refusal logged) or there
    is none: the caller treats the chunk before as unknown."""
    index = chunk.index - 1
    for key, whose in ((layout.frozen_spec_key(index), "frozen spec"),
                       (layout.chunk_manifest_key(index), "recorder's spec")):
        spec = _read_spec(store, layout, key, index, whose)
        if spec is None:
            continue
        problem = prev_problem(spec, chunk)
        if problem is None:
            return spec
        log.warning("chunk %d: %s is not the chunk before it: %s", chunk.index, key, problem)
    return None


def context_from(chunk: ChunkSpec, prev: ChunkSpec, known: Known | None,
                 specs: list[ChunkSpec]) -> ChunkContext | str:
    """`chunk`'s context from the chain `known` at the end of some earlier chunk (None:
    from the session's start) and the specs of every chunk after that one up to `prev`,
    the chunk right before `chunk` (already checked against it), in index order; or why
    they do not make one chain (a str): indexes not exactly `known.index + 1` (0 without
    `known`) .. `prev.index`, the last not `prev`, a spec that is not the chunk right
    before the next (`prev_problem`), the first not beginning where `known`'s chunk
    ends. Pure; times in ms."""
    first = 0 if known is None else known.index + 1
    if [s.index for s in specs] != list(range(first, prev.index + 1)):
        return (f"specs of chunks {[s.index for s in specs]}, not one each of "
                f"{first}..{prev.index}")
    if specs and specs[-1] != prev:
        return f"chunk {prev.index}'s spec is not the one placed before chunk {chunk.index}"
    if known is not None:
        head = specs[0] if specs else chunk
        if _begins(head) != known.end_ms:
            return (f"chunk {head.index} begins at {_begins(head)} ms, not where chunk "
                    f"{known.index}'s piece ends ({known.end_ms} ms)")
        origin, paused, end, stereo = (known.origin_ms, known.paused_ms, known.end_ms,
                                       known.stereo_seen)
    else:
        origin, paused, end, stereo = specs[0].start_ms, 0, specs[0].end_ms, False
    for i, spec in enumerate(specs):
        if i + 1 < len(specs):
            problem = prev_problem(spec, specs[i + 1])
            if problem is not None:
                return f"chunk {spec.index}: {problem}"
        if known is not None or i > 0:
            paused += _cut(spec, end)
        end = spec.end_ms
        stereo = stereo or any(t.channels == 2 for t in spec.tracks)
    stereo = stereo or any(t.channels == 2 for t in chunk.tracks)
    return ChunkContext(origin, paused + paused_before(chunk, prev), prev, paused, stereo)


@dataclass
class _Listed:
    """Indexes up to the chunk before with a frozen spec, a recorder's spec, a piece."""

    frozen: set[int]
    recorder: set[int]
    pieces: set[int]


def _listed(store: ObjectStore, layout: MeetingLayout, up_to: int) -> _Listed:
    """One listing of `outputs/` and one of `chunks/`: which chunks `<= up_to` have which
    of the objects `chunk_context` may read."""
    found = _Listed(set(), set(), set())
    for root in (layout.outputs_root, layout.chunks_root):
        for key in store.list_keys(root):
            parsed = parse_key(key, layout.prefix)
            if parsed is None or parsed.index is None or parsed.index > up_to:
                continue
            i = parsed.index
            if key == layout.frozen_spec_key(i):
                found.frozen.add(i)
            elif key == layout.piece_manifest_key(i):
                found.pieces.add(i)
            elif key == layout.chunk_manifest_key(i):
                found.recorder.add(i)
    return found


def _known(store: ObjectStore, layout: MeetingLayout, index: int) -> Known | None:
    """Chunk `index`'s chain from its `piece.json`; None when it is missing, unreadable
    or another chunk's."""
    try:
        piece = PieceManifest.model_validate(store.get_json(
            layout.piece_manifest_key(index)))
    except (NotFoundError, InvalidInputError, ValidationError):
        return None
    return Known.of_piece(piece) if piece.index == index else None


def _earlier_spec(store: ObjectStore, layout: MeetingLayout, index: int,
                  listed: _Listed) -> ChunkSpec | None:
    """Chunk `index`'s spec: the frozen copy when it is listed and fits (`spec_problem`),
    else the recorder's; both are read when both are listed, and a recorder's copy that
    differs from the frozen one is logged (the frozen one is used)."""
    frozen = recorder = None
    if index in listed.frozen:
        frozen = _read_spec(store, layout, layout.frozen_spec_key(index), index,
                            "frozen spec")
    if index in listed.recorder:
        recorder = _read_spec(store, layout, layout.chunk_manifest_key(index), index,
                              "recorder's spec")
    if frozen is not None and recorder is not None and frozen != recorder:
        log.warning("chunk %d: the recorder's %s differs from the frozen spec %s, which is "
                    "used", index, layout.chunk_manifest_key(index),
                    layout.frozen_spec_key(index))
    return frozen if frozen is not None else recorder


def chunk_context(store: ObjectStore, layout: MeetingLayout, chunk: ChunkSpec
                  ) -> ChunkContext | None:
    """The context of `chunk` from S3: the previous chunk's spec (`prev_spec`), and the
    chain from its `piece.json`; without a usable one, from the nearest earlier
    `piece.json` (none: the session's start) and the spec of every chunk after it, each
    the frozen copy when one parses, else the recorder's (see the module docstring), all
    checked by `context_from`. S3: two GETs on the first path; else one listing each of
    `outputs/` and `chunks/`, one GET of that piece and up to two per chunk after it.
    None (logged) when it cannot be known: the previous chunk's spec is missing or
    refused, a spec is missing, or they do not make one chain."""
    if chunk.index == 0:
        return ChunkContext(chunk.start_ms, 0, None, 0, any(t.channels == 2
                                                             for t in chunk.tracks))
    prev = prev_spec(store, layout, chunk)
    if prev is None:
        return None
    known = _known(store, layout, prev.index)
    specs: list[ChunkSpec] = []
    if known is None:
        listed = _listed(store, layout, prev.index)
        base = max((i for i in listed.pieces if i < prev.index), default=None)
        known = None if base is None else _known(store, layout, base)
        for index in range(0 if known is None else known.index + 1, prev.index):
            spec = _earlier_spec(store, layout, index, listed)
            if spec is None:
                log.warning("chunk %d: no context: no usable spec of chunk %d", chunk.index,
                            index)
                return None
            specs.append(spec)
        specs.append(prev)
    made = context_from(chunk, prev, known, specs)
    if isinstance(made, str):
        log.warning("chunk %d: no context: %s", chunk.index, made)
        return None
    return made
