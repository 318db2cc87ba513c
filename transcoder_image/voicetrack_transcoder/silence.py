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

from pathlib import Path

import numpy as np

from voicetrack.audio import Channels, ms_to_samples
from voicetrack_transcoder.mp3grid import owned_end
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


def settled_made(rendered: Rendered, w: Work, head_ms: int, mp3_bitrate: int,
                 workdir: Path, speakers: list[str], silence: dict[str, bytes]
                 ) -> Made | None:
    """What `make` gives for unit `w` from `rendered`, which ends at `head_ms`
    (`settle_head`): the head's frames (`make` of frames `[w.first, owned_end(head))`),
    then LAME's silent frame (`silence`, by track) to `w.end`; peaks of the head then
    zeros; the head's voice activity. Without a bit reservoir (`mp3grid`) a frame depends
    only on the input its MDCT window and LAME's look-ahead span and on the encoder's
    state, so once the input is digital silence and `SETTLE_FRAMES` frames in a row are
    the silent frame, every later frame is too. None (render the unit whole) when the
    head's last `SETTLE_MS` are not all zeros or its last frames are not settled."""
    head_end = owned_end(ms_to_samples(head_ms))
    quiet = ms_to_samples(head_ms - SETTLE_MS), ms_to_samples(head_ms)
    if any(np.any(rendered.cut(t, *quiet)) for t in silence):
        return None
    assert w.end is not None  # settle_head
    made = make(rendered, Work(w.first, head_end, w.unit_start_ms, head_ms), mp3_bitrate,
                workdir, speakers)
    if any(made.frames[n][-SETTLE_FRAMES:] != [f] * SETTLE_FRAMES
           for n, f in silence.items()):
        return None
    zeros = np.zeros(-(-ms_to_samples(w.unit_end_ms - head_ms) // SAMPLES_PER_PIXEL),
                     np.int8)
    return Made(frames={n: made.frames[n] + [f] * (w.end - head_end)
                        for n, f in silence.items()},
                peaks={n: (np.concatenate([made.peaks[n][0], zeros]),
                           np.concatenate([made.peaks[n][1], zeros])) for n in silence},
                speech=made.speech)
