"""Units of digital silence at assembly (`assembly.py`): a window nobody spoke in, a
failed chunk's gap, the time after the last piece. No Job made a piece for them, so
assembly makes their frames; silence is cheap to make once the encoder holds nothing of
the speech before it.

- No audio near the unit, from its warm-up on: LAME's steady silent frame repeated
  (`silent_made`; every frame of an all-zero input is that one, `mp3grid.silent_frames`).
- Silence right after speech: only the first `HEAD_MS` of the unit are rendered and
  encoded (the encoder's and decoders' tails of the speech), then LAME's silent frame
  (`settle_head`, `settled_made`), checked to be the frames a render of the whole unit
  gives (tests/integration/test_transcoder_silent_chunks.py compares the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicetrack.audio import FRAME_MS, Channels, ms_to_samples, samples_to_ms
from voicetrack_transcoder.mp3grid import FRAME, WARMUP_FRAMES, owned_end
from voicetrack_transcoder.piececheck import around
from voicetrack_transcoder.pieces import Made, Placed, Rendered, Work, make
from voicetrack_transcoder.waveform import SAMPLES_PER_PIXEL


def silent_made(silence: dict[int, bytes], w: Work, count: int, names: list[str],
                track_channels: dict[str, Channels]) -> Made:
    """What `make` gives for a unit of digital silence from its warm-up on: `count`
    frames of LAME's silent frame per track of `names` (every frame of an all-zero input
    is that one: `mp3grid.silent_frames`), zero peaks over the unit (one pixel per
    `SAMPLES_PER_PIXEL` samples, a partial one included), no voice activity."""
    pixels = -(-ms_to_samples(w.unit_end_ms - w.unit_start_ms) // SAMPLES_PER_PIXEL)
    zeros = np.zeros(pixels, np.int8)
    return Made(frames={n: [silence[track_channels[n]]] * count for n in names},
                peaks={n: (zeros, zeros) for n in names}, speech={})


HEAD_MS = 1000
"""A unit that is digital silence after speech (a window nobody spoke in, a failed
chunk's gap) is rendered and encoded only this far into it (output ms); the rest of its
frames are LAME's silent frame (`settled_made`), instead of encoding the whole window."""
SETTLE_MS = 400
"""Output ms before the head's end in which every track must be all zeros."""
SETTLE_FRAMES = 4
"""The head's last owned frames that must all be LAME's silent frame."""


@dataclass(frozen=True)
class HeadPlan:
    """How to make the head of a silent unit after speech: render output time
    `[from_ms, head_ms)` from the chunks `placed` (in order), then `settled_made`."""

    from_ms: int
    head_ms: int
    placed: list[Placed]


REACH_MS = 1000
"""Output ms before a unit's render start whose chunks are decoded too (`head_plan`)."""


def reach_ms(w: Work) -> int:
    """The output ms from which the chunks a render of unit `w` decodes are placed
    (`head_plan`: every chunk that ends after it): `REACH_MS` before the unit's encoder
    warm-up (`WARMUP_FRAMES` before `w.first`, on the 20 ms grid, at most its start)."""
    start = max(w.first - WARMUP_FRAMES, 0) * FRAME
    return min(samples_to_ms(start) // FRAME_MS * FRAME_MS, w.unit_start_ms) - REACH_MS


def head_plan(w: Work, placed: list[Placed]) -> HeadPlan | None:
    """The render of unit `w`'s head (`settle_head`) as assembly does it, from every
    chunk of the output placed (`placed`, in order); None when the unit gets no head
    (rendered whole, or all silence from its warm-up on: `silent_made`). The one home
    of this rule for assembly and for the Job that makes the head while recording
    (`silenthead.py`), whose bytes must be the same.

    Once `settle_head` gives a head, the plan depends on the unit's end only through the
    chunks placed in `[w.unit_start_ms, head)`, which have no tracks (`settle_head`) and
    so render as the silence any unplaced time renders as (`streams.SpeakerStream`): a
    head made for any unit long enough after the same chunks is the same bytes."""
    from_ms = reach_ms(w) + REACH_MS
    if w.end is None:
        return None
    near = around(placed, from_ms - REACH_MS, w.unit_end_ms)
    if not any(p.chunk.tracks for p in near):
        return None
    from_ms = min(from_ms, near[0].out_start_ms)
    head = settle_head(w, placed)
    if head is None:
        return None
    return HeadPlan(from_ms, head, [p for p in near if p.out_start_ms < head])


def settle_head(w: Work, placed: list[Placed]) -> int | None:
    """The output ms at which to end the render of unit `w` (`HEAD_MS` into it) when no
    chunk with tracks overlaps the unit (its input after its start is digital silence, but
    the encoder state and the decoders' tails come from the speech before it), and the
    unit is long enough; None otherwise (the unit is rendered whole)."""
    head = w.unit_start_ms + HEAD_MS
    if w.end is None or head >= w.unit_end_ms \
            or owned_end(ms_to_samples(head)) >= w.end:
        return None
    if any(p.chunk.tracks for p in around(placed, w.unit_start_ms, w.unit_end_ms)):
        return None
    return head


def settled_head(rendered: Rendered, w: Work, head_ms: int, mp3_bitrate: int,
                 workdir: Path, speakers: list[str], silence: dict[str, bytes]
                 ) -> Made | None:
    """The head of unit `w` from `rendered`, which ends at `head_ms` (`settle_head`):
    `make` of frames `[w.first, owned_end(head))` by track of `silence`, peaks over
    `[w.unit_start_ms, head_ms)`, the head's voice activity. Without a bit reservoir
    (`mp3grid`) a frame depends only on the input its MDCT window and LAME's look-ahead
    span and on the encoder's state, so once the input is digital silence and
    `SETTLE_FRAMES` frames in a row are the silent frame (`silence`, by track), every later
    frame is too. None (render the unit whole) when the head's last `SETTLE_MS` are not
    all zeros or its last frames are not settled."""
    head_end = owned_end(ms_to_samples(head_ms))
    quiet = ms_to_samples(head_ms - SETTLE_MS), ms_to_samples(head_ms)
    if any(np.any(rendered.cut(t, *quiet)) for t in silence):
        return None
    made = make(rendered, Work(w.first, head_end, w.unit_start_ms, head_ms), mp3_bitrate,
                workdir, speakers)
    if any(made.frames[n][-SETTLE_FRAMES:] != [f] * SETTLE_FRAMES
           for n, f in silence.items()):
        return None
    return made


def extend_head(head: Made, w: Work, head_ms: int, silence: dict[str, bytes]) -> Made:
    """What `make` gives for unit `w` from its head (`settled_head`, ending at output ms
    `head_ms`): the head's frames then LAME's silent frame (`silence`, by track) to
    `w.end`; the head's peaks then zeros to the unit's end; the head's voice activity."""
    assert w.end is not None  # settle_head
    head_end = owned_end(ms_to_samples(head_ms))
    zeros = np.zeros(-(-ms_to_samples(w.unit_end_ms - head_ms) // SAMPLES_PER_PIXEL),
                     np.int8)
    return Made(frames={n: head.frames[n] + [f] * (w.end - head_end)
                        for n, f in silence.items()},
                peaks={n: (np.concatenate([head.peaks[n][0], zeros]),
                           np.concatenate([head.peaks[n][1], zeros])) for n in silence},
                speech=head.speech)


def settled_made(rendered: Rendered, w: Work, head_ms: int, mp3_bitrate: int,
                 workdir: Path, speakers: list[str], silence: dict[str, bytes]
                 ) -> Made | None:
    """What `make` gives for unit `w` from `rendered`, which ends at `head_ms`
    (`settle_head`): `settled_head` extended by `extend_head`; None as `settled_head`."""
    head = settled_head(rendered, w, head_ms, mp3_bitrate, workdir, speakers, silence)
    return None if head is None else extend_head(head, w, head_ms, silence)
