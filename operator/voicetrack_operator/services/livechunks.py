"""What the watches' view of a session's RecordingChunks says for its audio so far
(`services.live`): how many chunks a live Job can assemble, and whose audio it must not
serve now (consent, docs/consent.md). Pure functions of the chunk objects."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voicetrack.resources import SessionSpec, TranscodeStatus
from voicetrack_operator.plan import run_end


def transcoded_run(chunks: Iterable[dict[str, Any]]) -> tuple[int, list[int]]:
    """`(n, silent)`: how many chunks from index 0 on, without a hole, have a final
    transcode status (the chunks a live Job can assemble), and which of those have no
    piece and never will (`silent`: failed, or no tracks since nobody spoke; promotion
    makes their windows silence). `chunks` are RecordingChunk objects (as dicts) in any
    order; a refused chunk (not this session's) is not counted. A chunk still queued or
    transcoding, or a missing index, ends the run."""
    by_index: dict[int, dict[str, Any]] = {}
    for obj in chunks:
        if (obj.get("status") or {}).get("refused"):
            continue
        try:
            by_index[int((obj.get("spec") or {})["index"])] = obj
        except (KeyError, TypeError, ValueError):
            continue
    n, silent = 0, []
    while n in by_index:
        obj = by_index[n]
        status = (obj.get("status") or {}).get("transcodeStatus")
        if status not in (TranscodeStatus.DONE.value, TranscodeStatus.FAILED.value):
            break
        if status == TranscodeStatus.FAILED.value or not (obj.get("spec") or {}).get("tracks"):
            silent.append(n)
        n += 1
    return n, silent


def withheld(spec: SessionSpec, chunks: Iterable[dict[str, Any]]) -> set[str]:
    """The user ids whose audio the audio so far must not serve now: opted out now and
    with a track in any chunk (so in its pieces: their own, and the mix). Opted out now:
    `spec.optOutUserIds`, the `optedOut` of the last chunk of the run of consecutive
    indexes from the lowest (the chunk promotion goes by, `plan.consent_chunks`), and that
    of the chunk with the highest index when it lies past a hole: the stricter of the two,
    so a chunk past a hole that opts a member back in serves nothing promotion would leave
    out. `chunks` are RecordingChunk objects (as dicts, as the watch shows them) in any
    order; refused and unparsable ones count too (their index holds no hole, their audio
    is not served, and nothing is lost by being careful)."""
    by_index: dict[int, dict[str, Any]] = {}
    speakers: set[str] = set()
    for obj in chunks:
        chunk = obj.get("spec") or {}
        speakers |= {str(t.get("userId")) for t in chunk.get("tracks") or []}
        index = chunk.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            by_index[index] = chunk
    now = set(spec.opt_out_user_ids)
    if by_index:
        for index in {run_end(by_index.keys()), max(by_index)}:
            now |= {str(o.get("userId")) for o in by_index[index].get("optedOut") or []}
    return now & speakers
